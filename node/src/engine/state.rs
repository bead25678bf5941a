//! The inventory state machine, pure: `decide` turns a command into the record that
//! would carry it out (or the client's error), `apply` makes a record's change. The
//! sequencer calls both; replay calls only `apply`, so a restart rebuilds exactly
//! what was acknowledged.

use std::hash::BuildHasher;

use flashsale_core::admin::{Role, RoleAssignment};
use flashsale_core::replication::EpochStart;
use flashsale_core::wal::{Record, RecordBody};
use flashsale_core::{ItemView, Order, OrderState, PurchaseRequest, SaleConfig, SellError, UnixMs};
use serde::{Deserialize, Serialize};

use super::orders::OrdersOut;
pub use super::orders::{ExpiryQueue, KeyIndex, OrderTable, StoredOrder, key_hash};

/// A command for the sequencer.
#[derive(Clone, Debug)]
pub enum Command {
    Configure(SaleConfig),
    Purchase(PurchaseRequest),
    Confirm(u64),
    Cancel(u64),
    SetRole(RoleAssignment),
    /// A batch from the primary, applied as is on a secondary (see `engine::replica`).
    Replicate(flashsale_core::wal::Batch),
    /// A primary's snapshot, replacing a secondary's state (see `engine::replica`).
    InstallSnapshot(Box<State>),
    /// Move the whole log aside into this subdirectory and start again empty (a
    /// secondary whose log parted from its primary's; see `engine::replica`).
    Reseed(String),
}

/// What `decide` concluded.
#[derive(Debug)]
pub enum Decision {
    /// Log this record, apply it, then answer.
    Write(RecordBody),
    /// Answer with this order without logging anything (an idempotent retry).
    Replay(Order),
    /// Nothing to change (e.g. the same role again).
    Nothing,
}

/// One item's counters. `remaining = stock - sold - held`, never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemState {
    pub sku: String,
    pub stock: u64,
    pub sold: u64,
    pub held: u64,
    pub per_customer_limit: u32,
    /// Dropped from the config (only possible with nothing sold or held); kept so indexes stay stable.
    pub retired: bool,
}

impl ItemState {
    pub fn remaining(&self) -> u64 {
        self.stock.saturating_sub(self.sold + self.held)
    }

    pub fn oversold(&self) -> bool {
        self.sold + self.held > self.stock
    }

    pub fn view(&self) -> ItemView {
        ItemView {
            sku: self.sku.clone(),
            stock: self.stock,
            sold: self.sold,
            held: self.held,
            remaining: self.remaining(),
            per_customer_limit: self.per_customer_limit,
        }
    }
}

/// Why a record could not be applied: the log contradicts itself (a bug or foreign records).
#[derive(Debug, thiserror::Error)]
#[error("record {seq} cannot apply: {reason}")]
pub struct ApplyError {
    pub seq: u64,
    pub reason: String,
}

/// A map with the process's fast seeded hash (keys come from clients).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Every order by id. An order is held once: the state, the read view and a snapshot
/// being written share it (a reference count); a change to an order makes a new one
/// (a new [`StoredOrder`]), which the read view then picks up.
pub type Orders = OrderTable;

/// A customer's units of each item that has a per-customer limit. The customer's id is
/// not copied: `order` is one of their orders, whose `customer` is the key.
#[derive(Clone, Debug)]
struct CustomerUnits {
    /// The customer's hash, kept so the table grows without reading orders.
    hash: u64,
    order: u64,
    units: Vec<(usize, u64)>,
}

