//! A real `stock-node serve` process with replication flags: the shared harness of
//! `tests/common` with the Redis URL and the sale's channel added.

use std::path::Path;

pub use crate::common::{ADMIN_TOKEN, Node, sale_file};

pub const CHANNEL: &str = "flashsale:test-sale:wal";

/// `stock-node serve --listen 127.0.0.1:0 --data-dir D --redis-url R --redis-channel C <args>`.
pub fn start(data_dir: &Path, redis_url: &str, args: &[&str]) -> Node {
    let mut all = vec!["--redis-url", redis_url, "--redis-channel", CHANNEL];
    all.extend_from_slice(args);
    Node::start(data_dir, &all)
}
