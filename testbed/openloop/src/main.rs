//! `openloop`: the open-loop load of `make bench-node`. It POSTs purchases at a fixed
//! rate whatever the server does, on a fixed set of keep-alive connections, and times
//! each request from when the schedule said to send it (request `i` at `i / rate`
//! seconds), so time spent waiting for a free connection counts as latency: a server
//! that falls behind cannot hide it by slowing the load down (no coordinated omission,
//! as wrk2 measures).
//!
//! Why not oha, which the benchmark used first: on this project's 2-CPU machine the load
//! has one core, and oha with latency correction spends 22–27 µs of CPU a request, more
//! than the no-op server it measures (13–19 µs); at 80% of the durable node's peak it
//! saturated its core, and the no-op ceiling showed a p99 of 230 ms at that rate. This
//! generator is one thread on `mio` with no per-request allocation but the request's
//! bytes. It polls without sleeping when the next request is due within 2 ms (epoll
//! waits in whole milliseconds), so requests leave on time; its core is busy for the
//! whole run, which is why the benchmark gives it a core of its own. A request due
//! when an answer frees a connection goes out on it at once, as a client's would, not
//! after the rest of that poll's answers (which sent the server bursts).
//!
//! Every request is a purchase with its own customer and idempotency key
//! (`c<prefix>-<i>`, `k<prefix>-<i>`): none is an idempotent replay. Prints one JSON
//! object: the asked rate, what was sent and answered, the statuses, the answered rate
//! and the latency percentiles in ms over every scheduled request — an answered one
//! from its schedule to its answer; one whose connection failed, that was not answered
//! within `--timeout-s` after the schedule ended, or that was never sent by then counts
//! the time it had waited when that was known (a lower bound), and is counted in
//! `errors` too. A connection that fails, or that the server closes, is replaced.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

#[derive(Parser)]
#[command(about = "POST purchases at a fixed rate (open loop) and report latency")]
struct Args {
    /// `http://host:port/path` the purchases are POSTed to.
    #[arg(long)]
    url: String,
    /// Requests per second, sent on schedule whatever the server does.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,
    /// How long the schedule runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_s: u64,
    /// Keep-alive connections, opened before the schedule starts.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    connections: u64,
    /// Prefix of the customers and idempotency keys (distinct per run on one node).
    #[arg(long, default_value = "ol")]
    prefix: String,
    /// The SKU every purchase asks for.
    #[arg(long, default_value = "bench")]
    sku: String,
    /// Also report the latency of the requests scheduled in each window of this many ms
    /// (`windows`: start ms, answered, p50, p99, max), to see when a tail happened.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    window_ms: Option<u64>,
    /// After the schedule ends, how long answers may still take.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout_s: u64,
}

/// One keep-alive connection and the request on it.
struct Conn {
    stream: TcpStream,
    /// When the request in flight was scheduled.
    scheduled: Option<Instant>,
    /// The request's bytes; `written` of them are sent.
    out: Vec<u8>,
    written: usize,
    /// What has arrived of the answer.
    input: Vec<u8>,
    /// The server closed the connection (after an answer, or before one).
    closed: bool,
}

/// The target of `--url`: where to connect, and the head's host and path.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn target(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url: only http:// URLs (got {url})");
    };
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("--url: cannot resolve {host}"))?
        .next()
        .with_context(|| format!("--url: no address for {host}"))?;
    Ok(Target {
        addr,
        host: host.to_owned(),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
    })
}

/// A new connection to `addr`, registered with `poll` as connection `n`.
fn connect(poll: &Poll, addr: SocketAddr, n: usize) -> anyhow::Result<TcpStream> {
    let s = StdStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(s);
    poll.registry().register(
        &mut stream,
        Token(n),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(stream)
}

/// What a complete answer at the start of `input` is: its status and its length.
/// `None` while it is incomplete; an error for what is not an HTTP/1.1 answer with a
/// `Content-Length` (the node always sends one).
fn answer(input: &[u8]) -> io::Result<Option<(u16, usize)>> {
    let Some(head) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    let text = std::str::from_utf8(&input[..head]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| bad("no Content-Length"))?;
    let total = head + 4 + length;
    Ok((input.len() >= total).then_some((status, total)))
}

impl Conn {
    /// Writes what is left of the request; `Ok(true)` once all of it is sent.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads what has arrived; `Some(status)` once the whole answer is in.
    fn receive(&mut self) -> io::Result<Option<u16>> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match answer(&self.input)? {
            None if self.closed => Err(io::ErrorKind::UnexpectedEof.into()),
            None => Ok(None),
            Some((status, len)) if len == self.input.len() => {
                self.input.clear();
                Ok(Some(status))
            }
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bytes after the answer",
            )),
        }
    }
}

