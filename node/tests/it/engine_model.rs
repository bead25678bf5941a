//! The inventory state machine, property-tested through the real engine (in-memory
//! directory, manual clock): random purchases, confirms, cancels, clock jumps that
//! expire holds, stock changes and restarts. After every step: nothing oversold,
//! sold + held + remaining = stock, per-customer limits hold, each answer agrees
//! with the stock before it, idempotent retries get the first answer, and after a
//! restart every acknowledged order is still there in the state it was left in.

use std::collections::HashMap;
use std::sync::Arc;

use flashsale_core::admin::Role;
use flashsale_core::{
    Durability, ItemSpec, Order, OrderState, PurchaseRequest, SaleConfig, SellError,
};
use proptest::prelude::*;
use stock_node::engine::{Clock, Engine, EngineHandle, EngineOptions, ManualClock};
use stock_node::wal::MemDir;

const T0: i64 = 1_000_000;
const TTL_MS: u64 = 1_000;
const SKUS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Op {
    Buy {
        sku: usize,
        qty: u32,
        customer: u8,
        key: u8,
    },
    Confirm(usize),
    Cancel(usize),
    Advance(u16),
    AddStock {
        sku: usize,
        delta: i8,
    },
    Restart {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..4u32, 0..4u8, 0..16u8).prop_map(|(sku, qty, customer, key)| Op::Buy { sku, qty, customer, key }),
        2 => any::<usize>().prop_map(Op::Confirm),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0..1500u16).prop_map(Op::Advance),
        1 => (0..3usize, -3..4i8).prop_map(|(sku, delta)| Op::AddStock { sku, delta }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
    ]
}

fn config(stock: &[u64; 3]) -> SaleConfig {
    SaleConfig {
        name: "prop".into(),
        items: SKUS
            .iter()
            .zip(stock)
            .enumerate()
            .map(|(i, (s, n))| ItemSpec {
                sku: s.to_string(),
                stock: *n,
                per_customer_limit: [0, 2, 3][i],
            })
            .collect(),
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: TTL_MS,
        durability: Durability::Fsync,
    }
}

fn open(
    dir: &MemDir,
    clock: &Arc<ManualClock>,
    snapshot_every: u64,
    segment_bytes: u64,
) -> EngineHandle {
    Engine::open(EngineOptions {
        dir: Some(Arc::new(dir.clone())),
        clock: clock.clone(),
        initial_role: Some(Role::Primary),
        snapshot_every_records: snapshot_every,
        segment_bytes_max: segment_bytes,
        expiry_tick_ms: 1,
        ..Default::default()
    })
    .expect("open")
}

