//! The read view: what reads see, updated by the sequencer once per batch and only
//! after the batch is durable, so a read never shows a change a crash could undo.
//! Readers take a short read lock; the writer holds the lock only to copy in changes.

use std::sync::Arc;

use flashsale_core::admin::Role;
use flashsale_core::{ItemView, Order, SaleConfig};

use super::state::{FastMap, Orders, State};

/// The engine's account of itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStatus {
    pub role: Role,
    pub epoch: u64,
    /// The primary's URL from the last role assignment.
    pub primary_url: Option<String>,
    /// The sale's name, once configured.
    pub sale: Option<String>,
    /// Highest record applied to the state the reads show.
    pub applied_seq: u64,
    /// Highest record durable on disk (with `NoSync`: written to the OS).
    pub durable_seq: u64,
    /// The oldest record still in the WAL (`read_from` serves from here).
    pub oldest_seq: u64,
    pub config: Option<SaleConfig>,
    /// Set when a WAL write or sync failed: the engine refuses every write since.
    pub failed: Option<String>,
    /// The log's epoch history (`State::epochs`).
    pub epochs: Vec<flashsale_core::replication::EpochStart>,
}

#[derive(Debug, Default)]
pub(crate) struct ReadView {
    /// Aligned with `State::items` (retired ones included, flagged in `live`).
    items: Vec<ItemView>,
    live: Vec<bool>,
    index: FastMap<String, usize>,
    /// The orders as of the last durable batch, shared with the state (`State::orders`).
    orders: Orders,
    /// Hash of an idempotency key → the order that holds it ([`KEY_AMBIGUOUS`] when two
    /// keys share a hash: then nobody may be told "sold out" from here).
    keys: FastMap<u64, u64>,
    pub status: EngineStatus,
}

/// What the read view holds for an idempotency key ([`ReadView::order_with_key`]).
#[derive(Debug)]
pub(crate) enum KeyOrder<'a> {
    None,
    Order(&'a Order),
    /// Two keys share the hash: ask the primary.
    Ambiguous,
}

/// Marks a key hash shared by two orders in [`ReadView`]'s key index.
const KEY_AMBIGUOUS: u64 = u64::MAX;

/// What the read view knows of an idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKnown {
    /// No durable order has it.
    No,
    /// A durable order has it (or may: a hash shared by two keys).
    Yes,
}

impl ReadView {
    pub fn from_state(state: &State) -> Self {
        let mut v = ReadView::default();
        v.reload_items(state);
        v.orders = state.orders.clone();
        for o in v.orders.values() {
            insert_key(&mut v.keys, key_hash(&o.idempotency_key), o.id);
        }
        v.status.applied_seq = state.applied_seq;
        v.status.durable_seq = state.applied_seq;
        v.status.epochs = state.epochs.clone();
        v
    }

    fn reload_items(&mut self, state: &State) {
        self.items = state.items.iter().map(|i| i.view()).collect();
        self.live = state.items.iter().map(|i| !i.retired).collect();
        self.index = state
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.retired)
            .map(|(n, i)| (i.sku.clone(), n))
            .collect();
        self.status.role = state.role;
        self.status.epoch = state.epoch;
        self.status.primary_url = state.primary_url.clone();
        self.status.sale = state.config.as_ref().map(|c| c.name.clone());
        self.status.config = state.config.clone();
    }

    /// Copies in what the last batch changed.
    pub fn update(
        &mut self,
        state: &State,
        items: &[usize],
        orders: &[u64],
        config_changed: bool,
        durable_seq: u64,
    ) {
        if config_changed {
            self.reload_items(state);
        } else {
            for &i in items {
                let it = &state.items[i];
                let v = &mut self.items[i];
                (v.stock, v.sold, v.held, v.remaining) =
                    (it.stock, it.sold, it.held, it.remaining());
            }
        }
        for id in orders {
            if let Some(o) = state.orders.get(id) {
                match self.orders.get_mut(id) {
                    Some(cur) => *cur = Arc::clone(o),
                    None => {
                        insert_key(&mut self.keys, key_hash(&o.idempotency_key), o.id);
                        self.orders.insert(*id, Arc::clone(o));
                    }
                }
            }
        }
        self.status.applied_seq = state.applied_seq;
        self.status.durable_seq = durable_seq;
        // Epochs only ever get added to a log (a reseed or install rebuilds the view).
        if self.status.epochs.len() != state.epochs.len() {
            self.status.epochs = state.epochs.clone();
        }
    }

    pub fn items(&self) -> Vec<ItemView> {
        self.items
            .iter()
            .zip(&self.live)
            .filter(|(_, l)| **l)
            .map(|(i, _)| i.clone())
            .collect()
    }

    pub fn item(&self, sku: &str) -> Option<&ItemView> {
        self.index.get(sku).map(|&i| &self.items[i])
    }

    pub fn order(&self, id: u64) -> Option<&Order> {
        self.orders.get(&id).map(|o| &**o)
    }

    /// The ids of every confirmed order, in no order.
    pub fn confirmed_ids(&self) -> Vec<u64> {
        self.orders
            .values()
            .filter(|o| o.state == flashsale_core::OrderState::Confirmed)
            .map(|o| o.id)
            .collect()
    }

    /// The durable order holding idempotency key `key`, if one does.
    pub fn order_with_key(&self, hash: u64, key: &str) -> KeyOrder<'_> {
        match self.keys.get(&hash) {
            None => KeyOrder::None,
            Some(&KEY_AMBIGUOUS) => KeyOrder::Ambiguous,
            Some(id) => match self.orders.get(id) {
                Some(o) if o.idempotency_key == key => KeyOrder::Order(o),
                Some(_) => KeyOrder::None,
                None => KeyOrder::Ambiguous,
            },
        }
    }

    /// Whether a durable order holds idempotency key `key` (hash `hash`).
    pub fn knows_key(&self, hash: u64, key: &str) -> KeyKnown {
        match self.keys.get(&hash) {
            None => KeyKnown::No,
            Some(&KEY_AMBIGUOUS) => KeyKnown::Yes,
            Some(id) => match self.orders.get(id) {
                Some(o) if o.idempotency_key != key => KeyKnown::No,
                _ => KeyKnown::Yes,
            },
        }
    }
}

/// The hash the key index and the in-flight set use (seeded once per process).
pub(crate) fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(foldhash::fast::RandomState::default)
        .hash_one(key)
}

fn insert_key(keys: &mut FastMap<u64, u64>, hash: u64, id: u64) {
    keys.entry(hash)
        .and_modify(|cur| {
            if *cur != id {
                *cur = KEY_AMBIGUOUS;
            }
        })
        .or_insert(id);
}
