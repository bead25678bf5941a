//! The proxy's only side effects: the nat rules through `iptables-restore`, the jumps
//! into its chains, and the hosts file rewritten in place.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::ProxyError;
use super::rules::Chains;

/// An iptables call that takes longer than this is stuck on the xtables lock.
const IPTABLES_TIMEOUT_MS: u64 = 10_000;

async fn run(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ProxyError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let work = async {
        let mut child = cmd
            .spawn()
            .map_err(|source| ProxyError::Spawn { program, source })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|source| ProxyError::Spawn { program, source })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ProxyError::Spawn { program, source })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ProxyError::Failed {
                program,
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    };
    tokio::time::timeout(Duration::from_millis(IPTABLES_TIMEOUT_MS), work)
        .await
        .map_err(|_| ProxyError::Timeout {
            program,
            timeout_ms: IPTABLES_TIMEOUT_MS,
        })?
}

/// Chain names in the nat table now.
pub async fn nat_chains() -> Result<Vec<String>, ProxyError> {
    let save = run("iptables-save", &["-t", "nat"], None).await?;
    Ok(super::rules::parse_chains(&save))
}

pub async fn restore(rules: &str) -> Result<(), ProxyError> {
    run("iptables-restore", &["-w", "--noflush"], Some(rules))
        .await
        .map(drop)
}

/// Insert `rule` at the top of `chain` unless it is there already.
async fn ensure_jump(chain: &str, rule: &[&str]) -> Result<(), ProxyError> {
    let mut check = vec!["-w", "-t", "nat", "-C", chain];
    check.extend_from_slice(rule);
    if run("iptables", &check, None).await.is_ok() {
        return Ok(());
    }
    let mut insert = vec!["-w", "-t", "nat", "-I", chain];
    insert.extend_from_slice(rule);
    run("iptables", &insert, None).await.map(drop)
}

/// The jumps from the built-in chains into ours. Only traffic to the cluster's own
/// service CIDR enters the service chain, so nothing else on the machine is touched.
pub async fn ensure_jumps(chains: &Chains, service_cidr: &str) -> Result<(), ProxyError> {
    let services = chains.services();
    for hook in ["PREROUTING", "OUTPUT"] {
        ensure_jump(hook, &["-d", service_cidr, "-j", &services]).await?;
    }
    ensure_jump("POSTROUTING", &["-j", &chains.postrouting()]).await
}

pub async fn enable_forwarding() -> Result<(), ProxyError> {
    run("sysctl", &["-qw", "net.ipv4.ip_forward=1"], None)
        .await
        .map(drop)
}

/// Rewrites the file in place (same inode): pods see it through a read-only bind
/// mount, which a rename would leave pointing at the old file. Writing before
/// truncating means a reader never sees an empty file, at worst a stale tail.
pub fn write_in_place(path: &Path, content: &str) -> Result<(), ProxyError> {
    let err = |source| ProxyError::Hosts {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.set_len(content.len() as u64).map_err(err)?;
    f.flush().map_err(err)
}
