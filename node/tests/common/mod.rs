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

/// A running `stock-node serve`; killed (SIGKILL) when dropped.
pub struct Node {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
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

impl Node {
    /// Starts `stock-node serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra…>`.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stock-node"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--admin-token", ADMIN_TOKEN])
            .args(extra)
            .env("STOCK_NODE_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stock-node");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading the node's log for its whole life, so a full pipe never blocks it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .contains("listening")
                    .then(|| listen_addr(&line))
                    .flatten()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
                if std::env::var_os("STOCK_NODE_TEST_LOG").is_some() {
                    eprintln!("[node] {line}");
                }
            }
        });
        let mut node = Node {
            child: Some(child),
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => node.addr = addr,
            Err(_) => {
                let status = node.child.as_mut().unwrap().try_wait().ok().flatten();
                panic!("stock-node did not listen within {START_TIMEOUT:?} (exit: {status:?})");
            }
        }
        node
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// `kill -9`: no shutdown, no final sync.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

/// A purchase body.
pub fn purchase(sku: &str, quantity: u32, customer: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"sku": sku, "quantity": quantity, "customer": customer, "idempotencyKey": key})
}
