//! The node's HTTP server: accepts connections and serves the router on them, so that
//! no client can lock others out by holding connections.
//!
//! - At most `connections_max` connections are open. When a new one arrives at the
//!   limit, the connection idle the longest — no request in progress: before its first
//!   request, between requests, still trickling a request head, or with a head whose
//!   body has not all come and is still awaited — is closed to make room (such a
//!   request has not reached the engine; a handler that takes no body lets it go
//!   unread, and its request counts busy from then). Only when every open connection has a whole
//!   request in progress does a newcomer wait (it is accepted and held unserved, and
//!   the ones after it wait in the kernel's backlog). Counting a connection busy from
//!   its request's head instead let a crowd of heads with stalled bodies hold every
//!   slot until the request timeout, and send the next.
//! - A connection with no request in progress for `idle_timeout` is closed (hyper's
//!   header-read timeout, which runs from when a connection is ready for its next
//!   request until that request's head is complete).
//! - A write of an answer that makes no progress for `idle_timeout` closes its
//!   connection: hyper has no write timeout, and its header timer starts only once the
//!   answer is written, so a client that asked and never read held the answer in the
//!   node's memory (with the socket's buffers) for as long as it kept the connection
//!   open, and thousands of them could bring the node to its memory budget, where
//!   purchases are refused.
//! - A connection buffers at most [`HEAD_BUFFER_MAX`] of an unfinished request head.
//! - On shutdown it stops accepting, lets requests in progress finish for at most
//!   `drain`, then closes what is left.

use crate::engine::state::FastMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Most headers hyper parses in a request: its default, which it keeps in arrays on the
/// stack. Setting any limit (`max_headers`) makes hyper allocate and fill room for that
/// many headers twice on every request instead (at 128, two heap buffers of 2 and 3 KiB
/// and ~2 000 instructions a request, a few percent of a purchase's CPU; at 1000, 48
/// KiB). The routes' own limit (`ops::HEADERS_MAX`) is lower, so a request just over it
/// gets a JSON 431 from the node rather than hyper's empty one (beyond this, hyper's).
pub const HEADERS_HARD_MAX: usize = 100;

/// Most bytes a connection buffers while it reads a request head (hyper's read buffer,
/// `max_buf_size`): the routes' own limit of [`super::ops::HEADER_BYTES_MAX`] (16 KiB)
/// of headers and a request line fit, so those are refused with a JSON 431; a head that
/// grows past this gets hyper's bare 431 at once and its connection is closed. Hyper's
/// default, ~408 KiB, let a crowd of connections each trickling an unfinished head hold
/// that much apiece until the header timeout: 4 096 connections, ~1.6 GiB, past the
/// pod's memory limit. Bodies stream through the buffer in pieces of at most this.
pub const HEAD_BUFFER_MAX: usize = 24 * 1024;

/// How the server treats connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub connections_max: usize,
    pub idle_timeout: Duration,
    pub drain: Duration,
}

impl From<&super::Limits> for ConnectionLimits {
    fn from(l: &super::Limits) -> Self {
        ConnectionLimits {
            connections_max: l.connections_max,
            idle_timeout: l.idle_timeout,
            drain: l.shutdown_drain,
        }
    }
}

struct Conn {
    /// Requests in progress on it.
    busy: u32,
    close: Arc<Notify>,
}

/// The open connections, and their order for closing one to make room.
#[derive(Default)]
struct Conns {
    open: FastMap<u64, Conn>,
    /// Open connections in the order they last went idle, the one idle the longest
    /// first: a connection goes to the back when it is accepted and each time its last
    /// request ends, and leaves when it closes. One whose request began since stays
    /// where it was until `Registry::make_room` passes it (a request costs one move to
    /// the back, not two), and is dropped from the order then: its requests' end puts
    /// it back. So every idle connection is in it, each connection once at most, and
    /// finding room costs a `pop_front` per connection passed, each paid for by the
    /// insert that put it there: O(1) amortized (one newcomer may pass many connections
    /// whose requests began since, each once until it is idle again), where a scan of
    /// every open connection under this lock cost O(n) for each newcomer at the limit,
    /// a cost a crowd opening connections could multiply (`make bench-connections`).
    idle: hashlink::LinkedHashSet<u64, foldhash::fast::RandomState>,
}

