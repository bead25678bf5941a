//! How the engine holds its orders, compactly: a flash sale keeps every order it took
//! for as long as the sale lives, so an order's bytes are the node's memory.
//!
//! - [`StoredOrder`] is one allocation: a reference count, 40 bytes of fields, and the
//!   customer and idempotency key together (a `triomphe::ThinArc`, a thin pointer);
//!   the item is its index in the state's items (the SKU is not copied into each
//!   order). The API's [`Order`] is built from it when a client is answered
//!   ([`StoredOrder::to_order`]). Cloning one is a reference count: the state, the read
//!   view and a snapshot being written share each order, and a change
//!   ([`StoredOrder::with`]) makes a new one.
//! - [`OrderTable`] finds an order by id in slots indexed by the id's distance from
//!   the first one: ids are WAL sequence numbers, so 8 bytes per record (a purchase,
//!   and any confirm, cancel or expiry of it, so 8–16 bytes per order) instead of a
//!   hash map's slot and control byte at its load factor.

use flashsale_core::{Order, OrderState, UnixMs};
use serde::ser::{SerializeMap, SerializeStruct};
use std::sync::Arc;

use triomphe::ThinArc;

/// `confirmed_at_ms` when the order is not confirmed.
const NOT_CONFIRMED: UnixMs = UnixMs::MIN;

/// An order's fixed-size part (40 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderFields {
    pub id: u64,
    pub created_at_ms: UnixMs,
    confirmed_at_ms: UnixMs,
    /// `expires_at_ms - created_at_ms`: the sale's hold time, at most a day by the rules.
    hold_ms: u32,
    pub quantity: u32,
    /// Index in `State::items` (which never drops an item: a removed one is retired).
    pub item: u32,
    pub state: OrderState,
    /// Where the customer ends and the idempotency key starts in the text.
    split: u16,
}

impl OrderFields {
    /// When an unconfirmed hold returns to stock.
    pub fn expires_at_ms(&self) -> UnixMs {
        self.created_at_ms.saturating_add(self.hold_ms as UnixMs)
    }
}

/// One order as the engine holds it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOrder(ThinArc<OrderFields, u8>);

impl std::ops::Deref for StoredOrder {
    type Target = OrderFields;

    fn deref(&self) -> &OrderFields {
        &self.0.header.header
    }
}

impl StoredOrder {
    /// A new reservation of item `item`. A customer id over 64 KiB or a hold longer
    /// than `u32::MAX` ms or negative is refused, naming the order (neither comes from
    /// this node: the rules allow 128 characters and a day; a log or snapshot that
    /// carries one is refused rather than panic the sequencer).
    pub fn reserved(
        id: u64,
        item: u32,
        quantity: u32,
        customer: &str,
        idempotency_key: &str,
        created_at_ms: UnixMs,
        expires_at_ms: UnixMs,
    ) -> Result<Self, String> {
        let hold_ms = expires_at_ms
            .checked_sub(created_at_ms)
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| {
                format!("order {id}: a hold from {created_at_ms} to {expires_at_ms} ms")
            })?;
        let split = u16::try_from(customer.len())
            .map_err(|_| format!("order {id}: a customer id of {} bytes", customer.len()))?;
        let fields = OrderFields {
            id,
            created_at_ms,
            hold_ms,
            confirmed_at_ms: NOT_CONFIRMED,
            quantity,
            item,
            state: OrderState::Reserved,
            split,
        };
        let text = customer.bytes().chain(idempotency_key.bytes());
        Ok(Self(ThinArc::from_header_and_iter(
            fields,
            ExactLen(text, customer.len() + idempotency_key.len()),
        )))
    }

    /// `order` (from a snapshot) held as item `item`.
    pub fn from_order(order: &Order, item: u32) -> Result<Self, String> {
        let o = Self::reserved(
            order.id,
            item,
            order.quantity,
            &order.customer,
            &order.idempotency_key,
            order.created_at_ms,
            order.expires_at_ms,
        )?;
        Ok(o.with(order.state, order.confirmed_at_ms))
    }

    fn text(&self) -> &str {
        // Built from two `&str`s only (`reserved`), so always UTF-8.
        std::str::from_utf8(&self.0.slice).expect("order text is UTF-8")
    }

    pub fn customer(&self) -> &str {
        &self.text()[..self.split as usize]
    }

    pub fn idempotency_key(&self) -> &str {
        &self.text()[self.split as usize..]
    }

    /// When it was confirmed (the primary's clock, from the confirm's WAL record).
    pub fn confirmed_at_ms(&self) -> Option<UnixMs> {
        (self.confirmed_at_ms != NOT_CONFIRMED).then_some(self.confirmed_at_ms)
    }

    /// The same order, now in `state` (confirmed at `confirmed_at_ms`): a new one, so
    /// whoever shares this one (the read view, a snapshot) keeps it as it was.
    pub fn with(&self, state: OrderState, confirmed_at_ms: Option<UnixMs>) -> Self {
        let fields = OrderFields {
            state,
            confirmed_at_ms: confirmed_at_ms.unwrap_or(NOT_CONFIRMED),
            ..self.0.header.header.clone()
        };
        Self(ThinArc::from_header_and_slice(fields, &self.0.slice))
    }

    /// The order as the API shows it; `sku` is its item's.
    pub fn to_order(&self, sku: &str) -> Order {
        self.order_with(
            sku.to_owned(),
            self.customer().to_owned(),
            self.idempotency_key().to_owned(),
        )
    }

    /// [`Self::to_order`] with its strings given by the caller — the ones the order was
    /// made from, equal to those stored — so that none is copied.
    pub fn order_with(&self, sku: String, customer: String, idempotency_key: String) -> Order {
        debug_assert!(customer == self.customer() && idempotency_key == self.idempotency_key());
        Order {
            id: self.id,
            sku,
            quantity: self.quantity,
            customer,
            idempotency_key,
            state: self.state,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms(),
            confirmed_at_ms: self.confirmed_at_ms(),
        }
    }

    /// The order as first answered, what an idempotent retry gets back: reserved.
    pub fn first_answer(&self, sku: &str) -> Order {
        Order {
            state: OrderState::Reserved,
            confirmed_at_ms: None,
            ..self.to_order(sku)
        }
    }
}