/// The whole sale as of `applied_seq`. The fields up to `epochs` are the snapshot
/// (serialized as [`StateOut`], orders in the API's form); the rest are indexes rebuilt
/// by [`State::rebuild_indexes`].
#[derive(Clone, Debug, Default)]
pub struct State {
    pub config: Option<SaleConfig>,
    pub role: Role,
    pub epoch: u64,
    pub primary_url: Option<String>,
    pub items: Vec<ItemState>,
    pub orders: Orders,
    pub applied_seq: u64,
    /// The log's epoch history: where each epoch's records start (the compacted part
    /// included), to find where two logs part (`flashsale_core::replication::common_prefix`).
    pub epochs: Vec<EpochStart>,
    sku_index: FastMap<String, usize>,
    /// The order holding each idempotency key, by the key's [`key_hash`]: the key
    /// itself is read from the order, not copied.
    idempotency: KeyIndex,
    /// customer → (item index, units reserved or confirmed), kept only for items with a
    /// per-customer limit (the only ones it is asked about); by the customer's hash.
    per_customer: hashbrown::HashTable<CustomerUnits>,
    hasher: foldhash::fast::RandomState,
    /// (expires at, order id) of every reserved order, earliest first; an entry whose
    /// order is no longer reserved stays until it is taken (8 bytes an entry in the
    /// usual rising order, where a B-tree of ascending inserts leaves half-full nodes).
    expiry: ExpiryQueue,
    /// Items and orders changed since the last [`State::take_touched`] (for the read view).
    touched_items: Vec<usize>,
    touched_orders: Vec<u64>,
    config_changed: bool,
}

fn not_primary(s: &State) -> SellError {
    SellError::NotPrimary {
        primary: s.primary_url.clone(),
    }
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SellError {
    SellError::BadRequest {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A snapshot as written: the snapshot fields of [`State`], the orders in the API's
/// form (as they were before the engine held them compactly, so older snapshots load).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StateOut<'a> {
    config: &'a Option<SaleConfig>,
    role: Role,
    epoch: u64,
    primary_url: &'a Option<String>,
    items: &'a [ItemState],
    orders: OrdersOut<'a>,
    applied_seq: u64,
    epochs: &'a [EpochStart],
}

/// A snapshot as read (see [`StateOut`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateIn {
    config: Option<SaleConfig>,
    role: Role,
    epoch: u64,
    primary_url: Option<String>,
    items: Vec<ItemState>,
    orders: std::collections::BTreeMap<u64, Order>,
    applied_seq: u64,
    #[serde(default)]
    epochs: Vec<EpochStart>,
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, z: S) -> Result<S::Ok, S::Error> {
        let skus: Vec<&str> = self.items.iter().map(|i| i.sku.as_str()).collect();
        StateOut {
            config: &self.config,
            role: self.role,
            epoch: self.epoch,
            primary_url: &self.primary_url,
            items: &self.items,
            orders: OrdersOut {
                orders: &self.orders,
                skus: &skus,
            },
            applied_seq: self.applied_seq,
            epochs: &self.epochs,
        }
        .serialize(z)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = StateIn::deserialize(d)?;
        let index: FastMap<&str, u32> = (w.items.iter().enumerate())
            .map(|(n, i)| (i.sku.as_str(), n as u32))
            .collect();
        let mut orders = OrderTable::default();
        for (id, o) in w.orders {
            let Some(&item) = index.get(o.sku.as_str()) else {
                return Err(serde::de::Error::custom(format!(
                    "order {id}: unknown sku `{}`",
                    o.sku
                )));
            };
            if id == 0 || id > w.applied_seq {
                return Err(serde::de::Error::custom(format!(
                    "order {id} outside records 1 to {}",
                    w.applied_seq
                )));
            }
            if id != o.id {
                return Err(serde::de::Error::custom(format!(
                    "order {} filed under id {id}",
                    o.id
                )));
            }
            orders.insert(StoredOrder::from_order(&o, item).map_err(serde::de::Error::custom)?);
        }
        Ok(State {
            config: w.config,
            role: w.role,
            epoch: w.epoch,
            primary_url: w.primary_url,
            items: w.items,
            orders,
            applied_seq: w.applied_seq,
            epochs: w.epochs,
            ..State::default()
        })
    }
}

fn state_name(s: OrderState) -> String {
    match s {
        OrderState::Reserved => "reserved",
        OrderState::Confirmed => "confirmed",
        OrderState::Cancelled => "cancelled",
        OrderState::Expired => "expired",
    }
    .to_owned()
}

