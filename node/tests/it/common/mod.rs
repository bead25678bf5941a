//! Test harness: runs the real `stock-node` binary on a port the kernel picks and a
//! data directory of the test's, and kills it when the test ends, passed or not.
#![allow(dead_code)] // each test file uses its own part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a node may take to open its WAL and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running `stock-node serve`; restartable on the same data dir and address; killed
/// (SIGKILL, after a SIGCONT in case it was paused) when dropped.
pub struct Node {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

/// A sale file with the given `(sku, stock, per-customer limit)` items.
pub fn sale_file(dir: &Path, items: &[(&str, u64, u32)]) -> PathBuf {
    let items: Vec<_> = items
        .iter()
        .map(|(sku, stock, limit)| serde_json::json!({"sku": sku, "stock": stock, "perCustomerLimit": limit}))
        .collect();
    let sale =
        serde_json::json!({"name": "test-sale", "items": items, "reservationTtlMs": 600_000});
    let path = dir.join("sale.json");
    std::fs::write(&path, sale.to_string()).unwrap();
    path
}

/// The node binary the tests run: this build's, or `STOCK_NODE_BIN` (to show that a test
/// fails against an older build, before the fix it checks).
pub fn node_bin() -> String {
    std::env::var("STOCK_NODE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stock-node").into())
}

impl Node {
    /// Starts `stock-node serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut node = Node {
            child: None,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn("127.0.0.1:0");
        node
    }

    fn spawn(&mut self, listen: &str) {
        let mut child = Command::new(node_bin())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--admin-token", ADMIN_TOKEN])
            .args(&self.args)
            .env(
                "STOCK_NODE_LOG",
                std::env::var("STOCK_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("NO_COLOR")
            .env_remove("STOCK_NODE_ALLOW_THP")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stock-node");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let name = self
            .data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Keeps reading the node's log for its whole life, so a full pipe never blocks it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening")
                    && let Some(addr) = listen_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                if std::env::var_os("STOCK_NODE_TEST_LOG").is_some() {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let status = self.child.as_mut().unwrap().try_wait().ok().flatten();
                panic!("stock-node did not listen within {START_TIMEOUT:?} (exit: {status:?})");
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9`: no shutdown, no final sync.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9`, then starts again on the same data dir and the same address.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    /// Sends a signal by name (`-STOP`, `-CONT`, …).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM, then waits for the exit (SIGKILL if it takes too long).
    pub fn stop(mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("stock-node did not exit within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill9();
    }
}

/// The `addr=HOST:PORT` field of the node's "listening" log line (human or JSON).
fn listen_addr(line: &str) -> Option<String> {
    let rest = line
        .split("addr=")
        .nth(1)
        .or_else(|| line.split("\"addr\":\"").nth(1))?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

/// An HTTP client with a bounded time per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A node's `/metrics` text (`url` is the node's `/metrics`).
pub async fn metrics_text(http: &reqwest::Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// A counter or gauge in `/metrics` text (`name` may carry its labels:
/// `flashsale_purchases_total{code="ok"}`); `None` when there is no such series.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A purchase body.
pub fn purchase(sku: &str, quantity: u32, customer: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"sku": sku, "quantity": quantity, "customer": customer, "idempotencyKey": key})
}
