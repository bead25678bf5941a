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
//! whole run, which is why the benchmark gives it a core of its own.
//!
//! Every request is a purchase with its own customer and idempotency key
//! (`c<prefix>-<i>`, `k<prefix>-<i>`): none is an idempotent replay. Prints one JSON
//! object: the asked rate, what was sent and answered, the statuses, the answered rate
//! and the latency percentiles in ms (answered requests; an answer that did not come
//! within `--timeout-s` after the schedule ended, a request never sent by then, and a
//! connection that failed are counted in `errors`).

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
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match answer(&self.input)? {
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = target(&args.url)?;
    let total = args.rate * args.duration_s;
    let mut poll = Poll::new()?;
    let mut conns = Vec::new();
    for n in 0..args.connections as usize {
        conns.push(Conn {
            stream: connect(&poll, t.addr, n)?,
            scheduled: None,
            out: Vec::with_capacity(512),
            written: 0,
            input: Vec::with_capacity(1024),
        });
    }
    // Taken in turn (first freed, first taken), so that every connection carries
    // requests and none sits idle long enough for the server to close it.
    let mut free: VecDeque<usize> = (0..conns.len()).collect();
    let mut latencies_us: Vec<u32> = Vec::with_capacity(total as usize);
    // (µs from the start the request was scheduled at, its latency in µs)
    let mut timeline: Vec<(u64, u32)> = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut events = Events::with_capacity(1024);

    let start = Instant::now() + Duration::from_millis(20);
    let start_unix_ms = (std::time::SystemTime::now() + Duration::from_millis(20))
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let due = |i: u64| {
        start + Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(args.rate)) as u64)
    };
    let schedule_end = due(total);
    let deadline = schedule_end + Duration::from_secs(args.timeout_s);
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut last_answer = start;
    loop {
        let now = Instant::now();
        // Send what is due while a connection is free; the rest waits, its clock running.
        while next < total && due(next) <= now {
            let Some(c) = free.pop_front() else { break };
            let conn = &mut conns[c];
            conn.out.clear();
            let body = format!(
                r#"{{"sku":"{}","quantity":1,"customer":"c{p}-{next}","idempotencyKey":"k{p}-{next}"}}"#,
                args.sku,
                p = args.prefix
            );
            write!(
                conn.out,
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                t.path,
                t.host,
                body.len()
            )?;
            conn.written = 0;
            conn.scheduled = Some(due(next));
            next += 1;
            in_flight += 1;
            if let Err(e) = conn.flush() {
                fail(&mut poll, &t, conn, c, &e)?;
                errors += 1;
                in_flight -= 1;
                free.push_back(c);
            }
        }
        if (next == total && in_flight == 0) || now >= deadline {
            break;
        }
        let timeout = if next < total && !free.is_empty() {
            let at = due(next);
            // epoll waits in whole milliseconds: sleep only to a millisecond before.
            Some(
                at.saturating_duration_since(now)
                    .saturating_sub(Duration::from_millis(2)),
            )
        } else {
            Some(deadline.saturating_duration_since(now))
        };
        poll.poll(&mut events, timeout)?;
        let now = Instant::now();
        for ev in &events {
            let c = ev.token().0;
            let conn = &mut conns[c];
            let Some(scheduled) = conn.scheduled else {
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
            match done {
                Ok(None) => continue,
                Ok(Some(status)) => {
                    *statuses.entry(status).or_default() += 1;
                    let us = now.saturating_duration_since(scheduled).as_micros();
                    let us = u32::try_from(us).unwrap_or(u32::MAX);
                    latencies_us.push(us);
                    if args.window_ms.is_some() {
                        let at = scheduled.saturating_duration_since(start).as_micros() as u64;
                        timeline.push((at, us));
                    }
                    last_answer = now;
                }
                Err(e) => {
                    fail(&mut poll, &t, conn, c, &e)?;
                    errors += 1;
                }
            }
            conn.scheduled = None;
            in_flight -= 1;
            free.push_back(c);
        }
    }
    // Answers that did not come in time, and requests never sent.
    errors += in_flight as u64 + (total - next);
    let answered = latencies_us.len() as u64;
    let elapsed = last_answer
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    latencies_us.sort_unstable();
    let pct = |q: f64| -> serde_json::Value {
        if latencies_us.is_empty() {
            return serde_json::Value::Null;
        }
        let i = ((latencies_us.len() as f64 * q).ceil() as usize).clamp(1, latencies_us.len()) - 1;
        serde_json::json!(f64::from(latencies_us[i]) / 1000.0)
    };
    let out = serde_json::json!({
        "startUnixMs": start_unix_ms,
        "askedRate": args.rate,
        "durationS": args.duration_s,
        "connections": args.connections,
        "scheduled": total,
        "sent": next,
        "answered": answered,
        "errors": errors,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "answeredPerS": answered as f64 / elapsed,
        "latencyMs": {
            "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p99.9": pct(0.999),
            "max": pct(1.0),
        },
    });
    let mut out = out;
    if let Some(w) = args.window_ms {
        out["windows"] = windows(timeline, w * 1000);
    }
    println!("{out}");
    Ok(())
}

/// Per window of `width_us` by scheduled time: [start ms, answered, p50, p99, max] (ms).
fn windows(mut timeline: Vec<(u64, u32)>, width_us: u64) -> serde_json::Value {
    timeline.sort_unstable();
    let mut out = Vec::new();
    for chunk in timeline.chunk_by(|a, b| a.0 / width_us == b.0 / width_us) {
        let mut l: Vec<u32> = chunk.iter().map(|e| e.1).collect();
        l.sort_unstable();
        let at = |q: f64| {
            f64::from(l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1]) / 1000.0
        };
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

/// A connection that failed: reported once, replaced by a new one.
fn fail(
    poll: &mut Poll,
    t: &Target,
    conn: &mut Conn,
    c: usize,
    e: &io::Error,
) -> anyhow::Result<()> {
    eprintln!("openloop: connection {c}: {e}; reconnecting");
    let _ = poll.registry().deregister(&mut conn.stream);
    conn.stream = connect(poll, t.addr, c)?;
    conn.input.clear();
    conn.scheduled = None;
    Ok(())
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
}
