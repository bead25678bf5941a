//! The operator's integration tests, one binary: one link instead of eleven, the largest
//! share of a fresh clone's test build. Each module was a test file of its own; one runs
//! alone with `cargo test -p flashsale-operator --test it <module>::`.

mod build;
mod crd;
mod failover;
mod node_admin;
mod replication;
mod roles;
mod rules;
mod status;
mod transitions;
mod validate;
mod wakeups;