/// An iterator of known length (`ThinArc::from_header_and_iter` wants one).
struct ExactLen<I>(I, usize);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.0.next()?;
        self.1 -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

/// Slots per chunk of an [`OrderTable`] (32 KiB).
const CHUNK: usize = 4096;

/// Every order by id (see the module docs). Ids never go away: an order is kept for
/// the life of the sale. The slots are in fixed chunks, so the table grows by one chunk
/// at a time: no copy of the whole table as a vector's doubling would make (a pause of
/// its own at millions of orders), and no room reserved beyond the last chunk.
///
/// The chunks are shared, copied on write: cloning the table (the sequencer's copy for
/// a snapshot, `engine::snapshotter`) is a reference count per chunk, and a chunk is
/// copied only when the state changes an order in it while a copy still holds it. A
/// copy that took each order's reference count instead read every order, a cache miss
/// each: a 13.5 ms pause of the sequencer at 200 000 orders, growing with the orders.
#[derive(Clone, Debug, Default)]
pub struct OrderTable {
    /// The id of the first slot.
    base: u64,
    chunks: Vec<Arc<[Option<StoredOrder>]>>,
    len: usize,
}

impl OrderTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, id: u64) -> Option<(usize, usize)> {
        let at = usize::try_from(id.checked_sub(self.base)?).ok()?;
        Some((at / CHUNK, at % CHUNK))
    }

    pub fn get(&self, id: u64) -> Option<&StoredOrder> {
        let (c, i) = self.slot(id)?;
        self.chunks.get(c)?[i].as_ref()
    }

    /// Order `id` to change in place (its chunk copied first if a copy of the table
    /// shares it).
    pub fn get_mut(&mut self, id: u64) -> Option<&mut StoredOrder> {
        let (c, i) = self.slot(id)?;
        self.chunks.get(c)?[i].as_ref()?;
        Arc::make_mut(&mut self.chunks[c])[i].as_mut()
    }

    /// Puts `order` at its id, replacing one there. Ids come in rising order from the
    /// log and from a snapshot; one below the first rebuilds the table from it.
    pub fn insert(&mut self, order: StoredOrder) {
        let id = order.id;
        if self.len == 0 {
            self.base = id;
            self.chunks.clear();
        } else if id < self.base {
            let old = std::mem::take(self);
            self.base = id;
            for o in old.values() {
                self.put(o.clone());
            }
        }
        self.put(order);
    }

    /// Puts `order` at its id, at or above the base.
    fn put(&mut self, order: StoredOrder) {
        let (c, i) = self.slot(order.id).expect("an id at or above the base");
        while self.chunks.len() <= c {
            self.chunks.push(vec![None; CHUNK].into());
        }
        if Arc::make_mut(&mut self.chunks[c])[i]
            .replace(order)
            .is_none()
        {
            self.len += 1;
        }
    }

    /// Every order, by rising id.
    pub fn values(&self) -> impl Iterator<Item = &StoredOrder> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }
}