/// The requests' schedule and how far it has gone.
struct Schedule<'a> {
    start: Instant,
    rate: u64,
    total: u64,
    /// The next request to send.
    next: u64,
    in_flight: usize,
    /// The JSON strings that go into each body.
    sku: &'a str,
    prefix: &'a str,
}

impl Schedule<'_> {
    /// When request `i` is due.
    fn due(&self, i: u64) -> Instant {
        self.start
            + Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(self.rate)) as u64)
    }

    /// Sends what is due by `now` while a connection is free; the rest waits, its
    /// clock running.
    fn send_due(
        &mut self,
        now: Instant,
        poll: &Poll,
        t: &Target,
        conns: &mut [Conn],
        free: &mut VecDeque<usize>,
        tally: &mut Tally,
    ) -> io::Result<()> {
        while self.next < self.total && self.due(self.next) <= now {
            let Some(c) = free.pop_front() else { break };
            let conn = &mut conns[c];
            let (i, sku, prefix) = (self.next, self.sku, self.prefix);
            conn.out.clear();
            let body = format!(
                r#"{{"sku":{sku},"quantity":1,"customer":"c{prefix}-{i}","idempotencyKey":"k{prefix}-{i}"}}"#
            );
            write!(
                conn.out,
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                t.path,
                t.host,
                body.len()
            )?;
            conn.written = 0;
            conn.scheduled = Some(self.due(i));
            self.next += 1;
            self.in_flight += 1;
            if let Err(e) = conn.flush() {
                tally.record(self.due(i), Instant::now(), None);
                self.in_flight -= 1;
                if replace(poll, t, conn, c, &e) {
                    free.push_back(c);
                }
            }
        }
        Ok(())
    }
}

/// What a run has measured so far.
struct Tally {
    start: Instant,
    /// Every scheduled request's latency, µs (see the crate's doc).
    latencies_us: Vec<u32>,
    /// (µs from the start the request was scheduled at, its latency in µs), kept with
    /// `--window-ms`.
    timeline: Option<Vec<(u64, u32)>>,
    statuses: BTreeMap<u16, u64>,
    answered: u64,
    errors: u64,
    last_answer: Instant,
}

