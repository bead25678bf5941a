//! The HTTP service in-process: `app(state)` driven with `oneshot` (no socket), and
//! `run(listener, state, shutdown)` on port 0 stopping when its shutdown future
//! resolves, after answering what was in flight. A real engine on a temp dir.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flashsale_core::admin::Role;
use flashsale_core::{ItemSpec, SaleConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use stock_node::admission::Admission;
use stock_node::engine::{Engine, EngineHandle, EngineOptions, ManualClock};
use stock_node::http::{AppState, Limits, app, run};
use stock_node::metrics::Metrics;
use tower::ServiceExt;

async fn node(dir: &tempfile::TempDir, stock: u64) -> (EngineHandle, AppState) {
    let opts = EngineOptions {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    on_sale(opts, stock, 600_000, Limits::default(), None).await
}

/// A primary opened with `opts`, selling `stock` tees held `ttl_ms` each, served with
/// `limits` (and the admin API open to `admin_token`, if any).
/// [`node`] with its requests cut off after `timeout`.
async fn node_with_timeout(dir: &tempfile::TempDir, timeout: Duration) -> (EngineHandle, AppState) {
    let opts = EngineOptions {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let limits = Limits {
        request_timeout: timeout,
        ..Limits::default()
    };
    on_sale(opts, 1, 600_000, limits, None).await
}

async fn on_sale(
    opts: EngineOptions,
    stock: u64,
    ttl_ms: u64,
    limits: Limits,
    admin_token: Option<&str>,
) -> (EngineHandle, AppState) {
    let engine = Engine::open(EngineOptions {
        initial_role: Some(Role::Primary),
        ..opts
    })
    .unwrap();
    let sale = SaleConfig {
        name: "s".into(),
        items: vec![ItemSpec {
            sku: "tee".into(),
            stock,
            per_customer_limit: 0,
        }],
        starts_at_ms: None,
        ends_at_ms: None,
        reservation_ttl_ms: ttl_ms,
        durability: Default::default(),
    };
    engine.configure(sale).await.unwrap();
    let state = AppState::new(
        engine.clone(),
        Admission::new(0, 0, 64),
        Metrics::new(engine.metrics()),
        admin_token.map(String::from),
        limits,
    );
    (engine, state)
}

async fn answer(res: axum::response::Response) -> (StatusCode, Value) {
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn buy(key: &str) -> Request<Body> {
    let body = json!({"sku": "tee", "quantity": 1, "customer": key, "idempotencyKey": key});
    Request::post("/v1/purchases")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_router_answers_without_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, state) = node(&dir, 1).await;
    let app = app(state);
    let (status, order) = answer(app.clone().oneshot(buy("k1")).await.unwrap()).await;
    assert_eq!(
        (status, &order["state"]),
        (StatusCode::CREATED, &json!("reserved"))
    );
    let (status, err) = answer(app.clone().oneshot(buy("k2")).await.unwrap()).await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::CONFLICT, &json!("sold_out"))
    );
    let (status, err) = answer(
        app.clone()
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    // No admin token configured: the admin API is closed to everyone.
    let req = Request::get("/admin/v1/status")
        .header("authorization", "Bearer x")
        .body(Body::empty())
        .unwrap();
    let (status, err) = answer(app.oneshot(req).await.unwrap()).await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_on_its_shutdown_future_after_answering_what_was_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, state) = node(&dir, 1_000).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/purchases", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, state, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let buyers: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let key = format!("k{i}");
                let body =
                    json!({"sku": "tee", "quantity": 1, "customer": key, "idempotencyKey": key});
                let res = client.post(url).json(&body).send().await.ok()?;
                Some((res.status(), res.json::<Value>().await.ok()?))
            })
        })
        .collect();
    // Stop while the server is busy: once a purchase is durable in the engine (its answer
    // is on its way, others are still coming). A fixed sleep here raced a loaded machine.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.item("tee").unwrap().held == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no purchase reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
    // Every purchase that got an answer got a whole one, and its order is in the engine.
    let mut answered = 0;
    for b in buyers {
        if let Some((status, order)) = b.await.unwrap() {
            assert_eq!(status, StatusCode::CREATED, "{order}");
            assert!(engine.order(order["id"].as_u64().unwrap()).is_some());
            answered += 1;
        }
    }
    assert!(answered > 0, "nothing was in flight");
    let tee = engine.item("tee").unwrap();
    assert_eq!(
        tee.held, answered,
        "held units match the answered purchases"
    );
    engine.shutdown().await;
}

