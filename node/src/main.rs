//! The `stock-node` binary (placeholder until the node lands).
fn main() {}
