//! The stock node's integration tests, one binary: one link instead of twenty-one, and
//! the tests of one area run beside those of another instead of after them. Each module
//! was a test file of its own; one runs alone with
//! `cargo test -p stock-node --test it <module>::` (e.g. `crash::`, `replication_`).

mod common;
mod replication_support;

mod connections;
mod crash;
mod divergence;
mod engine_basic;
mod engine_faults;
mod engine_model;
mod engine_restart;
mod forwarding;
mod fuzz_inputs;
mod http_api;
mod http_inprocess;
mod lease;
mod ledger;
mod openapi_checked_in;
#[cfg(target_os = "linux")]
mod process;
mod replication_converge;
mod replication_failover;
mod replication_faults;
mod replication_quorum;
mod replication_status;
mod wal_cli;
mod wal_damage;