/// The open connections, shared by the accept loop and the connections' tasks.
#[derive(Default)]
struct Registry {
    conns: Mutex<Conns>,
    /// A connection closed or went idle: the accept loop may find room.
    changed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more connection: true if there is (after closing the one idle
    /// the longest, if the limit is reached), false if every connection is busy.
    fn make_room(&self, max: usize) -> bool {
        let mut conns = self.lock();
        if conns.open.len() < max {
            return true;
        }
        while let Some(id) = conns.idle.pop_front() {
            if conns.open.get(&id).is_some_and(|c| c.busy == 0) {
                if let Some(c) = conns.open.remove(&id) {
                    c.close.notify_one();
                }
                return true;
            }
        }
        false
    }

    /// A connection just accepted: idle until its first request.
    fn accepted(&self, id: u64, close: Arc<Notify>) {
        let mut conns = self.lock();
        conns.open.insert(id, Conn { busy: 0, close });
        conns.idle.insert(id);
    }

    fn set_busy(&self, id: u64, delta: i32) {
        let mut conns = self.lock();
        let Some(c) = conns.open.get_mut(&id) else {
            return;
        };
        c.busy = c.busy.saturating_add_signed(delta);
        if c.busy == 0 {
            conns.idle.insert(id);
            drop(conns);
            self.changed.notify_one();
        }
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.open.remove(&id);
        conns.idle.remove(&id);
        drop(conns);
        self.changed.notify_one();
    }
}

/// A request on its connection: marks the connection busy once the request's body has
/// all come ([`InRequest::mark`]), and idle again when the request is answered (or
/// dropped) and its body let go — the last of the two holding it.
struct InRequest {
    registry: Arc<Registry>,
    id: u64,
    busy: std::sync::atomic::AtomicBool,
}

impl InRequest {
    fn mark(&self) {
        if !self.busy.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.registry.set_busy(self.id, 1);
        }
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        if *self.busy.get_mut() {
            self.registry.set_busy(self.id, -1);
        }
    }
}

/// A request's body that marks its request busy once it has all come, or once it is
/// let go unread (a handler that takes no body, a confirm or cancel sent with one,
/// goes on to the engine without reading it).
struct MarkedBody<B> {
    inner: B,
    request: Arc<InRequest>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for MarkedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.request.mark();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MarkedBody<B> {
    fn drop(&mut self) {
        self.request.mark();
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; see the module doc.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (the node's clients and axum's defaults): hyper's HTTP/1 connection
    // starts its header-read timer as soon as it is served, so a connection that never
    // sends a byte times out too (the auto builder waits for a first byte to pick a
    // protocol, and would hold a silent connection for ever).
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(HEAD_BUFFER_MAX);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return drain(graceful, limits.drain).await,
        };
        // Room for it: at the limit, the connection idle longest goes; with every
        // connection in a request, the newcomer waits until one is done.
        loop {
            let changed = registry.changed.notified();
            if registry.make_room(limits.connections_max.max(1)) {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = &mut shutdown => return drain(graceful, limits.drain).await,
            }
        }
        // Small JSON answers must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let close = Arc::new(Notify::new());
        registry.accepted(id, close.clone());
        let service = {
            let registry = registry.clone();
            let app = app.clone();
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let request = Arc::new(InRequest {
                    registry: registry.clone(),
                    id,
                    busy: false.into(),
                });
                if req.body().is_end_stream() {
                    request.mark();
                }
                let req = req.map(|inner| {
                    Body::new(MarkedBody {
                        inner,
                        request: request.clone(),
                    })
                });
                let app = app.clone();
                async move {
                    let res = app.oneshot(req).await;
                    drop(request);
                    res.map_err(|e: Infallible| match e {})
                }
            })
        };
        let mut io = tokio_io_timeout::TimeoutWriter::new(stream);
        io.set_timeout(Some(limits.idle_timeout));
        let conn = builder.serve_connection(TokioIo::new(Box::pin(io)), service);
        let conn = graceful.watch(conn);
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Errors are the client's (reset, a malformed request, the header
                // timeout): nothing to do but let the connection go.
                _ = conn => {}
                _ = close.notified() => {}
            }
            registry.remove(id);
        });
    }
}