impl Tally {
    /// A request scheduled at `scheduled`, over at `at`: answered with `status`, or
    /// (`None`) failed, not answered in time or never sent.
    fn record(&mut self, scheduled: Instant, at: Instant, status: Option<u16>) {
        let us =
            u32::try_from(at.saturating_duration_since(scheduled).as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(us);
        if let Some(t) = &mut self.timeline {
            t.push((
                scheduled.saturating_duration_since(self.start).as_micros() as u64,
                us,
            ));
        }
        match status {
            Some(status) => {
                *self.statuses.entry(status).or_default() += 1;
                self.answered += 1;
                self.last_answer = self.last_answer.max(at);
            }
            None => self.errors += 1,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = target(&args.url)?;
    let total = args.rate * args.duration_s;
    // JSON strings as they go into each body.
    let sku = serde_json::to_string(&args.sku)?;
    let prefix = serde_json::to_string(&args.prefix)?;
    let prefix = &prefix[1..prefix.len() - 1];
    let mut poll = Poll::new()?;
    let mut conns = Vec::new();
    for n in 0..args.connections as usize {
        conns.push(Conn {
            stream: connect(&poll, t.addr, n)?,
            scheduled: None,
            out: Vec::with_capacity(512),
            written: 0,
            input: Vec::with_capacity(1024),
            closed: false,
        });
    }
    // Taken in turn (first freed, first taken), so that every connection carries
    // requests and none sits idle long enough for the server to close it.
    let mut free: VecDeque<usize> = (0..conns.len()).collect();
    let mut events = Events::with_capacity(1024);

    let start = Instant::now() + Duration::from_millis(20);
    let start_unix_ms = (std::time::SystemTime::now() + Duration::from_millis(20))
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut sched = Schedule {
        start,
        rate: args.rate,
        total,
        next: 0,
        in_flight: 0,
        sku: &sku,
        prefix,
    };
    let deadline = sched.due(total) + Duration::from_secs(args.timeout_s);
    let mut tally = Tally {
        start,
        latencies_us: Vec::with_capacity(total.min(1 << 26) as usize),
        timeline: args
            .window_ms
            .map(|_| Vec::with_capacity(total.min(1 << 26) as usize)),
        statuses: BTreeMap::new(),
        answered: 0,
        errors: 0,
        last_answer: start,
    };
    loop {
        let now = Instant::now();
        sched.send_due(now, &poll, &t, &mut conns, &mut free, &mut tally)?;
        if (sched.next == total && sched.in_flight == 0) || now >= deadline {
            break;
        }
        let timeout = if sched.next < total && !free.is_empty() {
            let at = sched.due(sched.next);
            // epoll waits in whole milliseconds: sleep to 2 ms before, then poll
            // without sleeping.
            Some(
                at.saturating_duration_since(now)
                    .saturating_sub(Duration::from_millis(2)),
            )
        } else {
            Some(deadline.saturating_duration_since(now))
        };
        poll.poll(&mut events, timeout)?;
        for ev in &events {
            let c = ev.token().0;
            let conn = &mut conns[c];
            let Some(scheduled) = conn.scheduled else {
                // A connection the server closed while nothing was on it: replace it
                // before a request is lost on it.
                if (ev.is_read_closed() || ev.is_error())
                    && let Some(at) = free.iter().position(|&f| f == c)
                {
                    free.remove(at);
                    if replace(&poll, &t, conn, c, &io::ErrorKind::ConnectionReset.into()) {
                        free.push_back(c);
                    }
                }
                continue;
            };
            let done = (|| {
                if ev.is_writable() && !conn.flush()? {
                    return Ok(None);
                }
                if ev.is_readable() || ev.is_read_closed() {
                    return conn.receive();
                }
                Ok(None)
            })();
            let at = Instant::now();
            let alive = match done {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    tally.record(scheduled, at, Some(status));
                    conn.scheduled = None;
                    // An answer, then the connection closed: a new one, no error.
                    !conn.closed
                        || replace(&poll, &t, conn, c, &io::ErrorKind::UnexpectedEof.into())
                }
                Err(e) => {
                    tally.record(scheduled, at, None);
                    replace(&poll, &t, conn, c, &e)
                }
            };
            sched.in_flight -= 1;
            if alive {
                free.push_back(c);
                // What is due goes out now, as a client would send it, not after the
                // rest of this poll's answers: the server sees requests as they come
                // due, not in bursts of one poll's worth.
                sched.send_due(at, &poll, &t, &mut conns, &mut free, &mut tally)?;
            }
        }
    }
    // Answers that did not come in time, and requests never sent: each counts the time
    // it had waited by now.
    let end = Instant::now();
    for conn in &conns {
        if let Some(scheduled) = conn.scheduled {
            tally.record(scheduled, end, None);
        }
    }
    for i in sched.next..total {
        tally.record(sched.due(i), end, None);
    }
    let elapsed = tally
        .last_answer
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let mut l = std::mem::take(&mut tally.latencies_us);
    l.sort_unstable();
    let pct = |q: f64| -> serde_json::Value {
        if l.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::json!(f64::from(l[rank(l.len(), q)]) / 1000.0)
    };
    let mut out = serde_json::json!({
        "startUnixMs": start_unix_ms,
        "askedRate": args.rate,
        "durationS": args.duration_s,
        "connections": args.connections,
        "scheduled": total,
        "sent": sched.next,
        "answered": tally.answered,
        "errors": tally.errors,
        "statuses": tally.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "answeredPerS": tally.answered as f64 / elapsed,
        "latencyMs": {
            "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p99.9": pct(0.999),
            "max": pct(1.0),
        },
    });
    if let (Some(w), Some(timeline)) = (args.window_ms, tally.timeline.take()) {
        out["windows"] = windows(timeline, w * 1000);
    }
    println!("{out}");
    Ok(())
}

/// The index of quantile `q` in `len` sorted values (nearest rank).
fn rank(len: usize, q: f64) -> usize {
    ((len as f64 * q).ceil() as usize).clamp(1, len) - 1
}

/// Per window of `width_us` by scheduled time: [start ms, requests, p50, p99, max] (ms).
fn windows(mut timeline: Vec<(u64, u32)>, width_us: u64) -> serde_json::Value {
    timeline.sort_unstable();
    let mut out = Vec::new();
    for chunk in timeline.chunk_by(|a, b| a.0 / width_us == b.0 / width_us) {
        let mut l: Vec<u32> = chunk.iter().map(|e| e.1).collect();
        l.sort_unstable();
        let at = |q: f64| f64::from(l[rank(l.len(), q)]) / 1000.0;
        out.push(serde_json::json!([
            chunk[0].0 / width_us * width_us / 1000,
            l.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        ]));
    }
    serde_json::Value::Array(out)
}

/// Replaces connection `c`, which failed (`why`) or was closed, with a new one; `false`
/// (reported) when no new one could be opened: the connection is out of the run.
fn replace(poll: &Poll, t: &Target, conn: &mut Conn, c: usize, why: &io::Error) -> bool {
    let _ = poll.registry().deregister(&mut conn.stream);
    conn.input.clear();
    conn.scheduled = None;
    conn.closed = false;
    match connect(poll, t.addr, c) {
        Ok(stream) => {
            conn.stream = stream;
            true
        }
        Err(e) => {
            eprintln!("openloop: connection {c} ({why}) could not be replaced: {e:#}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_once_its_body_is_in() {
        let full = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        for cut in 0..full.len() {
            assert_eq!(answer(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(answer(full).unwrap(), Some((201, full.len())));
        let mut two = full.to_vec();
        two.extend_from_slice(b"HTTP/1.1");
        assert_eq!(answer(&two).unwrap(), Some((201, full.len())));
    }

    #[test]
    fn an_answer_without_a_length_or_status_is_refused() {
        assert!(answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(answer(b"garbage\r\n\r\n").is_err());
        let empty = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(answer(empty).unwrap(), Some((503, empty.len())));
    }

    #[test]
    fn the_target_is_an_http_url() {
        let t = target("http://127.0.0.1:8080/v1/purchases").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/v1/purchases")
        );
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(target("http://127.0.0.1:1").unwrap().path, "/");
        assert!(target("https://127.0.0.1:1/").is_err());
    }

    #[test]
    fn windows_give_each_slice_of_the_schedule_its_percentiles() {
        let timeline = vec![(0, 1000), (50_000, 3000), (100_000, 2000), (150_000, 2000)];
        assert_eq!(
            windows(timeline, 100_000),
            serde_json::json!([[0, 2, 1.0, 3.0, 3.0], [100, 2, 2.0, 2.0, 2.0]])
        );
    }

    #[test]
    fn an_answer_then_a_close_is_an_answer_and_a_close_before_one_an_error() {
        let poll = Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = |reply: &'static [u8]| {
            let mut c = Conn {
                stream: connect(&poll, addr, 0).unwrap(),
                scheduled: None,
                out: Vec::new(),
                written: 0,
                input: Vec::new(),
                closed: false,
            };
            let (mut server, _) = listener.accept().unwrap();
            server.write_all(reply).unwrap();
            drop(server);
            // Until the close has arrived too.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let got = c.receive();
                if c.closed || got.is_err() || Instant::now() > deadline {
                    return (got.map_err(|e| e.kind()), c.closed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        assert_eq!(
            conn(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"),
            (Ok(Some(201)), true)
        );
        assert_eq!(
            conn(b"HTTP/1.1 201 Created\r\nContent-Length: 9\r\n\r\n{}"),
            (Err(io::ErrorKind::UnexpectedEof), true)
        );
    }

    #[test]
    fn every_request_counts_in_the_latencies_and_the_unanswered_in_errors() {
        let start = Instant::now();
        let mut t = Tally {
            start,
            latencies_us: Vec::new(),
            timeline: Some(Vec::new()),
            statuses: BTreeMap::new(),
            answered: 0,
            errors: 0,
            last_answer: start,
        };
        let ms = Duration::from_millis;
        t.record(start, start + ms(3), Some(201));
        t.record(start + ms(1), start + ms(2), Some(503));
        t.record(start + ms(2), start + ms(9), None);
        assert_eq!(t.latencies_us, [3000, 1000, 7000]);
        assert_eq!((t.answered, t.errors), (2, 1));
        assert_eq!(t.statuses, BTreeMap::from([(201, 1), (503, 1)]));
        assert_eq!(t.last_answer, start + ms(3));
        assert_eq!(t.timeline.unwrap()[2], (2000, 7000));
        assert_eq!(
            [rank(3, 0.5), rank(3, 0.99), rank(3, 1.0), rank(1000, 0.99)],
            [1, 2, 2, 989]
        );
    }
}
