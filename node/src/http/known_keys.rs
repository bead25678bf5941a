//! The idempotency keys of every order the engine has made durable, for the sold-out
//! fast path: a purchase for a sold-out item is answered 409 from memory *unless* its
//! key already has an order, whose retry must get that order back (through the engine).
//!
//! The engine's read view has orders by id (= WAL sequence) but no index by key, so this
//! follows the view: it scans each sequence once, lazily, when a sold-out answer needs it.
//! That covers orders made before a restart, and those replicated from a primary.

use std::collections::HashSet;

use parking_lot::Mutex;

use crate::engine::EngineHandle;

#[derive(Default)]
pub struct KnownKeys {
    inner: Mutex<Scanned>,
}

#[derive(Default)]
struct Scanned {
    /// Every sequence up to here has been looked at.
    through_seq: u64,
    keys: HashSet<String>,
}

impl KnownKeys {
    /// Whether an order with this idempotency key is durable in the engine.
    pub fn contains(&self, engine: &EngineHandle, key: &str) -> bool {
        let applied_seq = engine.positions().applied_seq;
        let mut s = self.inner.lock();
        // Only the records since the last look; each sequence is scanned once.
        while s.through_seq < applied_seq {
            s.through_seq += 1;
            if let Some(order) = engine.order(s.through_seq) {
                s.keys.insert(order.idempotency_key);
            }
        }
        s.keys.contains(key)
    }
}
