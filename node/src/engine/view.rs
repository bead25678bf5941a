//! The read view: what reads see, updated by the sequencer once per batch and only
//! after the batch is durable, so a read never shows a change a crash could undo.
//! Readers take a short read lock; the writer holds the lock only to copy in changes.

use flashsale_core::admin::Role;
use flashsale_core::{ItemView, Order, SaleConfig};

use super::state::{FastMap, KeyIndex, Orders, State, StoredOrder};

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
    /// The order holding each idempotency key, by the key's [`key_hash`].
    keys: KeyIndex,
    pub status: EngineStatus,
}

impl ReadView {
    pub fn from_state(state: &State) -> Self {
        let mut v = ReadView::default();
        v.reload_items(state);
        v.orders = state.orders.clone();
        for o in v.orders.values() {
            v.keys.insert(o.id, &v.orders);
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
        for &id in orders {
            if let Some(o) = state.orders.get(id) {
                match self.orders.get_mut(id) {
                    Some(cur) => *cur = o.clone(),
                    None => {
                        self.orders.insert(o.clone());
                        self.keys.insert(id, &self.orders);
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

    /// Order `id` as the API shows it.
    pub fn order(&self, id: u64) -> Option<Order> {
        self.orders.get(id).map(|o| self.api_order(o))
    }

    /// Stored order `o` as the API shows it.
    pub fn api_order(&self, o: &StoredOrder) -> Order {
        o.to_order(self.sku(o.item).unwrap_or_default())
    }

    /// Stored order `o` as first answered (what an idempotent retry gets).
    pub fn first_answer(&self, o: &StoredOrder) -> Order {
        o.first_answer(self.sku(o.item).unwrap_or_default())
    }

    /// The SKU of item `idx`.
    pub fn sku(&self, idx: u32) -> Option<&str> {
        self.items.get(idx as usize).map(|i| i.sku.as_str())
    }

    /// The ids of every confirmed order, in no order.
    pub fn confirmed_ids(&self) -> Vec<u64> {
        self.orders
            .values()
            .filter(|o| o.state == flashsale_core::OrderState::Confirmed)
            .map(|o| o.id)
            .collect()
    }

    /// The durable order holding `customer`'s idempotency key `key` (hash `hash`), if
    /// one does.
    pub fn order_with_key(&self, hash: u64, customer: &str, key: &str) -> Option<&StoredOrder> {
        self.keys.find(hash, customer, key, &self.orders)
    }
}

pub(crate) use super::orders::key_hash;
