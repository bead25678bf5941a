//! A real `stock-node serve` process with replication flags: started on a port the
//! kernel picks, restartable on the same data dir, killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const ADMIN_TOKEN: &str = "replication-test-token";
pub const CHANNEL: &str = "flashsale:test-sale:wal";

pub struct Node {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    redis_url: String,
    args: Vec<String>,
}

/// A sale file named `test-sale` with `(sku, stock, per-customer limit)` items.
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
    /// `stock-node serve --listen 127.0.0.1:0 --data-dir D --redis-url R --redis-channel C <args>`.
    pub fn start(data_dir: &Path, redis_url: &str, args: &[&str]) -> Node {
        let mut n = Node {
            child: None,
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            redis_url: redis_url.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        n.spawn("127.0.0.1:0");
        n
    }

    fn spawn(&mut self, listen: &str) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stock-node"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--admin-token",
                ADMIN_TOKEN,
                "--redis-url",
                &self.redis_url,
                "--redis-channel",
                CHANNEL,
            ])
            .args(&self.args)
            .env(
                "STOCK_NODE_LOG",
                std::env::var("STOCK_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
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
        // Keeps draining the log for the node's whole life, so a full pipe never blocks it.
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
                let st = self.child.as_mut().unwrap().try_wait().ok().flatten();
                panic!("stock-node did not listen within {START_TIMEOUT:?} (exit: {st:?})");
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

    /// Starts again on the same data dir and the same address.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    /// SIGSTOP / SIGCONT.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill9();
    }
}

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
