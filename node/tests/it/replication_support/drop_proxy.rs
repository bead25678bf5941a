//! A TCP proxy between a secondary and Redis that drops a share of the pub/sub
//! `message` frames Redis pushes, and forwards everything else byte for byte. It
//! parses RESP just enough to find frame boundaries, so what it forwards stays valid.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counts of what went through.
#[derive(Default)]
pub struct Counts {
    pub dropped: AtomicU64,
    pub forwarded: AtomicU64,
    /// The share dropped, in millionths (changeable while running).
    pub drop_ppm: AtomicU64,
}

pub struct DropProxy {
    pub port: u16,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl DropProxy {
    /// Listens on a free port; every connection goes to `127.0.0.1:upstream_port`.
    /// `drop_share` of the `message` frames (0.0..=1.0) never reach the client.
    pub async fn start(upstream_port: u16, drop_share: f64) -> DropProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        counts.drop_ppm.store((drop_share * 1e6) as u64, Relaxed);
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    if let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        pipe(client, up, c).await;
                    }
                });
            }
        });
        DropProxy { port, counts, task }
    }

    /// Changes the share of `message` frames dropped from now on.
    pub fn set_drop_share(&self, share: f64) {
        self.counts.drop_ppm.store((share * 1e6) as u64, Relaxed);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for DropProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, up: TcpStream, counts: Arc<Counts>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_redis = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
    });
    let mut buf = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match ur.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut off = 0;
        while let Some(len) = frame_len(&buf[off..]) {
            let frame = &buf[off..off + len];
            let share = counts.drop_ppm.load(Relaxed) as f64 / 1e6;
            if is_message(frame) && rand::rng().random_bool(share.clamp(0.0, 1.0)) {
                counts.dropped.fetch_add(1, Relaxed);
            } else {
                if is_message(frame) {
                    counts.forwarded.fetch_add(1, Relaxed);
                }
                out.extend_from_slice(frame);
            }
            off += len;
        }
        buf.drain(..off);
        if !out.is_empty() && cw.write_all(&out).await.is_err() {
            break;
        }
    }
    to_redis.abort();
}

fn is_message(frame: &[u8]) -> bool {
    frame.starts_with(b"*3\r\n$7\r\nmessage\r\n") || frame.starts_with(b">3\r\n$7\r\nmessage\r\n")
}

/// Length of the first complete RESP2/RESP3 frame in `b`, or None if it is not all there.
fn frame_len(b: &[u8]) -> Option<usize> {
    let line_end = b.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&b[1..line_end]).ok()?;
    let after = line_end + 2;
    match b.first()? {
        b'$' | b'!' | b'=' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let n: i64 = head.parse().ok()?;
            let items = if matches!(b[0], b'%' | b'|') {
                2 * n.max(0)
            } else {
                n.max(0)
            };
            let mut off = after;
            for _ in 0..items {
                off += frame_len(&b[off..])?;
            }
            Some(off)
        }
        _ => Some(after),
    }
}

#[test]
fn frames_are_found_whole() {
    let msg = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n";
    assert_eq!(frame_len(msg), Some(msg.len()));
    assert_eq!(frame_len(&msg[..msg.len() - 1]), None);
    assert!(is_message(msg));
    assert_eq!(frame_len(b"+OK\r\n*1"), Some(5));
}
