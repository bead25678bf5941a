//! The pod runner (placeholder until the local cluster lands).
fn main() {}