/// Shards of a [`KeyIndex`].
const KEY_SHARDS: usize = 64;

/// Idempotency key → the order holding it, by the key's [`key_hash`]. An entry is 8
/// bytes: the order id (40 bits) and 24 bits of its key's hash, which place it in its
/// table; the key itself is read from the order only to confirm a match. So a table
/// that grows places its entries again from what it holds. An entry of the id alone
/// made every growth read each order and hash its key again (a cache miss and a hash
/// per entry, 0.6 µs per purchase in `make bench-node`'s profile); and since keys fill
/// the shards evenly, all the shards of both indexes (the sequencer's and the read
/// view's) grew within the same few thousand purchases: at 114 k and 229 k orders the
/// read view's writer paused 0.3–0.9 ms on most batches for a fraction of a second,
/// under its lock, and an open-loop run's p50 went from 1–2 ms to 20–35 ms there.
/// The keys are still spread over [`KEY_SHARDS`] tables, which grow one at a time.
/// An id too large for 40 bits (a trillion records: not in a sale's life, but not
/// refused either) is filed in `wide`, with its whole hash.
#[derive(Clone, Debug)]
pub struct KeyIndex {
    shards: Box<[hashbrown::HashTable<u64>]>,
    wide: hashbrown::HashTable<(u64, u64)>,
}

/// Bits of an id in a [`KeyIndex`] entry; the 24 above them are the tag.
const ID_BITS: u32 = 40;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            shards: (0..KEY_SHARDS)
                .map(|_| hashbrown::HashTable::new())
                .collect(),
            wide: hashbrown::HashTable::new(),
        }
    }
}

impl KeyIndex {
    /// A hash's shard: its high 32 bits (the tag is from the low 24, [`Self::placed`]).
    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize % KEY_SHARDS
    }

    /// An entry's tag: the key hash's low 24 bits, already in place above the id.
    fn tag(hash: u64) -> u64 {
        hash << ID_BITS
    }

    /// The hash a shard's table places an entry by, from its tag: the tag's bits in
    /// the low bits (the slot) and the top 7 (hashbrown's control byte), which
    /// differ between keys independently for tables up to 2^17 slots a shard (~7
    /// million keys in all at hashbrown's 7/8 load; beyond, only the control byte's
    /// filtering weakens).
    fn placed(entry: u64) -> u64 {
        let tag = entry >> ID_BITS;
        tag | tag << ID_BITS
    }

    /// Files order `id` of `orders` under its customer's key (one not filed yet).
    pub fn insert(&mut self, id: u64, orders: &OrderTable) {
        let hash = orders.get(id).map_or_else(
            || key_hash("", ""),
            |o| key_hash(o.customer(), o.idempotency_key()),
        );
        if id > ID_MASK {
            self.wide.insert_unique(hash, (hash, id), |e| e.0);
            return;
        }
        let entry = Self::tag(hash) | id;
        self.shards[Self::shard(hash)]
            .insert_unique(Self::placed(entry), entry, |e| Self::placed(*e));
    }

    /// The order in `orders` holding `customer`'s key `key`, whose [`key_hash`] is
    /// `hash`.
    pub fn find<'a>(
        &self,
        hash: u64,
        customer: &str,
        key: &str,
        orders: &'a OrderTable,
    ) -> Option<&'a StoredOrder> {
        // The order a matching entry names, kept by the match itself (one lookup).
        let mut found = None;
        let mut holds = |id: u64| {
            found = orders
                .get(id)
                .filter(|o| o.idempotency_key() == key && o.customer() == customer);
            found.is_some()
        };
        let tag = Self::tag(hash);
        let table = &self.shards[Self::shard(hash)];
        if table
            .find(Self::placed(tag), |e| {
                e & !ID_MASK == tag && holds(e & ID_MASK)
            })
            .is_none()
            && !self.wide.is_empty()
        {
            self.wide.find(hash, |e| e.0 == hash && holds(e.1));
        }
        found
    }

    pub fn clear(&mut self) {
        self.shards.iter_mut().for_each(|t| t.clear());
        self.wide.clear();
    }
}

