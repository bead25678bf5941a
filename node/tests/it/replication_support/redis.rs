//! A real `redis-server` per test: its own free port on 127.0.0.1 and a temp dir,
//! killed when dropped (passed or failed), and restartable on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to answer PING after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// A port the kernel just handed out (free unless someone grabs it in between).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        // The port is free when the kernel hands it out, but another test may take it
        // before redis-server binds it: the server then exits at once, and another
        // port is tried.
        let mut attempt = 1;
        loop {
            let mut r = Redis {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
            };
            match r.try_spawn() {
                Ok(()) => return r,
                Err(why) if attempt < 5 => {
                    eprintln!(
                        "redis-server on port {}: {why}; trying another port",
                        r.port
                    );
                    attempt += 1;
                }
                Err(why) => panic!("redis-server on port {}: {why}", r.port),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("redis-server on port {}: {why}", self.port);
        }
    }

    /// Starts redis-server and waits for its PONG; `Err` says why it did not answer
    /// (with its log), and leaves no server running.
    fn try_spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("not started ({e}); scripts/install-deps.sh installs it"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                return Err(format!("it exited ({status}); its log: {}", self.log()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "no answer to PING within {START_TIMEOUT:?}; its log: {}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The PONG may be another test's server on this port, with ours exited or
        // exiting: the server that answered must be the one started here.
        let pid = self.child.as_ref().map(|c| c.id());
        let info = self.command(&["INFO", "server"]).unwrap_or_default();
        if pid.is_none_or(|pid| !info.contains(&format!("process_id:{pid}\r\n"))) {
            self.kill();
            return Err(format!(
                "another server answers on this port; its log: {}",
                self.log()
            ));
        }
        Ok(())
    }

    /// `kill -9` the server (subscribers and publishers lose their connections).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: pub/sub keeps nothing).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// PUBLISH with a binary payload; returns the number of subscribers that got it.
    pub fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        publish(self.port, channel, payload)
    }

    /// The server's log so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Sends one command, returns the first reply chunk (None if unreachable).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PUBLISH with a binary payload to the Redis on `port` (from any thread); returns the
/// number of subscribers that got it.
pub fn publish(port: u16, channel: &str, payload: &[u8]) -> i64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(payload);
    req.extend_from_slice(b"\r\n");
    s.write_all(&req).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    reply.trim_start_matches(':').trim().parse().unwrap_or(-1)
}
