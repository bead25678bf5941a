//! Startup, readiness and liveness probes against the pod's address: HTTP GET,
//! TCP connect, exec (through `nsenter` into the container's namespaces); gRPC is
//! approximated by a TCP connect. Thresholds and periods as the kubelet reads them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::PodShared;

/// Enough of a response to read the status line.
const RESPONSE_HEAD_BYTES_MAX: usize = 1024;

fn port_of(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; RESPONSE_HEAD_BYTES_MAX];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 || buf[..n + r].contains(&b'\n') {
            n += r;
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP response {:?}", head.lines().next().unwrap_or("")))
}

/// One probe attempt; Err carries why it failed.
pub async fn once(p: &Probe, c: &Container, ip: Ipv4Addr, pid: i32) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(h) = &p.http_get {
            let port = port_of(c, &h.port).ok_or("unknown probe port")?;
            let host = h.host.clone().unwrap_or_else(|| ip.to_string());
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = h
                .http_headers
                .iter()
                .flatten()
                .map(|hh| (hh.name.clone(), hh.value.clone()))
                .collect();
            let code = http_get(&host, port, &path, &headers).await?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        } else if let Some(t) = &p.tcp_socket {
            let port = port_of(c, &t.port).ok_or("unknown probe port")?;
            let host = t.host.clone().unwrap_or_else(|| ip.to_string());
            tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if let Some(g) = &p.grpc {
            tokio::net::TcpStream::connect((ip, g.port as u16))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if let Some(e) = &p.exec {
            let cmd = e.command.clone().unwrap_or_default();
            let out = tokio::process::Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-n", "-m", "-u", "--"])
                .args(&cmd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| e.to_string())?;
            if out.success() {
                Ok(())
            } else {
                Err(format!("exec probe exited {out}"))
            }
        } else {
            Ok(())
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {}s", timeout.as_secs())))
}

fn period(p: &Probe) -> Duration {
    Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
}

fn initial_delay(p: &Probe) -> Duration {
    Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
}

/// Counts consecutive results against the probe's thresholds.
#[derive(Debug, Default)]
pub struct Tally {
    successes: i32,
    failures: i32,
}

impl Tally {
    /// Some(true) once successThreshold is reached, Some(false) at failureThreshold.
    pub fn record(&mut self, p: &Probe, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= p.success_threshold.unwrap_or(1).max(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= p.failure_threshold.unwrap_or(3).max(1)).then_some(false)
        }
    }
}

/// Probes one running container until aborted. Sets `started`/`ready` in the pod
/// runtime; asks for a restart through `kill` when liveness or startup fails.
// One call site (the container supervisor), which owns all of these.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: Arc<super::Ctx>,
    pod: Arc<k8s_openapi::api::core::v1::Pod>,
    c: Container,
    ip: Ipv4Addr,
    pid: i32,
    shared: Arc<PodShared>,
    (index, is_init): (usize, bool),
    kill: mpsc::Sender<String>,
) {
    let set = |f: &dyn Fn(&mut super::runtime::CStatus)| {
        shared.update(|rt| {
            let list = if is_init {
                &mut rt.init
            } else {
                &mut rt.containers
            };
            if let Some(s) = list.get_mut(index) {
                f(s);
            }
        })
    };
    let started_at = tokio::time::Instant::now();
    if let Some(p) = &c.startup_probe {
        tokio::time::sleep(initial_delay(p)).await;
        let mut t = Tally::default();
        loop {
            let r = once(p, &c, ip, pid).await;
            match t.record(p, r.is_ok()) {
                Some(true) => break,
                Some(false) => {
                    let _ = kill
                        .send(format!(
                            "startup probe failed: {}",
                            r.err().unwrap_or_default()
                        ))
                        .await;
                    return;
                }
                None => {}
            }
            tokio::time::sleep(period(p)).await;
        }
        set(&|s| s.started = true);
        if c.readiness_probe.is_none() {
            set(&|s| s.ready = true);
        }
    }
    let readiness = async {
        let Some(p) = &c.readiness_probe else { return };
        tokio::time::sleep_until(started_at + initial_delay(p)).await;
        let mut t = Tally::default();
        loop {
            let r = once(p, &c, ip, pid).await;
            if let Err(e) = &r {
                ctx.event(
                    &pod,
                    true,
                    "Unhealthy",
                    format!("Readiness probe failed: {e}"),
                );
            }
            if let Some(ready) = t.record(p, r.is_ok()) {
                set(&|s| s.ready = ready);
            }
            tokio::time::sleep(period(p)).await;
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<()>().await;
        };
        tokio::time::sleep_until(started_at + initial_delay(p)).await;
        let mut t = Tally::default();
        loop {
            let r = once(p, &c, ip, pid).await;
            if let Err(e) = &r {
                ctx.event(
                    &pod,
                    true,
                    "Unhealthy",
                    format!("Liveness probe failed: {e}"),
                );
            }
            if t.record(p, r.is_ok()) == Some(false) {
                let _ = kill
                    .send(format!(
                        "liveness probe failed: {}",
                        r.err().unwrap_or_default()
                    ))
                    .await;
                return;
            }
            tokio::time::sleep(period(p)).await;
        }
    };
    tokio::join!(readiness, liveness);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(yaml: &str) -> Probe {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let p = probe("{httpGet: {port: 80}, failureThreshold: 2, successThreshold: 2}");
        let mut t = Tally::default();
        assert_eq!(t.record(&p, false), None);
        assert_eq!(
            t.record(&p, true),
            None,
            "a success resets the failure count"
        );
        assert_eq!(t.record(&p, false), None);
        assert_eq!(t.record(&p, false), Some(false));
        assert_eq!(t.record(&p, true), None);
        assert_eq!(t.record(&p, true), Some(true));
    }

    #[tokio::test]
    async fn http_probe_reads_status_codes_from_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let c: Container =
            serde_saphyr::from_str("{name: web, ports: [{name: http, containerPort: 1}]}").unwrap();
        let p = probe(&format!("{{httpGet: {{port: {port}, path: /readyz}}}}"));
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(once(&p, &c, ip, 0).await, Ok(()));
        assert!(once(&p, &c, ip, 0).await.unwrap_err().contains("503"));
        server.await.unwrap();
        // Nothing listens any more: the probe fails instead of hanging.
        assert!(once(&p, &c, ip, 0).await.is_err());
        let named = probe("{tcpSocket: {port: http}}");
        assert_eq!(port_of(&c, &named.tcp_socket.unwrap().port), Some(1));
    }
}