/// The hash of `customer`'s idempotency key `key` in a [`KeyIndex`] and in the
/// engine's in-flight set (seeded once per process). A key is its customer's: the same
/// key from another customer is another purchase, so nobody can take a key someone
/// else will use (Stripe scopes its keys to an account the same way).
pub fn key_hash(customer: &str, key: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(foldhash::fast::RandomState::default)
        .hash_one((customer, key))
}

/// The reserved orders' expiries, (expires at, order id), earliest first. Holds come
/// in rising expiry time (one hold time, a clock that moves forward): those go to a
/// queue of order ids in fixed chunks (8 bytes each, the time read from the order), which
/// grows without ever copying itself (a heap's vector doubling at a million entries
/// paused ~50 ms); an entry earlier than the queue's last (a shorter hold time
/// configured, a clock stepped back) goes to a heap beside it. An entry whose order is
/// no longer reserved stays until it is taken (`State::take_due_expiries` drops it).
#[derive(Clone, Debug, Default)]
pub struct ExpiryQueue {
    fifo: std::collections::VecDeque<Vec<u64>>,
    /// Entries of `fifo`'s first chunk already taken.
    head: usize,
    /// The last entry queued in `fifo`.
    last: Option<(UnixMs, u64)>,
    late: std::collections::BinaryHeap<std::cmp::Reverse<(UnixMs, u64)>>,
}

impl ExpiryQueue {
    /// Order `id` expires at `at` (its `expires_at_ms`).
    pub fn push(&mut self, at: UnixMs, id: u64) {
        if !self.fifo.is_empty() && self.last.is_some_and(|l| (at, id) < l) {
            self.late.push(std::cmp::Reverse((at, id)));
            return;
        }
        self.last = Some((at, id));
        match self.fifo.back_mut() {
            Some(c) if c.len() < CHUNK => c.push(id),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(id);
                self.fifo.push_back(c);
            }
        }
    }

    /// The queue's first entry; an order not in `orders` (never, short of a bug) reads
    /// as due at once, so it is taken and dropped.
    fn queued(&self, orders: &OrderTable) -> Option<(UnixMs, u64)> {
        let id = *self.fifo.front()?.get(self.head)?;
        let at = orders.get(id).map_or(UnixMs::MIN, |o| o.expires_at_ms());
        Some((at, id))
    }

    /// The earliest entry.
    pub fn peek(&self, orders: &OrderTable) -> Option<(UnixMs, u64)> {
        let late = self.late.peek().map(|r| r.0);
        match (self.queued(orders), late) {
            (Some(q), Some(l)) => Some(q.min(l)),
            (q, l) => q.or(l),
        }
    }

    /// Takes the earliest entry.
    pub fn pop(&mut self, orders: &OrderTable) -> Option<(UnixMs, u64)> {
        let queued = self.queued(orders);
        let late = self.late.peek().map(|r| r.0);
        if late.is_some() && (queued.is_none() || late < queued) {
            return self.late.pop().map(|r| r.0);
        }
        let front = self.fifo.front()?;
        self.head += 1;
        if self.head == front.len() {
            self.fifo.pop_front();
            self.head = 0;
        }
        queued
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// An order table serialized as the API's orders by id (`{"7": {"id": 7, "sku": …}}`),
/// which is what a snapshot and the admin state hold. `skus` are the items' SKUs by index.
pub struct OrdersOut<'a> {
    pub orders: &'a OrderTable,
    pub skus: &'a [&'a str],
}

impl serde::Serialize for OrdersOut<'_> {
    fn serialize<Z: serde::Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let mut map = z.serialize_map(Some(self.orders.len()))?;
        for o in self.orders.values() {
            let sku = self.skus.get(o.item as usize).copied().unwrap_or_default();
            map.serialize_entry(&o.id, &OrderOut { o, sku })?;
        }
        map.end()
    }
}

/// One stored order serialized exactly as [`Order`] is (a test holds them equal),
/// without building one.
struct OrderOut<'a> {
    o: &'a StoredOrder,
    sku: &'a str,
}