/// Every invariant a user relies on, checked against the engine's own views.
fn check(e: &EngineHandle, acked: &HashMap<u64, Order>) -> Result<(), TestCaseError> {
    for item in e.items() {
        prop_assert!(item.sold + item.held <= item.stock, "oversold: {item:?}");
        prop_assert_eq!(item.sold + item.held + item.remaining, item.stock);
        // Counters agree with the orders behind them.
        let (mut sold, mut held) = (0, 0);
        let mut per_customer: HashMap<String, u64> = HashMap::new();
        for o in acked
            .keys()
            .filter_map(|id| e.order(*id))
            .filter(|o| o.sku == item.sku)
        {
            match o.state {
                OrderState::Confirmed => sold += o.quantity as u64,
                OrderState::Reserved => held += o.quantity as u64,
                _ => continue,
            }
            *per_customer.entry(o.customer.clone()).or_default() += o.quantity as u64;
        }
        prop_assert_eq!(
            (sold, held),
            (item.sold, item.held),
            "counters vs orders for {}",
            item.sku
        );
        if item.per_customer_limit > 0 {
            for (c, n) in per_customer {
                prop_assert!(
                    n <= item.per_customer_limit as u64,
                    "{c} has {n} of {}",
                    item.sku
                );
            }
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, snapshot_every: u64, segment_bytes: u64) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = MemDir::new();
        let clock = Arc::new(ManualClock::new(T0));
        let mut e = open(&dir, &clock, snapshot_every, segment_bytes);
        let mut stock = [5u64, 4, 3];
        e.configure(config(&stock)).await.unwrap();
        // Every order ever acknowledged, as last acknowledged; first answers by key.
        let mut acked: HashMap<u64, Order> = HashMap::new();
        // A key is its customer's (another customer's same key is another purchase).
        let mut first: HashMap<(String, String), (PurchaseRequest, Order)> = HashMap::new();
        let mut ids: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Buy {
                    sku,
                    qty,
                    customer,
                    key,
                } => {
                    let req = PurchaseRequest {
                        sku: SKUS[sku].into(),
                        quantity: qty,
                        customer: format!("c{customer}"),
                        idempotency_key: format!("k{key}"),
                    };
                    let before = e.item(SKUS[sku]).unwrap();
                    let res = e.purchase(req.clone()).await;
                    let scoped = (req.customer.clone(), req.idempotency_key.clone());
                    match (&res, first.get(&scoped)) {
                        (Ok(o), Some((r0, o0))) => {
                            prop_assert_eq!(r0, &req, "same key, other body, yet accepted");
                            prop_assert_eq!(o, o0, "an idempotent retry must get the first answer");
                        }
                        (Err(SellError::IdempotencyConflict(_)), Some((r0, _))) => {
                            prop_assert_ne!(r0, &req)
                        }
                        (Err(SellError::IdempotencyConflict(_)), None) => {
                            prop_assert!(false, "conflict on a fresh key")
                        }
                        (_, Some((r0, _))) if r0 == &req => {
                            prop_assert!(false, "retry not answered with the first order: {res:?}")
                        }
                        (Ok(o), None) => {
                            prop_assert!(
                                before.remaining >= qty as u64,
                                "sold {qty} with {} left",
                                before.remaining
                            );
                            prop_assert_eq!(o.state, OrderState::Reserved);
                            first.insert(scoped, (req.clone(), o.clone()));
                            acked.insert(o.id, o.clone());
                            ids.push(o.id);
                        }
                        (Err(SellError::SoldOut { .. }), None) => {
                            prop_assert!(before.remaining < qty as u64)
                        }
                        (
                            Err(SellError::BadQuantity { .. } | SellError::LimitExceeded { .. }),
                            None,
                        ) => {}
                        (Err(other), _) => prop_assert!(false, "unexpected refusal {other:?}"),
                    }
                }
                Op::Confirm(i) | Op::Cancel(i) if ids.is_empty() => {
                    let _ = i;
                }
                Op::Confirm(i) => {
                    let id = ids[i % ids.len()];
                    let was = e.order(id).unwrap();
                    match e.confirm(id).await {
                        Ok(a) if a.replayed => {
                            // A retried confirm: the order was confirmed and stays so.
                            prop_assert_eq!(was.state, OrderState::Confirmed);
                            prop_assert_eq!(a.order.state, OrderState::Confirmed);
                        }
                        Ok(a) => {
                            prop_assert_eq!(was.state, OrderState::Reserved);
                            prop_assert!(clock.now_ms() < a.order.expires_at_ms);
                            acked.insert(id, a.order.clone());
                        }
                        Err(SellError::OrderState { .. }) => {
                            prop_assert!(
                                was.state != OrderState::Reserved
                                    || clock.now_ms() >= was.expires_at_ms
                            )
                        }
                        Err(other) => prop_assert!(false, "confirm: {other:?}"),
                    }
                }
                Op::Cancel(i) => {
                    let id = ids[i % ids.len()];
                    let was = e.order(id).unwrap();
                    match e.cancel(id).await {
                        Ok(a) if a.replayed => {
                            prop_assert_eq!(was.state, OrderState::Cancelled);
                            prop_assert_eq!(a.order.state, OrderState::Cancelled);
                        }
                        Ok(a) => {
                            prop_assert_eq!(a.order.state, OrderState::Cancelled);
                            acked.insert(id, a.order.clone());
                        }
                        Err(SellError::OrderState { .. }) => {
                            prop_assert!(e.order(id).unwrap().state != OrderState::Reserved)
                        }
                        Err(other) => prop_assert!(false, "cancel: {other:?}"),
                    }
                }
                Op::Advance(ms) => {
                    clock.advance(ms as i64);
                    // Let the sequencer's tick log the expiries that are due.
                    for _ in 0..200 {
                        if !ids.iter().any(|id| {
                            let o = e.order(*id).unwrap();
                            o.state == OrderState::Reserved && o.expires_at_ms <= clock.now_ms()
                        }) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                Op::AddStock { sku, delta } => {
                    let mut next = stock;
                    next[sku] = (stock[sku] as i64 + delta as i64).max(0) as u64;
                    let item = e.item(SKUS[sku]).unwrap();
                    match e.configure(config(&next)).await {
                        Ok(()) => {
                            prop_assert!(next[sku] >= item.sold + item.held);
                            stock = next;
                        }
                        Err(SellError::BadRequest { field, .. }) => {
                            prop_assert_eq!(field, format!("items[{sku}].stock"));
                            prop_assert!(next[sku] < item.sold + item.held);
                        }
                        Err(other) => prop_assert!(false, "configure: {other:?}"),
                    }
                }
                Op::Restart { clean } => {
                    if clean {
                        e.shutdown().await;
                    }
                    drop(e);
                    // Unsynced bytes (there should be none) are torn at random.
                    dir.crash(|_, unsynced| unsynced / 2);
                    e = open(&dir, &clock, snapshot_every, segment_bytes);
                    for (id, o) in &acked {
                        let now = e.order(*id);
                        prop_assert!(now.is_some(), "order {id} lost in a restart");
                        let now = now.unwrap();
                        let expired_since =
                            o.state == OrderState::Reserved && now.state == OrderState::Expired;
                        prop_assert!(
                            now.state == o.state || expired_since,
                            "order {id}: {:?} became {:?}",
                            o.state,
                            now.state
                        );
                    }
                }
            }
            // Track expiries and changes the engine made on its own.
            for id in &ids {
                if let Some(o) = e.order(*id) {
                    acked.insert(*id, o);
                }
            }
            check(&e, &acked)?;
        }
        e.shutdown().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn inventory_invariants_hold(
        ops in prop::collection::vec(op(), 1..60),
        snapshot_every in 2u64..40,
        segment_bytes in 200u64..4000,
    ) {
        run(ops, snapshot_every, segment_bytes)?;
    }
}
