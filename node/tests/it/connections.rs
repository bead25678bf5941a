//! A crowd that holds connections cannot lock other clients out: idle and trickling
//! connections beyond the limit are closed to make room, and every connection with no
//! request in progress is closed after the idle timeout.

use crate::common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Node, sale_file};

/// Reads what the server answers on `c` until it closes it (a read returns 0 or fails):
/// the answer, and whether it closed within `within`.
async fn answer_then_close(c: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            // A 408 or other answer before the close: keep reading to the end.
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

/// Waits for the server to close `c`; false if it stays open.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    answer_then_close(c, within).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_beyond_the_limit_lock_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 10, 0)]);
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--config",
            sale.to_str().unwrap(),
            "--connections-max",
            "32",
            "--idle-timeout-ms",
            "1500",
        ],
    );
    // 40 connections that send nothing, and 20 that trickle a request head a byte at a
    // time: more than the node's 32 slots.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(&node.addr).await.unwrap());
    }
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(&node.addr).await.unwrap();
        c.write_all(b"POST /v1/purchases HTTP/1.1\r\nHost: n\r\n")
            .await
            .unwrap();
        tricklers.push(tokio::spawn(async move {
            for b in b"X-Slow: yes".iter().cycle().take(200) {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A new client is served at once.
    let http = reqwest::Client::new();
    for path in ["/healthz", "/v1/items/tee"] {
        let started = Instant::now();
        let r = http
            .get(format!("http://{}{path}", node.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: a new client was locked out: {e}"));
        let took = started.elapsed();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            took < Duration::from_millis(100),
            "{path} answered in {took:?}, not within 100 ms"
        );
    }

    // And every held connection is closed: the oldest to make room, the rest after the
    // idle timeout (the tricklers never finish their head).
    for (i, c) in held.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(5)).await,
            "idle connection {i} still open"
        );
    }
    for t in tricklers {
        let mut c = t.await.unwrap();
        assert!(
            closed_within(&mut c, Duration::from_secs(5)).await,
            "a trickling connection is still open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_stalls_is_closed_to_make_room() {
    // Every slot holds a purchase whose head came and whose body does not: none has
    // reached the engine, so they are closed to make room like idle connections, and a
    // newcomer is served at once. (Counted busy from the head, they held every slot
    // until the request timeout — 10 s by default — and a crowd sent the next.) A
    // request whose body has all come is never closed (`http::server` unit tests).
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 10, 0)]);
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--config",
            sale.to_str().unwrap(),
            "--connections-max",
            "4",
            "--idle-timeout-ms",
            "10000",
        ],
    );
    let body = |i: usize| {
        format!(r#"{{"sku":"tee","quantity":1,"customer":"c","idempotencyKey":"k{i}"}}"#)
    };
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut c = TcpStream::connect(&node.addr).await.unwrap();
        // The head is complete; of the body, one byte.
        c.write_all(
            format!(
                "POST /v1/purchases HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
                body(i).len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let status = reqwest::Client::new()
        .get(format!("http://{}/healthz", node.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(status.unwrap(), 200);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the newcomer waited {:?} behind stalled bodies",
        t0.elapsed()
    );
    // The one closed for it is gone; the others still take their purchase.
    let mut closed = 0;
    for (i, c) in stalled.iter_mut().enumerate() {
        if c.write_all(&body(i).as_bytes()[1..]).await.is_err() {
            closed += 1;
            continue;
        }
        let mut buf = [0u8; 512];
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => closed += 1,
            Ok(n) => {
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 201"), "{head}");
            }
        }
    }
    assert_eq!(closed, 1, "one stalled connection made room");
}

/// A crowd of connections each sending an endless request head holds at most
/// `HEAD_BUFFER_MAX` of the node's memory apiece: past it the head is refused at once
/// (431) and the connection closed, not buffered until the header timeout (hyper's
/// default buffer let each hold ~408 KiB). Headers over the routes' own limit but
/// within that bound still get the node's JSON 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_request_head_is_refused_once_past_its_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 10, 0)]);
    // The default idle (header) timeout, 10 s: the refusal must not wait for it.
    let node = Node::start(
        &dir.path().join("data"),
        &["--config", sale.to_str().unwrap()],
    );
    let pad = stock_node::http::server::HEAD_BUFFER_MAX * 4;
    let mut c = TcpStream::connect(&node.addr).await.unwrap();
    c.write_all(b"GET /v1/items HTTP/1.1\r\nHost: n\r\nX-Pad: ")
        .await
        .unwrap();
    let started = Instant::now();
    // The node may close while this is still being written.
    let _ = c.write_all(&vec![b'a'; pad]).await;
    let (answer, closed) = answer_then_close(&mut c, Duration::from_secs(3)).await;
    assert!(
        closed && answer.starts_with("HTTP/1.1 431"),
        "a head of {pad}+ bytes without its end: after {:?}, closed {closed}, answered {answer:?}",
        started.elapsed()
    );

    // 20 KiB of headers: over the routes' 16 KiB, within the buffer: the JSON 431.
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/items", node.addr))
        .header("x-pad", "b".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "headers_too_large", "{body}");
}

/// A client that asks and never reads cannot hold its answers in the node: a write that
/// makes no progress for the idle timeout closes the connection. (hyper has no write
/// timeout, and its header timer starts only once an answer is written: such a
/// connection stayed open with the answers buffered for as long as the client kept it,
/// and thousands could bring the node to its memory budget, where purchases are
/// refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sale = sale_file(dir.path(), &[("tee", 10, 0)]);
    let node = Node::start(
        &dir.path().join("data"),
        &[
            "--config",
            sale.to_str().unwrap(),
            "--idle-timeout-ms",
            "1500",
        ],
    );
    let doc_len = reqwest::get(format!("http://{}/openapi.json", node.addr))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    assert!(doc_len > 50_000, "the document is {doc_len} bytes");
    // A small receive window, and answers asked for at once: far more than the two
    // sockets' buffers hold (the node's send buffer grows to a few MB over loopback,
    // whose segments are 64 KB).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    const ASKED: usize = 256;
    c.write_all(&b"GET /openapi.json HTTP/1.1\r\nHost: n\r\n\r\n".repeat(ASKED))
        .await
        .unwrap();
    // Not read for twice the idle timeout.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let (got, closed) = answer_then_close(&mut c, Duration::from_secs(20)).await;
    assert!(closed, "the connection stayed open");
    assert!(
        got.len() < ASKED * doc_len,
        "every answer was held for the client that did not read: {} bytes of {ASKED} x {doc_len}",
        got.len()
    );
}