/// Waits for requests in progress, at most `drain`.
async fn drain(graceful: GracefulShutdown, drain: Duration) -> std::io::Result<()> {
    tracing::info!("shutdown: no new connections, draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "shutdown: drain time over, closing remaining connections"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(r: &Registry, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            r.accepted(id, Arc::new(Notify::new()));
        }
    }

    /// The open connections' ids, in order.
    fn open(r: &Registry) -> Vec<u64> {
        let mut ids: Vec<u64> = r.lock().open.keys().copied().collect();
        ids.sort();
        ids
    }

    /// The ids in the idle order, front first.
    fn idle_order(r: &Registry) -> Vec<u64> {
        r.lock().idle.iter().copied().collect()
    }

    /// One request on connection `id`, from its start to its answer.
    fn request(r: &Registry, id: u64) {
        r.set_busy(id, 1);
        r.set_busy(id, -1);
    }

    /// A request counts as busy (never closed to make room) only once its body has all
    /// come, and until both its answer and its body are done with.
    #[tokio::test]
    async fn a_request_is_busy_from_the_end_of_its_body_until_it_is_done() {
        use http_body_util::BodyExt;
        let r = Arc::new(Registry::default());
        accept(&r, [7]);
        let busy = |r: &Registry| r.lock().open[&7].busy;
        let (request, tx, mut body) = marked(&r);
        tx.send(Ok(hyper::body::Frame::data("{\"sku\":".into())))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            busy(&r),
            0,
            "part of the body: closable like an idle connection"
        );
        assert!(r.make_room(1), "it makes room");
        accept(&r, [7]);
        tx.send(Ok(hyper::body::Frame::data("1}".into())))
            .await
            .unwrap();
        drop(tx);
        body.frame().await.unwrap().unwrap();
        assert!(body.frame().await.is_none());
        assert_eq!(busy(&r), 1, "the whole body: a request in progress");
        assert!(!r.make_room(1), "never closed to make room");
        drop(body);
        assert_eq!(busy(&r), 1, "its answer is not done yet");
        drop(request);
        assert_eq!(busy(&r), 0);
        // A body let go unread (a route that takes none): busy from then on.
        let (request, _tx, body) = marked(&r);
        drop(body);
        assert_eq!(busy(&r), 1, "in the handler, body unread");
        drop(request);
        assert_eq!(busy(&r), 0);
    }

    type Frames = tokio::sync::mpsc::Sender<
        Result<hyper::body::Frame<hyper::body::Bytes>, std::convert::Infallible>,
    >;

    /// Request 7 of `r`, and its body as the server hands it over, fed by the sender.
    fn marked(
        r: &Arc<Registry>,
    ) -> (
        Arc<InRequest>,
        Frames,
        MarkedBody<
            impl hyper::body::Body<Data = hyper::body::Bytes, Error = std::convert::Infallible> + Unpin,
        >,
    ) {
        let request = Arc::new(InRequest {
            registry: r.clone(),
            id: 7,
            busy: false.into(),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let frames = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body = MarkedBody {
            inner: http_body_util::StreamBody::new(frames),
            request: request.clone(),
        };
        (request, tx, body)
    }

    #[test]
    fn at_the_limit_the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let r = Registry::default();
        accept(&r, [1, 2, 3]);
        r.set_busy(1, 1);
        request(&r, 2);
        assert!(r.make_room(4), "under the limit");
        assert_eq!(open(&r), [1, 2, 3]);
        assert!(r.make_room(3));
        assert_eq!(
            open(&r),
            [1, 2],
            "3 was idle the longest: 2 had a request since"
        );
        assert!(r.make_room(2));
        assert_eq!(open(&r), [1]);
        assert!(
            !r.make_room(1),
            "a busy connection is never closed for room"
        );
        r.set_busy(1, -1);
        assert!(r.make_room(1));
        assert!(open(&r).is_empty());
    }

    /// Idle the longest is counted from the end of a connection's last request: not
    /// from when it was accepted, nor from when its request began; a connection closed
    /// meanwhile leaves the order.
    #[test]
    fn the_connection_whose_last_request_ended_first_makes_room_first() {
        let r = Registry::default();
        accept(&r, [1, 2, 3, 4]);
        r.set_busy(3, 1);
        r.remove(4);
        r.set_busy(1, 1);
        request(&r, 2);
        r.set_busy(1, -1);
        assert_eq!(idle_order(&r), [3, 2, 1], "4 closed; 3 not passed yet");
        assert!(r.make_room(3));
        assert_eq!(
            open(&r),
            [1, 3],
            "2's request ended first, though 1's began first"
        );
        assert!(r.make_room(2));
        assert_eq!(open(&r), [3], "then 1's");
        assert!(!r.make_room(1), "3 is busy");
    }

    /// However many requests come and go, the idle order is the order their ends came
    /// in; a busy connection is passed and dropped from it, and comes back when its
    /// request ends.
    #[test]
    fn the_idle_order_is_the_order_requests_ended_and_passes_busy_connections() {
        let r = Registry::default();
        accept(&r, 1..=10);
        for round in 0..1_000u64 {
            request(&r, round % 9 + 2);
        }
        assert_eq!(
            idle_order(&r),
            [1, 3, 4, 5, 6, 7, 8, 9, 10, 2],
            "2's request ended last"
        );
        r.set_busy(1, 1);
        r.remove(6);
        assert_eq!(idle_order(&r), [1, 3, 4, 5, 7, 8, 9, 10, 2], "6 closed");
        assert!(r.make_room(9));
        assert_eq!(open(&r), [1, 2, 4, 5, 7, 8, 9, 10], "1 is busy: 3 went");
        assert_eq!(idle_order(&r), [4, 5, 7, 8, 9, 10, 2], "1 passed");
        r.set_busy(1, -1);
        assert_eq!(idle_order(&r), [4, 5, 7, 8, 9, 10, 2, 1], "1 idle again");
    }
}