/// Lets held syncs go when dropped: a failed assertion still lets the engine stop.
struct Release(stock_node::wal::MemDir);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.hold_syncs(false);
    }
}

/// A retry racing its first attempt (below), set up to the moment the retry comes:
/// k0 held a unit for a second and kx took the last one while k1's first attempt
/// queued; k0's hold ran out, and k1 took its unit in a batch whose sync is held; the
/// view says sold out.
struct SyncRace {
    // Dropped first: the held syncs go before the engine stops.
    release: Release,
    engine: EngineHandle,
    app: axum::Router,
    attempt: tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>>,
}

impl SyncRace {
    async fn start(limits: Limits) -> Self {
        const T0: i64 = 1_700_000_000_000;
        let disk = stock_node::wal::MemDir::new();
        let clock = std::sync::Arc::new(ManualClock::new(T0));
        let opts = EngineOptions {
            dir: Some(std::sync::Arc::new(disk.clone())),
            clock: clock.clone(),
            ..Default::default()
        };
        let (engine, state) = on_sale(opts, 2, 1_000, limits, None).await;
        let release = Release(disk.clone());
        let app = app(state);
        let waiting_syncs = |n: usize| {
            let disk = disk.clone();
            async move {
                let t0 = std::time::Instant::now();
                while disk.syncs_waiting() != n {
                    assert!(t0.elapsed() < Duration::from_secs(5), "no sync waiting");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // k0 holds one unit for a second; one unit is left.
        let (status, _) = answer(app.clone().oneshot(buy("k0")).await.unwrap()).await;
        assert_eq!(status, StatusCode::CREATED);
        disk.hold_syncs(true);
        // kx takes the last unit; its batch waits in its sync.
        let kx = tokio::spawn(app.clone().oneshot(buy("kx")));
        waiting_syncs(1).await;
        // The first attempt of k1 is let in (the view still shows a unit) and queues.
        let attempt = tokio::spawn(app.clone().oneshot(buy("k1")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // k0's hold runs out: when the sequencer takes k1, the expiry gives its unit back.
        clock.advance(2_000);
        disk.release_one();
        let (status, _) = answer(kx.await.unwrap().unwrap()).await;
        assert_eq!(status, StatusCode::CREATED);
        // k1 is decided (expiry, then k1 takes the unit) and waits in the next sync; the
        // view says sold out.
        waiting_syncs(1).await;
        assert_eq!(engine.item("tee").unwrap().remaining, 0);
        Self {
            release,
            engine,
            app,
            attempt,
        }
    }

    /// Sends the retry, and lets the syncs go once it waits: the retry's answer, and
    /// the first attempt (the engine is let go after both).
    async fn retry(
        self,
    ) -> (
        axum::response::Response,
        tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>>,
        EngineHandle,
    ) {
        let retry = tokio::spawn(self.app.clone().oneshot(buy("k1")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(self.release);
        (retry.await.unwrap().unwrap(), self.attempt, self.engine)
    }
}

/// A retry of a purchase whose first attempt is still waiting for its sync gets that
/// order, never "sold out" (the sold-out fast path knows what is in flight). Here the
/// first attempt was let in while a unit was left, the item then read sold out, and
/// the first attempt took a unit an expired hold gave back — in a batch still syncing
/// when the retry came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_attempt_waits_for_its_sync_gets_the_order_not_sold_out() {
    let race = SyncRace::start(Limits::default()).await;
    let (retry, attempt, _engine) = race.retry().await;
    let (s1, o1) = answer(attempt.await.unwrap().unwrap()).await;
    let (s2, o2) = answer(retry).await;
    assert_eq!(s1, StatusCode::CREATED, "{o1}");
    assert_eq!(
        (s2, &o2["id"]),
        (StatusCode::CREATED, &o1["id"]),
        "the retry must get the first attempt's order: {o2}"
    );
}

/// The same race when the first attempt's request has stopped waiting: cut off by the
/// request timeout while its purchase is still in the engine, it is answered 503, but
/// the purchase may still commit. A retry meanwhile must get that order, never "sold
/// out" from the fast path (the purchase stays in flight until the engine answers it,
/// not until its request stops waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_first_attempt_timed_out_in_the_engine_gets_the_order_not_sold_out() {
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let mut race = SyncRace::start(limits).await;
    // The first attempt gives up waiting; its purchase is still in the held sync.
    let (s1, e1) = answer((&mut race.attempt).await.unwrap().unwrap()).await;
    assert_eq!(
        (s1, &e1["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable")),
        "{e1}"
    );
    let (res, _attempt, _engine) = race.retry().await;
    let replayed = res.headers().get("idempotent-replayed").cloned();
    let (s2, o2) = answer(res).await;
    assert_eq!(
        (s2, &o2["idempotencyKey"], replayed),
        (
            StatusCode::CREATED,
            &json!("k1"),
            Some(axum::http::HeaderValue::from_static("true"))
        ),
        "the retry must get the order its first attempt made: {o2}"
    );
}

/// A purchase that waits past the request timeout (its sync held) is answered 503
/// `unavailable` naming the timeout, and counted under that status; it still commits,
/// and its retry with the same key gets the order.
#[tokio::test]
async fn a_purchase_held_past_the_request_timeout_is_a_503_and_its_retry_gets_the_order() {
    let disk = stock_node::wal::MemDir::new();
    let opts = EngineOptions {
        dir: Some(std::sync::Arc::new(disk.clone())),
        ..Default::default()
    };
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (engine, state) = on_sale(opts, 5, 600_000, limits, None).await;
    let app = app(state);
    // Declared after the engine, so dropped before it: a failed assertion releases the
    // held syncs and the engine can stop (dropping it waits for its sequencer).
    let release = Release(disk.clone());
    disk.hold_syncs(true);
    let t0 = std::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(buy("k1")))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let waited = t0.elapsed();
    let (status, err) = answer(res).await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable")),
        "{err}"
    );
    assert!(
        err["detail"]
            .as_str()
            .is_some_and(|d| d.contains("request timed out after 300 ms")),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    drop(release);
    let res = app.clone().oneshot(buy("k1")).await.unwrap();
    assert_eq!(
        res.headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the retry is a replay of the first attempt, which committed"
    );
    let (status, order) = answer(res).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(
        engine.item("tee").unwrap().remaining,
        4,
        "one unit held, once"
    );
    let res = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for want in [
        "flashsale_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/purchases\",status=\"503\"} 1",
        "flashsale_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/purchases\",status=\"201\"} 1",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

/// A body of unknown length (a stream, as a chunked request) on an admin route that
/// reads raw bytes is bounded by the node's middleware at that route's limit: one byte
/// over the WAL route's 64 MiB is a 413, without the whole stream being taken in.
#[tokio::test]
async fn a_streamed_wal_post_over_its_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let (engine, state) = on_sale(opts, 1, 600_000, Limits::default(), Some("t")).await;
    let mib = axum::body::Bytes::from(vec![0u8; 1 << 20]);
    let limit = stock_node::http::replication::WAL_POST_BYTES_MAX;
    let chunks = (0..limit >> 20)
        .map(move |_| Ok::<_, std::io::Error>(mib.clone()))
        .chain(std::iter::once(Ok(axum::body::Bytes::from_static(b"x"))));
    let req = Request::post(flashsale_core::replication::WAL_ROUTE)
        .header("authorization", "Bearer t")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let res = app(state).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    engine.shutdown().await;
}

/// A handler that panics is a bug, but its client still gets the node's JSON 500, the
/// request is counted, and the node goes on serving: the panic is caught by the
/// middleware every route passes (`ops::Observe`), whether it comes from a handler,
/// from a service's `call`, or from the middleware's own work (here dropping a handler
/// the request timeout cut off).
#[tokio::test]
async fn a_handler_that_panics_is_a_json_500_and_the_node_goes_on() {
    use axum::routing::get;
    use stock_node::http::ops::ObserveLayer;
    async fn boom() -> &'static str {
        panic!("boom")
    }
    /// Cut off by the request timeout, and panics when dropped then (the middleware's
    /// own code, not the handler's poll).
    async fn stuck() -> &'static str {
        struct PanicOnDrop;
        impl Drop for PanicOnDrop {
            fn drop(&mut self) {
                panic!("dropped")
            }
        }
        let _guard = PanicOnDrop;
        std::future::pending::<()>().await;
        "never"
    }
    let dir = tempfile::tempdir().unwrap();
    let (engine, state) = node_with_timeout(&dir, Duration::from_millis(200)).await;
    let boom = axum::Router::new()
        .route("/boom", get(boom))
        .route("/stuck", get(stuck))
        .route("/fine", get(|| async { "fine" }))
        .route(
            "/metrics",
            get(stock_node::http::ops::metrics).with_state(state.clone()),
        )
        .route_service(
            "/early",
            tower::service_fn(
                |_req: Request<Body>| -> std::future::Ready<
                    Result<axum::response::Response, std::convert::Infallible>,
                > { panic!("early") },
            ),
        )
        .layer(ObserveLayer(state.clone()));
    for path in ["/boom", "/early", "/stuck"] {
        let (status, err) = get_within_10s(boom.clone(), path).await;
        assert_eq!(
            (status, &err["code"]),
            (StatusCode::INTERNAL_SERVER_ERROR, &json!("internal")),
            "{path}: {err}"
        );
    }
    let res = boom
        .clone()
        .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = boom
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let want = "flashsale_http_request_duration_seconds_count{method=\"GET\",route=\"/boom\",status=\"500\"} 1";
    assert!(text.contains(want), "{want} missing from\n{text}");
    engine.shutdown().await;
}

/// Every route the node serves passes its middleware (`ops::Observe`): each is counted
/// in the request metrics under its route, the admin routes whether or not the token
/// is right, and so are an unknown path and a method a route does not take. The routes
/// are the OpenAPI document's, so a route added there and served without the
/// middleware fails here.
#[tokio::test]
async fn every_route_is_timed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let (engine, state) = on_sale(opts, 1, 600_000, Limits::default(), Some("t")).await;
    let app = app(state);
    let doc = stock_node::http::openapi::document();
    let mut routes: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    routes.push(("GET".into(), "/openapi.json".into()));
    assert!(routes.len() > 20, "{routes:?}");
    let send = |method: &str, path: &str, token: Option<&str>| {
        let uri = path.replace("{sku}", "tee").replace("{id}", "1");
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    for (method, path) in &routes {
        // What each answers (empty bodies are mostly 400s) does not matter here; the
        // route it is counted under does (the fallback's is "unmatched").
        tokio::time::timeout(Duration::from_secs(10), send(method, path, Some("t")))
            .await
            .expect("answered")
            .unwrap();
    }
    let refused = send("GET", "/admin/v1/status", Some("wrong"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    send("GET", "/no/such/route", None).await.unwrap();
    send("DELETE", "/v1/purchases", None).await.unwrap();
    let res = send("GET", "/metrics", None).await.unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let counted = |method: &str, route: &str, status: Option<u16>| {
        let want = format!(
            "flashsale_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{}",
            status.map_or(String::new(), |s| format!("{s}\""))
        );
        assert!(text.contains(&want), "{want} missing from\n{text}");
    };
    for (method, path) in &routes {
        counted(method, path, None);
    }
    counted("GET", "/admin/v1/status", Some(401));
    counted("GET", "unmatched", Some(404));
    counted("DELETE", "/v1/purchases", Some(405));
    engine.shutdown().await;
}

/// A handler that spends tokio's whole task budget on every poll (a busy loop over
/// ready futures) is still cut off at the request timeout: the middleware polls its
/// timer outside the budget, as `tokio::time::timeout` does.
#[tokio::test]
async fn a_handler_that_spends_its_budget_is_still_cut_off() {
    use axum::routing::get;
    use stock_node::http::ops::ObserveLayer;
    async fn busy() -> &'static str {
        loop {
            tokio::task::consume_budget().await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (engine, state) = node_with_timeout(&dir, Duration::from_millis(200)).await;
    let app = axum::Router::new()
        .route("/busy", get(busy))
        .layer(ObserveLayer(state.clone()));
    let (status, err) = get_within_10s(app, "/busy").await;
    assert_eq!(
        (status, &err["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable")),
        "{err}"
    );
    engine.shutdown().await;
}

/// `GET path` through `app`, answered (or cut off) within 10 s: its status and JSON body.
async fn get_within_10s(app: axum::Router, path: &str) -> (StatusCode, Value) {
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        app.oneshot(Request::get(path).body(Body::empty()).unwrap()),
    )
    .await
    .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
    .unwrap();
    answer(res).await
}
