//! The operator's admin client against a real `stock-node` process (no mocks): the role
//! and config the operator pushes make a standby node sell, a stock increase rolls out,
//! pushing the same config again is harmless, and an older epoch is refused.
//!
//! Needs the stock node binary (`cargo build -p stock-node`; `cargo test --workspace`
//! builds it): found through `STOCK_NODE_BIN` or `$CARGO_TARGET_DIR/{debug,release}`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale_core::admin::{Role, RoleAssignment};
use flashsale_operator::crd::FlashSale;
use flashsale_operator::failover::keeper::{Keeper, Target};
use flashsale_operator::failover::leadership::Leading;
use flashsale_operator::nodes::NodeClient;
use flashsale_operator::validate::validate;

const TOKEN: &str = "e2e-admin-token";
const START_TIMEOUT_MS: u64 = 15_000;

/// A node process, killed when the test ends, pass or fail.
struct Node {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("STOCK_NODE_BIN") {
        return bin.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("stock-node"))
        .find(|p| p.exists())
        .expect(
            "stock-node binary not found: run `cargo build -p stock-node` (or set STOCK_NODE_BIN)",
        )
}

async fn start_node() -> Node {
    start_node_with(&[]).await
}

async fn start_node_with(extra: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(node_binary())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--role",
            "standby",
            "--admin-token",
            TOKEN,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("wal"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start stock-node");
    let node = Node {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    while reqwest::get(format!("{}/healthz", node.url)).await.is_err() {
        assert!(Instant::now() < deadline, "stock-node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

fn sale() -> FlashSale {
    let path = format!("{}/tests/fixtures/basic.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn purchase(url: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{url}/v1/purchases"))
        .json(&serde_json::json!({"sku": "sneaker-42", "quantity": 1, "customer": key, "idempotencyKey": key}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn what_the_operator_pushes_makes_a_standby_node_sell_and_roll_out_changes() {
    let node = start_node().await;
    let client = NodeClient::new(2_000).unwrap();
    let mut sale = sale();
    let config = validate(&sale).unwrap();

    let status = client.status(&node.url, TOKEN).await.unwrap();
    assert_eq!((status.role, status.sale.as_deref()), (Role::Standby, None));
    assert_eq!(
        purchase(&node.url, "early").await,
        503,
        "a standby node sells nothing"
    );

    // The role first (`roles::plan`): a node takes the sale's config only as the primary.
    let err = client
        .put_config(&node.url, TOKEN, &config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not_primary"), "{err}");
    let primary = RoleAssignment {
        role: Role::Primary,
        epoch: 1,
        primary_url: None,
    };
    let status = client.put_role(&node.url, TOKEN, &primary).await.unwrap();
    assert_eq!((status.role, status.epoch), (Role::Primary, 1));
    client.put_config(&node.url, TOKEN, &config).await.unwrap();
    assert_eq!(purchase(&node.url, "first").await, 201, "the primary sells");
    let ready = reqwest::get(format!("{}/readyz", node.url))
        .await
        .unwrap()
        .status();
    assert!(ready.is_success(), "ready once it has a role and a config");

    // The operator pushes again after a restart of its own: nothing changes.
    let again = client.put_config(&node.url, TOKEN, &config).await.unwrap();
    assert_eq!(again.items[0].held, 1, "the sale survives a repeated push");

    // Stock added in the spec reaches the node.
    sale.spec.items[0].stock += 50;
    let status = client
        .put_config(&node.url, TOKEN, &validate(&sale).unwrap())
        .await
        .unwrap();
    let item = &status.items[0];
    assert_eq!((item.stock, item.held, item.remaining), (150, 1, 149));

    // A role from an older epoch is refused, and the client reports a refusal, not an outage.
    let stale = RoleAssignment {
        role: Role::Secondary,
        epoch: 0,
        primary_url: Some(node.url.clone()),
    };
    let err = client.put_role(&node.url, TOKEN, &stale).await.unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let err = client.status(&node.url, "wrong-token").await.unwrap_err();
    assert!(err.is_refusal(), "{err}");
}

/// A node that needs a selling lease, configured and primary at epoch 1, and a lease
/// keeper for it (sale `ns/spring`, pod `spring-0`) renewing while `leading` is on.
struct LeasedPrimary {
    node: Node,
    client: NodeClient,
    keeper: std::sync::Arc<Keeper>,
}

impl LeasedPrimary {
    async fn start(leading: Leading) -> Self {
        let node = start_node_with(&["--lease", "required"]).await;
        let client = NodeClient::new(2_000).unwrap();
        let primary = RoleAssignment {
            role: Role::Primary,
            epoch: 1,
            primary_url: None,
        };
        client.put_role(&node.url, TOKEN, &primary).await.unwrap();
        let keeper = Keeper::new(
            client.clone(),
            std::sync::Arc::new(flashsale_operator::metrics::Metrics::default()),
            leading,
        );
        let p = Self {
            node,
            client,
            keeper,
        };
        // As the operator: the role, the lease, then the sale (a primary takes its
        // config only under its lease).
        p.hold(6);
        p.keeper.renew_now("ns/spring").await.unwrap();
        p.client
            .put_config(&p.node.url, TOKEN, &validate(&sale()).unwrap())
            .await
            .unwrap();
        p
    }

    /// The keeper renews a lease of `secs` seconds from now on.
    fn hold(&self, secs: u64) {
        self.keeper.hold(
            "ns/spring",
            Target {
                pod: "spring-0".into(),
                pod_uid: None,
                url: self.node.url.clone(),
                admin_token: TOKEN.into(),
                epoch: 1,
                lease: Duration::from_secs(secs),
            },
        );
    }

    /// What the node says is left of its lease, in ms.
    async fn lease_left_ms(&self) -> u64 {
        let status = self.client.status(&self.node.url, TOKEN).await.unwrap();
        status.lease.unwrap().remaining_ms
    }
}

/// A replica that no longer leads (`failover::leadership`: its leader Lease could have
/// been taken over) renews no selling lease, even while its controller winds down: the
/// primary's lease only runs out, so the new leader's fence holds and no two primaries
/// sell. Before, a leader cut off from the API server kept renewing it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_whose_replica_no_longer_leads_renews_no_lease() {
    let leading = Leading::default();
    let p = LeasedPrimary::start(leading.clone()).await;
    p.hold(6);
    p.keeper.renew_now("ns/spring").await.unwrap();
    assert_eq!(
        purchase(&p.node.url, "leased").await,
        201,
        "leased, it sells"
    );
    leading.turn_off();
    assert!(p.keeper.renew_now("ns/spring").await.is_err());
    let before = p.lease_left_ms().await;
    // The keeper's own loop, renewing every 750 ms when it may: 2 s of it.
    let (wake, _woken) = tokio::sync::mpsc::channel(8);
    p.keeper
        .clone()
        .run(wake, tokio::time::sleep(Duration::from_secs(2)))
        .await;
    let after = p.lease_left_ms().await;
    assert!(
        after + 1_500 <= before,
        "the lease was renewed: {before} ms left, then {after} ms"
    );
}

/// `leaseDuration` shortened while a primary holds a lease granted for the longer one:
/// the node keeps the later end (a lease is never shortened), so the keeper's account of
/// when any lease it granted is over — the fence's deadline — keeps it too. It used to
/// take the new duration from the last renewal on, and a failover could promote another
/// primary while this one still held its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortened_lease_duration_keeps_the_fence_behind_the_longer_lease_granted() {
    let p = LeasedPrimary::start(Leading::default()).await;
    // Two renewals each: the second's token is the first's answer.
    for secs in [60, 6] {
        p.hold(secs);
        p.keeper.renew_now("ns/spring").await.unwrap();
        p.keeper.renew_now("ns/spring").await.unwrap();
    }
    let held = p.lease_left_ms().await;
    assert!(
        held > 50_000,
        "the node still holds the longer lease: {held} ms"
    );
    let end = p
        .keeper
        .view("ns/spring")
        .lease_end
        .expect("a lease granted")
        .0;
    let end = end.duration_since(jiff::Timestamp::now()).as_millis() as i64;
    assert!(
        end as u64 >= held,
        "the fence's deadline ({end} ms from now) is before the node's lease ends ({held} ms)"
    );
}

/// A tail copied from an old primary that still answers (`failover::recover::copy_tail`)
/// whose start the old primary compacted into a snapshot: the candidate takes the
/// snapshot, then the records after it, and ends with the old primary's orders. Before,
/// the copy failed on the 410 at every pass, and the failover waited for ever.
#[tokio::test]
async fn a_tail_copy_whose_start_was_compacted_goes_over_as_the_snapshot_then_the_rest() {
    let old = start_node_with(&[
        "--snapshot-every-records",
        "20",
        "--segment-bytes-max",
        "2048",
    ])
    .await;
    let candidate = start_node().await;
    let client = NodeClient::new(2_000).unwrap();
    let mut big = sale();
    big.spec.items[0].stock = 100_000;
    let primary = RoleAssignment {
        role: Role::Primary,
        epoch: 1,
        primary_url: None,
    };
    client.put_role(&old.url, TOKEN, &primary).await.unwrap();
    client
        .put_config(&old.url, TOKEN, &validate(&big).unwrap())
        .await
        .unwrap();
    // Each order bought and confirmed: the ledger lists confirmed orders.
    let http = reqwest::Client::new();
    let mut sold = 0;
    let mut buy = async || {
        sold += 1;
        let customer = format!("c{sold}");
        let order: serde_json::Value = http
            .post(format!("{}/v1/purchases", old.url))
            .json(&serde_json::json!({"sku": "sneaker-42", "quantity": 1, "customer": customer, "idempotencyKey": customer}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let confirmed = http
            .post(format!("{}/v1/orders/{}/confirm", old.url, order["id"]))
            .header("Flashsale-Customer", &customer)
            .send()
            .await
            .unwrap();
        assert_eq!(confirmed.status(), 200, "{order}");
    };
    for _ in 0..60 {
        buy().await;
    }
    // The snapshot is taken off the sequencer; a segment it covers goes at a commit
    // after it: more purchases until record 1 is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin_get = |path: String| http.get(format!("{}{path}", old.url)).bearer_auth(TOKEN);
    while admin_get("/admin/v1/wal?from=1".into())
        .send()
        .await
        .unwrap()
        .status()
        != 410
    {
        assert!(Instant::now() < deadline, "record 1 never compacted");
        buy().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Records after the newest snapshot, to copy as records: the same snapshot seen
    // twice, 200 ms apart, below the log's end (one is written off the sequencer, a
    // moment after the commit that made it due).
    let mut seen = None;
    loop {
        let snapshot = admin_get("/admin/v1/snapshot".into()).send().await.unwrap();
        let seq: u64 = snapshot.headers()["x-flashsale-snapshot-seq"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let durable = client.status(&old.url, TOKEN).await.unwrap().durable_seq;
        if seq < durable && seen == Some(seq) {
            break;
        }
        if seq >= durable {
            buy().await;
        }
        seen = Some(seq);
        assert!(Instant::now() < deadline, "every record is in the snapshot");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The operator's own client (short per-request timeout): the snapshot's requests
    // must not be cut off by it.
    let operator = NodeClient::new(1_000).unwrap();
    let applied = flashsale_operator::failover::recover::copy_tail(
        operator.http(),
        &old.url,
        &candidate.url,
        TOKEN,
        0,
    )
    .await
    .expect("the tail goes over");
    let (o, c) = (
        client.status(&old.url, TOKEN).await.unwrap(),
        client.status(&candidate.url, TOKEN).await.unwrap(),
    );
    assert!(applied > 0, "records after the snapshot were applied");
    assert_eq!(
        c.applied_seq, o.durable_seq,
        "the candidate has the whole log"
    );
    let ledger = async |url: &str| {
        http.get(format!("{url}/admin/v1/ledger"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let (lo, lc) = (ledger(&old.url).await, ledger(&candidate.url).await);
    assert!(lo.lines().count() >= 60, "{lo}");
    assert_eq!(lc, lo, "every order of the old primary, with its id");

    // A candidate whose log parted from the old primary's (records of another epoch's
    // primary) is refused, not replaced by the snapshot: with the start compacted,
    // no boundary record is there for it to check.
    let parted = start_node().await;
    for (role, epoch) in [(Role::Primary, 2), (Role::Standby, 3)] {
        let a = RoleAssignment {
            role,
            epoch,
            primary_url: None,
        };
        client.put_role(&parted.url, TOKEN, &a).await.unwrap();
        if role == Role::Primary {
            client
                .put_config(&parted.url, TOKEN, &validate(&big).unwrap())
                .await
                .unwrap();
        }
    }
    let before = client.status(&parted.url, TOKEN).await.unwrap().applied_seq;
    let err = flashsale_operator::failover::recover::copy_tail(
        operator.http(),
        &old.url,
        &parted.url,
        TOKEN,
        before,
    )
    .await
    .unwrap_err();
    assert!(err.contains("parted"), "{err}");
    let after = client.status(&parted.url, TOKEN).await.unwrap();
    assert_eq!(
        (after.applied_seq, after.sale.is_some()),
        (before, true),
        "unchanged"
    );
}