impl State {
    /// Rebuilds the indexes after loading a snapshot.
    pub fn rebuild_indexes(&mut self) {
        self.sku_index = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.retired)
            .map(|(n, i)| (i.sku.clone(), n))
            .collect();
        self.idempotency.clear();
        self.expiry.clear();
        let orders = &self.orders;
        for o in orders.values() {
            self.idempotency.insert(o.id, orders);
            if o.state == OrderState::Reserved {
                self.expiry.push(o.expires_at_ms(), o.id);
            }
        }
        self.rebuild_per_customer();
        self.config_changed = true;
    }

    /// Counts every live order's units per customer, for the items with a limit.
    fn rebuild_per_customer(&mut self) {
        self.per_customer.clear();
        let limited: Vec<bool> = self
            .items
            .iter()
            .map(|i| i.per_customer_limit > 0)
            .collect();
        let live: Vec<(u64, usize, u64)> = (self.orders.values())
            .filter(|o| matches!(o.state, OrderState::Reserved | OrderState::Confirmed))
            .filter(|o| limited.get(o.item as usize) == Some(&true))
            .map(|o| (o.id, o.item as usize, o.quantity as u64))
            .collect();
        for (id, idx, q) in live {
            self.add_units(id, idx, q);
        }
    }

    /// The order holding `customer`'s idempotency key `key`.
    fn order_with_key(&self, customer: &str, key: &str) -> Option<&StoredOrder> {
        self.idempotency
            .find(key_hash(customer, key), customer, key, &self.orders)
    }

    /// Order `o` as the API shows it.
    pub fn api_order(&self, o: &StoredOrder) -> Order {
        o.to_order(&self.items[o.item as usize].sku)
    }

    /// Adds units of item `idx` to the customer of order `order` (which exists).
    fn add_units(&mut self, order: u64, idx: usize, q: u64) {
        let orders = &self.orders;
        let customer = self::order(orders, order).customer();
        let hasher = &self.hasher;
        let h = hasher.hash_one(customer);
        let entry = self.per_customer.entry(
            h,
            |e| e.hash == h && self::order(orders, e.order).customer() == customer,
            |e| e.hash,
        );
        let list = &mut entry
            .or_insert(CustomerUnits {
                hash: h,
                order,
                units: Vec::new(),
            })
            .into_mut()
            .units;
        match list.iter_mut().find(|(i, _)| *i == idx) {
            Some((_, u)) => *u += q,
            None => list.push((idx, q)),
        }
    }

    /// Takes units of item `idx` from the customer of order `order`.
    fn sub_units(&mut self, order: u64, idx: usize, q: u64) {
        let orders = &self.orders;
        let customer = self::order(orders, order).customer();
        let h = self.hasher.hash_one(customer);
        if let Some(e) = self.per_customer.find_mut(h, |e| {
            e.hash == h && self::order(orders, e.order).customer() == customer
        }) && let Some((_, u)) = e.units.iter_mut().find(|(i, _)| *i == idx)
        {
            *u = u.saturating_sub(q);
        }
    }

    /// The epoch of record `seq` of this log (`None` past its end, or for 0).
    pub fn epoch_at(&self, seq: u64) -> Option<u64> {
        flashsale_core::replication::epoch_at(&self.epochs, self.applied_seq, seq)
    }

    pub fn item(&self, sku: &str) -> Option<&ItemState> {
        self.sku_index.get(sku).map(|&i| &self.items[i])
    }

    /// Units `customer` holds or bought of item `idx`.
    pub fn customer_units(&self, customer: &str, idx: usize) -> u64 {
        let h = self.hasher.hash_one(customer);
        self.per_customer
            .find(h, |e| {
                e.hash == h && order(&self.orders, e.order).customer() == customer
            })
            .and_then(|e| e.units.iter().find(|(i, _)| *i == idx))
            .map_or(0, |(_, u)| *u)
    }

    /// Up to `max` reserved orders whose hold has run out at `now`, oldest first, as
    /// (expires at, id); taken out of the expiry index, so the caller logs their expiry
    /// or gives them back ([`State::expire_later`]). Entries of orders ended since are
    /// dropped on the way, at most `4 × max` entries a call (a newly promoted primary
    /// may find a long run of them: the rest go on the next calls).
    pub fn take_due_expiries(&mut self, now: UnixMs, max: usize) -> Vec<(UnixMs, u64)> {
        let mut due = Vec::new();
        let mut budget = max.saturating_mul(4);
        while due.len() < max
            && budget > 0
            && let Some((at, id)) = self.expiry.peek(&self.orders)
            && at <= now
        {
            budget -= 1;
            self.expiry.pop(&self.orders);
            // Confirmed, cancelled or expired since: its entry just goes.
            if self
                .orders
                .get(id)
                .is_some_and(|o| o.state == OrderState::Reserved && o.expires_at_ms() == at)
            {
                due.push((at, id));
            }
        }
        due
    }

    /// Drops up to `max` due expiry entries of orders that have ended (a secondary,
    /// which logs no expiries, so the entries of orders confirmed or cancelled do not
    /// pile up), stopping at one still reserved (its expiry record comes from the
    /// primary).
    pub fn drop_ended_expiries(&mut self, now: UnixMs, max: usize) {
        for _ in 0..max {
            match self.expiry.peek(&self.orders) {
                Some((at, id))
                    if at <= now
                        && self
                            .orders
                            .get(id)
                            .is_none_or(|o| o.state != OrderState::Reserved) =>
                {
                    self.expiry.pop(&self.orders);
                }
                _ => return,
            }
        }
    }

    /// Puts back an expiry [`State::take_due_expiries`] took and could not log.
    pub fn expire_later(&mut self, at: UnixMs, id: u64) {
        self.expiry.push(at, id);
    }

    /// The earliest expiry pending (or an entry of an order since ended, which the
    /// next [`State::take_due_expiries`] drops).
    pub fn next_expiry(&self) -> Option<UnixMs> {
        self.expiry.peek(&self.orders).map(|(at, _)| at)
    }

    /// Items oversold (must stay 0; fed to the `oversold` gauge).
    pub fn oversold_items(&self) -> usize {
        self.items.iter().filter(|i| i.oversold()).count()
    }

    /// Decides a command at wall-clock `now`. A rejected command changes nothing and
    /// is not logged (so an idempotency key whose purchase was refused stays free).
    /// The command is taken: what it carries moves into its record (a purchase's SKU,
    /// customer and key are not copied).
    pub fn decide(&self, cmd: Command, now: UnixMs) -> Result<Decision, SellError> {
        match cmd {
            Command::Purchase(req) => self.decide_purchase(req, now),
            Command::Confirm(id) => {
                let o = self.live_order(id)?;
                if o.state == OrderState::Confirmed {
                    return Ok(Decision::Replay(self.api_order(o)));
                }
                if o.state != OrderState::Reserved {
                    return Err(order_state(o, o.state, "confirm"));
                }
                if now >= o.expires_at_ms() {
                    // The expiry record follows on the next tick; the hold is gone either way.
                    return Err(order_state(o, OrderState::Expired, "confirm"));
                }
                Ok(Decision::Write(RecordBody::Confirm { order_id: id }))
            }
            Command::Cancel(id) => {
                let o = self.live_order(id)?;
                if o.state == OrderState::Cancelled {
                    return Ok(Decision::Replay(self.api_order(o)));
                }
                if o.state != OrderState::Reserved {
                    return Err(order_state(o, o.state, "cancel"));
                }
                Ok(Decision::Write(RecordBody::Cancel { order_id: id }))
            }
            Command::Configure(cfg) => {
                // Only the primary logs the sale's config (FAILOVER.md I3: only epoch
                // E's primary writes epoch-E records). A secondary takes it from the
                // primary's log; a standby — a fresh node, a parked old primary —
                // would write a record of an epoch it does not own, at a sequence
                // where the primary's log may hold another record of that epoch: the
                // epoch histories would agree and the two logs differ unnoticed.
                if self.role != Role::Primary {
                    return Err(not_primary(self));
                }
                self.validate_config(&cfg)?;
                if self.config.as_ref() == Some(&cfg) {
                    return Ok(Decision::Nothing);
                }
                Ok(Decision::Write(RecordBody::Configure { config: cfg }))
            }
            Command::SetRole(a) => {
                if a.epoch < self.epoch {
                    return Err(SellError::Fenced(format!(
                        "epoch {} is older than this node's {}",
                        a.epoch, self.epoch
                    )));
                }
                if a.role == self.role && a.epoch == self.epoch && a.primary_url == self.primary_url
                {
                    return Ok(Decision::Nothing);
                }
                Ok(Decision::Write(RecordBody::Role { assignment: a }))
            }
            // Taken by the sequencer before `decide` (engine::replica); never decided.
            Command::Replicate(_) | Command::InstallSnapshot(_) | Command::Reseed(_) => Err(
                SellError::Internal("a replicated batch reached decide".into()),
            ),
        }
    }

    fn live_order(&self, id: u64) -> Result<&StoredOrder, SellError> {
        if self.role != Role::Primary {
            return Err(not_primary(self));
        }
        self.orders.get(id).ok_or(SellError::UnknownOrder(id))
    }

    fn decide_purchase(&self, req: PurchaseRequest, now: UnixMs) -> Result<Decision, SellError> {
        if self.role != Role::Primary {
            return Err(not_primary(self));
        }
        let Some(cfg) = &self.config else {
            return Err(SellError::Unavailable(
                "the sale is not configured yet".into(),
            ));
        };
        req.check()?;
        if let Some(o) = self.order_with_key(&req.customer, &req.idempotency_key) {
            let sku = &self.items[o.item as usize].sku;
            if *sku == req.sku && o.quantity == req.quantity {
                return Ok(Decision::Replay(o.first_answer(sku)));
            }
            return Err(SellError::IdempotencyConflict(req.idempotency_key.clone()));
        }
        let Some(&idx) = self.sku_index.get(&req.sku) else {
            return Err(SellError::UnknownItem(req.sku.clone()));
        };
        let item = &self.items[idx];
        let limit = item.per_customer_limit;
        if req.quantity == 0 || (limit > 0 && req.quantity > limit) {
            return Err(bad_quantity(req.quantity, limit));
        }
        if let Some(starts) = cfg.starts_at_ms
            && now < starts
        {
            return Err(SellError::NotOpen {
                starts_at_ms: starts,
            });
        }
        if let Some(ends) = cfg.ends_at_ms
            && now >= ends
        {
            return Err(SellError::Ended { ends_at_ms: ends });
        }
        let remaining = item.remaining();
        if remaining < req.quantity as u64 {
            return Err(SellError::SoldOut {
                sku: req.sku.clone(),
                remaining,
                requested: req.quantity,
            });
        }
        if limit > 0 {
            let held = self.customer_units(&req.customer, idx);
            if held + req.quantity as u64 > limit as u64 {
                return Err(SellError::LimitExceeded {
                    customer: req.customer.clone(),
                    sku: req.sku.clone(),
                    limit,
                    held,
                    requested: req.quantity,
                });
            }
        }
        Ok(Decision::Write(RecordBody::Purchase {
            expires_at_ms: now.saturating_add(cfg.reservation_ttl_ms as i64),
            sku: req.sku,
            quantity: req.quantity,
            customer: req.customer,
            idempotency_key: req.idempotency_key,
        }))
    }

    fn validate_config(&self, cfg: &SaleConfig) -> Result<(), SellError> {
        // The rules of a sale on its own (flashsale_core::rules), then what depends on
        // the orders taken so far.
        cfg.check()?;
        for (i, it) in cfg.items.iter().enumerate() {
            if let Some(cur) = self.item(&it.sku)
                && it.stock < cur.sold + cur.held
            {
                return Err(bad(
                    format!("items[{i}].stock"),
                    format!(
                        "{} units are sold or held, stock cannot drop to {}",
                        cur.sold + cur.held,
                        it.stock
                    ),
                ));
            }
        }
        for cur in self.items.iter().filter(|c| !c.retired) {
            if !cfg.items.iter().any(|i| i.sku == cur.sku) && cur.sold + cur.held > 0 {
                return Err(bad(
                    "items",
                    format!("`{}` has units sold or held and cannot be removed", cur.sku),
                ));
            }
        }
        Ok(())
    }

    /// Makes a record's change (a purchase becomes a [`StoredOrder`]). Fails only if the
    /// log contradicts itself.
    pub fn apply(&mut self, rec: &Record) -> Result<(), ApplyError> {
        let fail = |reason: String| ApplyError {
            seq: rec.seq,
            reason,
        };
        if rec.seq != self.applied_seq + 1 {
            return Err(fail(format!("expected record {}", self.applied_seq + 1)));
        }
        match &rec.body {
            RecordBody::Configure { config } => self.apply_config(config.clone()),
            RecordBody::Role { assignment } => {
                self.role = assignment.role;
                self.epoch = assignment.epoch;
                self.primary_url = assignment.primary_url.clone();
                self.config_changed = true;
            }
            RecordBody::Purchase {
                sku,
                quantity,
                customer,
                idempotency_key,
                expires_at_ms,
            } => {
                let (quantity, expires_at_ms) = (*quantity, *expires_at_ms);
                let idx = *self
                    .sku_index
                    .get(sku)
                    .ok_or_else(|| fail(format!("unknown sku `{sku}`")))?;
                let order = StoredOrder::reserved(
                    rec.seq,
                    idx as u32,
                    quantity,
                    customer,
                    idempotency_key,
                    rec.at_ms,
                    expires_at_ms,
                )
                .map_err(fail)?;
                let item = &mut self.items[idx];
                item.held += quantity as u64;
                let limited = item.per_customer_limit > 0;
                self.orders.insert(order);
                self.idempotency.insert(rec.seq, &self.orders);
                if limited {
                    self.add_units(rec.seq, idx, quantity as u64);
                }
                self.expiry.push(expires_at_ms, rec.seq);
                self.touched_items.push(idx);
                self.touched_orders.push(rec.seq);
            }
            RecordBody::Confirm { order_id } => self
                .end_hold(*order_id, OrderState::Confirmed, rec.at_ms)
                .map_err(fail)?,
            RecordBody::Cancel { order_id } => self
                .end_hold(*order_id, OrderState::Cancelled, rec.at_ms)
                .map_err(fail)?,
            RecordBody::Expire { order_id } => self
                .end_hold(*order_id, OrderState::Expired, rec.at_ms)
                .map_err(fail)?,
        }
        if self.epochs.last().is_none_or(|e| e.epoch != rec.epoch) {
            self.epochs.push(EpochStart {
                epoch: rec.epoch,
                first_seq: rec.seq,
            });
        }
        self.applied_seq = rec.seq;
        Ok(())
    }

    fn apply_config(&mut self, cfg: SaleConfig) {
        let limited_before: Vec<bool> = self
            .items
            .iter()
            .map(|i| !i.retired && i.per_customer_limit > 0)
            .collect();
        let keep: std::collections::HashSet<&str> =
            cfg.items.iter().map(|i| i.sku.as_str()).collect();
        for it in self.items.iter_mut() {
            it.retired = !keep.contains(it.sku.as_str());
        }
        for spec in &cfg.items {
            match self.items.iter_mut().find(|i| i.sku == spec.sku) {
                Some(it) => {
                    it.stock = spec.stock;
                    it.per_customer_limit = spec.per_customer_limit;
                }
                None => self.items.push(ItemState {
                    sku: spec.sku.clone(),
                    stock: spec.stock,
                    sold: 0,
                    held: 0,
                    per_customer_limit: spec.per_customer_limit,
                    retired: false,
                }),
            }
        }
        self.sku_index = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| !i.retired)
            .map(|(n, i)| (i.sku.clone(), n))
            .collect();
        self.config = Some(cfg);
        self.config_changed = true;
        // The per-customer counts are kept for limited items only: count again when
        // the set of limited items changed.
        let was_limited = |n: usize| limited_before.get(n).copied().unwrap_or(false);
        if (self.items.iter().enumerate())
            .any(|(n, i)| (!i.retired && i.per_customer_limit > 0) != was_limited(n))
        {
            self.rebuild_per_customer();
        }
    }

    fn end_hold(&mut self, id: u64, to: OrderState, at_ms: UnixMs) -> Result<(), String> {
        let o = self
            .orders
            .get_mut(id)
            .ok_or_else(|| format!("unknown order {id}"))?;
        if o.state != OrderState::Reserved {
            return Err(format!("order {id} is {}", state_name(o.state)));
        }
        let idx = o.item as usize;
        let q = o.quantity as u64;
        let item = (self.items.get_mut(idx)).ok_or_else(|| format!("order {id}: no item {idx}"))?;
        item.held = item
            .held
            .checked_sub(q)
            .ok_or_else(|| format!("order {id}: held below zero"))?;
        let confirmed_at = (to == OrderState::Confirmed).then_some(at_ms);
        if to == OrderState::Confirmed {
            item.sold += q;
        }
        // A new order: the read view or a snapshot may still hold this one as it was.
        // Its expiry entry goes when it is taken (`take_due_expiries`).
        *o = o.with(to, confirmed_at);
        if to != OrderState::Confirmed && item.per_customer_limit > 0 {
            self.sub_units(id, idx, q);
        }
        self.touched_items.push(idx);
        self.touched_orders.push(id);
        Ok(())
    }

    /// What a snapshot holds (the serialized fields), without the indexes: the order
    /// table's chunks are shared (copied on write, see [`OrderTable`]), so this costs a
    /// reference count per 4096 orders, not a copy of each.
    pub fn snapshot_copy(&self) -> State {
        State {
            config: self.config.clone(),
            role: self.role,
            epoch: self.epoch,
            primary_url: self.primary_url.clone(),
            items: self.items.clone(),
            orders: self.orders.clone(),
            applied_seq: self.applied_seq,
            epochs: self.epochs.clone(),
            ..State::default()
        }
    }

    /// Items and orders changed since the last call, and whether config or role changed.
    pub fn take_touched(&mut self) -> (Vec<usize>, Vec<u64>, bool) {
        let items = std::mem::take(&mut self.touched_items);
        let orders = std::mem::take(&mut self.touched_orders);
        (
            items,
            orders,
            std::mem::replace(&mut self.config_changed, false),
        )
    }

    /// The current (non-retired) items, in index order.
    pub fn item_views(&self) -> Vec<ItemView> {
        self.items
            .iter()
            .filter(|i| !i.retired)
            .map(ItemState::view)
            .collect()
    }
}

/// Order `id`, which the caller knows is there (an index names only orders held).
fn order(orders: &OrderTable, id: u64) -> &StoredOrder {
    orders
        .get(id)
        .expect("an index names an order the table holds")
}

fn order_state(o: &StoredOrder, state: OrderState, action: &str) -> SellError {
    SellError::OrderState {
        id: o.id,
        state: state_name(state),
        action: action.into(),
    }
}

/// The refusal of `quantity` for an item whose per-customer limit is `limit` (0: none):
/// 0 always, or over the limit.
pub(crate) fn bad_quantity(quantity: u32, limit: u32) -> SellError {
    SellError::BadQuantity {
        quantity,
        reason: if quantity == 0 {
            "must be at least 1".into()
        } else {
            format!("no customer may have more than {limit}")
        },
    }
}
