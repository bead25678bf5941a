//! The stock node as a library: the selling engine and its WAL (used by the binary,
//! the tests and the benches).

pub mod admission;
pub mod config;
pub mod engine;
pub mod forward;
pub mod http;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod replication;
pub mod serve;
pub mod wal;
pub mod walcli;
pub mod walship;