impl serde::Serialize for OrderOut<'_> {
    fn serialize<Z: serde::Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let o = self.o;
        let confirmed = o.confirmed_at_ms();
        let mut s = z.serialize_struct("Order", 8 + confirmed.is_some() as usize)?;
        s.serialize_field("id", &o.id)?;
        s.serialize_field("sku", self.sku)?;
        s.serialize_field("quantity", &o.quantity)?;
        s.serialize_field("customer", o.customer())?;
        s.serialize_field("idempotencyKey", o.idempotency_key())?;
        s.serialize_field("state", &o.state)?;
        s.serialize_field("createdAtMs", &o.created_at_ms)?;
        s.serialize_field("expiresAtMs", &o.expires_at_ms())?;
        match confirmed {
            Some(at) => s.serialize_field("confirmedAtMs", &at)?,
            None => s.skip_field("confirmedAtMs")?,
        }
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_come_out_earliest_first_in_order_or_not() {
        let mut orders = OrderTable::default();
        let mut q = ExpiryQueue::default();
        let mut want = Vec::new();
        let mut hold = |id: u64, at: UnixMs, q: &mut ExpiryQueue| {
            let o = StoredOrder::reserved(id, 0, 1, "c", "k", at - 10, at).unwrap();
            orders.insert(o);
            q.push(at, id);
            want.push((at, id));
        };
        // Rising over more than a chunk, with a few earlier ones between.
        for id in 0..(2 * CHUNK as u64 + 10) {
            hold(id, 1_000 + id as UnixMs, &mut q);
            if id % 1000 == 0 {
                hold(1_000_000 + id, 500 + id as UnixMs, &mut q);
            }
        }
        want.sort_unstable();
        assert_eq!(q.peek(&orders), Some(want[0]));
        let mut got = Vec::new();
        while let Some(e) = q.pop(&orders) {
            got.push(e);
        }
        assert_eq!(got, want);
        q.push(5, 1);
        assert_eq!(
            (q.pop(&orders).map(|e| e.1), q.pop(&orders)),
            (Some(1), None)
        );
    }

    fn order(id: u64, state: OrderState, confirmed: Option<UnixMs>) -> Order {
        Order {
            id,
            sku: "tee".into(),
            quantity: 3,
            customer: "ann ✓".into(),
            idempotency_key: "k-ü-1".into(),
            state,
            created_at_ms: -5,
            expires_at_ms: 9_000,
            confirmed_at_ms: confirmed,
        }
    }

    #[test]
    fn an_order_round_trips_through_its_stored_form_and_serializes_as_the_api_order() {
        let mut table = OrderTable::default();
        let orders = [
            order(9, OrderState::Reserved, None),
            order(4, OrderState::Confirmed, Some(0)),
            order(12, OrderState::Expired, None),
        ];
        for o in &orders {
            let s = StoredOrder::from_order(o, 1).unwrap();
            assert_eq!(s.with(s.state, s.confirmed_at_ms()), s);
            assert_eq!((s.customer(), s.idempotency_key()), ("ann ✓", "k-ü-1"));
            assert_eq!(&s.to_order("tee"), o);
            table.insert(s);
        }
        // Far past a chunk, then below the first id.
        let far = order(9 + 3 * CHUNK as u64, OrderState::Reserved, None);
        table.insert(StoredOrder::from_order(&far, 1).unwrap());
        let low = order(2, OrderState::Cancelled, None);
        table.insert(StoredOrder::from_order(&low, 1).unwrap());
        assert_eq!(
            table.get(far.id).map(|o| o.to_order("tee")),
            Some(far.clone())
        );
        assert_eq!(table.get(2).map(|o| o.to_order("tee")), Some(low.clone()));
        assert_eq!(table.len(), 5);
        let ids: Vec<u64> = table.values().map(|o| o.id).collect();
        assert_eq!(ids, [2, 4, 9, 12, far.id]);
        table = OrderTable::default();
        for o in &orders {
            table.insert(StoredOrder::from_order(o, 1).unwrap());
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(4).unwrap().state, OrderState::Confirmed);
        assert!(table.get(3).is_none() && table.get(5).is_none() && table.get(13).is_none());
        let ids: Vec<u64> = table.values().map(|o| o.id).collect();
        assert_eq!(ids, [4, 9, 12]);

        let skus = ["other", "tee"];
        let ours = serde_json::to_value(OrdersOut {
            orders: &table,
            skus: &skus,
        })
        .unwrap();
        let theirs: std::collections::BTreeMap<u64, &Order> =
            orders.iter().map(|o| (o.id, o)).collect();
        assert_eq!(ours, serde_json::to_value(theirs).unwrap());
    }

    #[test]
    fn the_key_index_finds_every_key_through_its_tables_growing_and_no_other() {
        const ANN: &str = "ann ✓"; // `order`'s customer
        let mut table = OrderTable::default();
        let mut index = KeyIndex::default();
        let n = 40_000u64; // every shard's table grows several times
        for id in 1..=n {
            let mut o = order(id, OrderState::Reserved, None);
            o.idempotency_key = format!("key-{id}");
            table.insert(StoredOrder::from_order(&o, 1).unwrap());
            index.insert(id, &table);
        }
        for id in (1..=n).step_by(7) {
            let key = format!("key-{id}");
            let found = index
                .find(key_hash(ANN, &key), ANN, &key, &table)
                .map(|o| o.id);
            assert_eq!(found, Some(id), "{key}");
        }
        for absent in ["key-0", "key-40001", ""] {
            assert!(
                index
                    .find(key_hash(ANN, absent), ANN, absent, &table)
                    .is_none()
            );
        }
        // A key whose hash matches a stored one but which differs is not that order.
        let hash = key_hash(ANN, "key-5");
        assert!(index.find(hash, ANN, "key-5x", &table).is_none());
        // A key is its customer's: another customer's same key is not that order.
        let theirs = key_hash("bob", "key-5");
        assert!(index.find(theirs, "bob", "key-5", &table).is_none());
        assert!(index.find(hash, "bob", "key-5", &table).is_none());
        index.clear();
        assert!(index.find(hash, ANN, "key-5", &table).is_none());
        // Ids past the entries' 40 bits (a log that far along) are filed and found too.
        let mut table = OrderTable::default();
        for (id, key) in [(1 << 41, "wide-a"), ((1 << 41) + 1, "wide-b")] {
            let mut o = order(id, OrderState::Reserved, None);
            o.idempotency_key = key.into();
            table.insert(StoredOrder::from_order(&o, 1).unwrap());
            index.insert(id, &table);
        }
        for (id, key) in [(1 << 41, "wide-a"), ((1 << 41) + 1, "wide-b")] {
            assert_eq!(
                index
                    .find(key_hash(ANN, key), ANN, key, &table)
                    .map(|o| o.id),
                Some(id)
            );
        }
        assert!(
            index
                .find(key_hash(ANN, "wide-c"), ANN, "wide-c", &table)
                .is_none()
        );
        index.clear();
        assert!(
            index
                .find(key_hash(ANN, "wide-a"), ANN, "wide-a", &table)
                .is_none()
        );
    }

    #[test]
    fn a_copy_of_the_table_keeps_its_orders_while_the_table_changes() {
        let mut table = OrderTable::default();
        for id in 1..=10 {
            table.insert(
                StoredOrder::from_order(&order(id, OrderState::Reserved, None), 1).unwrap(),
            );
        }
        let copy = table.clone();
        let confirmed = table.get(3).unwrap().with(OrderState::Confirmed, Some(7));
        *table.get_mut(3).unwrap() = confirmed;
        table.insert(StoredOrder::from_order(&order(11, OrderState::Reserved, None), 1).unwrap());
        let far = 12 + CHUNK as u64;
        table.insert(StoredOrder::from_order(&order(far, OrderState::Reserved, None), 1).unwrap());
        assert!(table.get_mut(far + 1).is_none());

        assert_eq!(table.get(3).unwrap().state, OrderState::Confirmed);
        assert_eq!((table.len(), table.values().count()), (12, 12));
        assert_eq!(
            copy.get(3).unwrap().state,
            OrderState::Reserved,
            "the copy's order 3"
        );
        assert!(copy.get(11).is_none() && copy.get(far).is_none());
        assert_eq!((copy.len(), copy.values().count()), (10, 10));
        // And the other way: the copy is the one that changes.
        let mut copy = copy;
        *copy.get_mut(5).unwrap() = copy.get(5).unwrap().with(OrderState::Cancelled, None);
        assert_eq!(table.get(5).unwrap().state, OrderState::Reserved);
    }
}
