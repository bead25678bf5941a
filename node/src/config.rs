//! How `stock-node serve` is configured: flags, `STOCK_NODE_*` environment variables,
//! and an optional sale file (YAML or JSON holding a [`SaleConfig`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use flashsale_core::admin::Role;
use flashsale_core::{Durability, SaleConfig};

/// Why the node's configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("admin token file {path} is empty")]
    EmptyToken { path: PathBuf },
}

/// The part a node starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StartRole {
    /// A lone node that sells at once (the default for running one node by hand).
    Primary,
    /// Waits for the operator's `PUT /admin/v1/role` and `PUT /admin/v1/config`.
    Standby,
}

impl From<StartRole> for Role {
    fn from(r: StartRole) -> Role {
        match r {
            StartRole::Primary => Role::Primary,
            StartRole::Standby => Role::Standby,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// How purchases become durable (overrides the sale file's `durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// One `fdatasync` per group-committed batch before any answer.
    Fsync,
    /// No sync before the answer: benchmarks only.
    NoSync,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::NoSync => Durability::NoSync,
        }
    }
}

/// Whether the node needs a selling lease (`crate::lease`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LeaseArg {
    Off,
    Required,
}

impl From<LeaseArg> for flashsale_core::admin::LeaseMode {
    fn from(l: LeaseArg) -> Self {
        match l {
            LeaseArg::Off => Self::Off,
            LeaseArg::Required => Self::Required,
        }
    }
}

/// `stock-node serve`: every flag has a `STOCK_NODE_*` environment twin.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address for the API, the admin API and the metrics (one port).
    #[arg(long, env = "STOCK_NODE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory that holds the WAL and snapshots (created if missing).
    #[arg(long, env = "STOCK_NODE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `primary` sells at once; `standby` waits for the operator's role and config.
    #[arg(long, env = "STOCK_NODE_ROLE", value_enum, default_value = "primary")]
    pub role: StartRole,
    /// Sale file (YAML or JSON, a SaleConfig) applied at start; with `--role primary`
    /// only (only the primary logs the sale's config).
    #[arg(long, env = "STOCK_NODE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Durability of purchases; default: the sale's own (fsync unless it says noSync).
    #[arg(long, env = "STOCK_NODE_DURABILITY", value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Bearer token of the admin API (without one, every admin call is refused).
    #[arg(long, env = "STOCK_NODE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (a mounted Secret); trailing whitespace is ignored.
    #[arg(
        long,
        env = "STOCK_NODE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Admission rate of `/v1` requests per second (0 = unlimited).
    #[arg(long, env = "STOCK_NODE_ADMISSION_RATE_PER_S", default_value_t = 0)]
    pub admission_rate_per_s: u32,
    /// Token bucket size: requests admitted at once above the rate (0 = one second's worth).
    #[arg(long, env = "STOCK_NODE_ADMISSION_BURST", default_value_t = 0)]
    pub admission_burst: u32,
    /// New purchases stop (503) once the process's resident memory reaches this many
    /// bytes; confirms, cancels and reads go on. Absent: 90% of the memory limit of its
    /// cgroup (the pod's limit), none without one. 0: no budget.
    #[arg(long, env = "STOCK_NODE_MEMORY_MAX_BYTES")]
    pub memory_max_bytes: Option<u64>,
    /// Purchases, confirms and cancels waiting for the engine at once; more answer 503.
    #[arg(long, env = "STOCK_NODE_ENGINE_INFLIGHT_MAX", default_value_t = 4096)]
    pub engine_inflight_max: usize,
    /// A secondary forwards the purchases, confirms and cancels its copy cannot answer
    /// to its primary over this many connections, one batch on each at a time
    /// (`crate::forward`); 0: no forwarding, it answers them 503 `not_primary`.
    #[arg(long, env = "STOCK_NODE_FORWARD_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub forward_connections: u64,
    /// Operations in one forwarded batch, at most.
    #[arg(long, env = "STOCK_NODE_FORWARD_BATCH_MAX", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub forward_batch_max: u64,
    /// How long a forwarded batch that is not full waits for more operations, in µs (0:
    /// not at all — under load, operations pile up while every connection is busy, so
    /// batches fill without a wait; Tokio's timers tick in milliseconds).
    #[arg(long, env = "STOCK_NODE_FORWARD_BATCH_WAIT_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub forward_batch_wait_us: u64,
    /// Operations waiting to be forwarded, at most; past it 503 `unavailable` at once.
    #[arg(long, env = "STOCK_NODE_FORWARD_QUEUE_MAX", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub forward_queue_max: u64,
    /// From a forwarded operation's arrival to the primary's answer, at most; past it
    /// 503 `unavailable` (retry with the same key).
    #[arg(long, env = "STOCK_NODE_FORWARD_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub forward_timeout_ms: u64,
    /// Records between snapshots, at least, and at least half as many as the orders
    /// held (bounds replay time; older WAL segments are then removed, and a secondary
    /// that needs them bootstraps from the snapshot).
    #[arg(
        long,
        env = "STOCK_NODE_SNAPSHOT_EVERY_RECORDS",
        default_value_t = 200_000
    )]
    pub snapshot_every_records: u64,
    /// Group commit's pacing, in µs: after a primary's sync of more than one client's
    /// command, the next batch is taken no sooner than this after that sync started,
    /// so a crowd shares fewer syncs (each costs the node's core about the same
    /// whatever it carries). A batch of one command is not followed by a wait; a
    /// secondary is not paced; with `no-sync` nothing is. 0: take the next at once.
    #[arg(long, env = "STOCK_NODE_GROUP_COMMIT_INTERVAL_US", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub group_commit_interval_us: u64,
    /// Let the kernel back the node's memory with transparent huge pages. Without this
    /// flag the node turns them off for its own process at start (Linux's
    /// `PR_SET_THP_DISABLE`, as Redis's `disable-thp` does): the first write to a fresh
    /// 2 MiB huge page zeroes all of it at once, on the thread that wrote — mostly the
    /// sequencer, as the orders and their index grow — and every purchase in its batch
    /// waits (2–7.5 ms a page on the benchmark's VM, about one a second at 15k
    /// purchases/s; see `serve::huge_pages`). The environment variable takes `true`,
    /// `yes`, `on`, `1` or `false`, `no`, `off`, `0`.
    #[arg(long, env = "STOCK_NODE_ALLOW_THP", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_thp: bool,
    /// A WAL segment past this size is closed and a new one started. Segments are
    /// preallocated at this size (zeros written and synced before records go in; the
    /// next one meanwhile), so the log takes at least twice this on disk.
    #[arg(long, env = "STOCK_NODE_SEGMENT_BYTES_MAX", default_value_t = 16 << 20)]
    pub segment_bytes_max: u64,
    /// Open client connections at once. At the limit, a new connection closes the one
    /// idle the longest (no request in progress); only when every connection is in a
    /// request does it wait in the kernel backlog.
    #[arg(long, env = "STOCK_NODE_CONNECTIONS_MAX", default_value_t = 4096)]
    pub connections_max: usize,
    /// A connection with no request in progress this long — before its first request,
    /// between requests, or still sending a request head — is closed; so is one whose
    /// answer the client has not read any of for this long.
    #[arg(long, env = "STOCK_NODE_IDLE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub idle_timeout_ms: u64,
    /// Largest request body accepted (413 above); at most 8 MiB
    /// (`http::json::JSON_BODY_BYTES_MAX`, the largest JSON body any route takes).
    #[arg(long, env = "STOCK_NODE_BODY_BYTES_MAX", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1..=crate::http::json::JSON_BODY_BYTES_MAX as u64))]
    pub body_bytes_max: u64,
    /// A request taking longer answers 503 `unavailable` (1 ms to an hour).
    #[arg(long, env = "STOCK_NODE_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish before the node exits.
    #[arg(long, env = "STOCK_NODE_SHUTDOWN_DRAIN_MS", default_value_t = 10_000)]
    pub shutdown_drain_ms: u64,
    /// `required`: acknowledge no write without the operator's selling lease (pods the
    /// operator runs); `off`: sell without one (a lone node).
    #[arg(long, env = "STOCK_NODE_LEASE", value_enum, default_value = "off")]
    pub lease: LeaseArg,
    /// Replication: `--redis-url`, `--redis-channel`, `--replication async|quorum`, … (see `replication::config`).
    #[command(flatten)]
    pub replication: crate::replication::ReplicationArgs,
    /// Log format.
    #[arg(
        long,
        env = "STOCK_NODE_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Forwarding's bounds, or `None` when it is off (`--forward-connections 0`).
    pub fn forward_limits(&self) -> Option<crate::forward::ForwardLimits> {
        (self.forward_connections > 0).then(|| crate::forward::ForwardLimits {
            batch_max: self.forward_batch_max as usize,
            batch_wait: std::time::Duration::from_micros(self.forward_batch_wait_us),
            queue_max: self.forward_queue_max as usize,
            inflight_max: self.forward_connections as usize,
            timeout: std::time::Duration::from_millis(self.forward_timeout_ms),
        })
    }

    /// The admin token, from the flag or the file; `None` disables the admin API.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(t) = &self.admin_token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(ConfigError::EmptyToken { path: path.clone() });
        }
        Ok(Some(token.to_string()))
    }
}

/// Reads a sale file: `.json` as JSON, anything else as YAML (a superset of JSON).
pub fn load_sale_config(path: &Path) -> Result<SaleConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let config: SaleConfig = if is_json {
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| field_error(path, e.path().to_string(), e.into_inner()))?
    } else {
        // serde-saphyr hands its deserializer to a closure: keep the field path aside.
        let mut at = String::from(".");
        serde_saphyr::with_deserializer_from_str(&text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                at = e.path().to_string();
                e.into_inner()
            })
        })
        .map_err(|e| field_error(path, at.clone(), e))?
    };
    config.check().map_err(|e| ConfigError::Field {
        path: path.to_path_buf(),
        field: e.field,
        reason: e.reason,
    })?;
    Ok(config)
}

fn field_error(path: &Path, field: String, e: impl std::fmt::Display) -> ConfigError {
    let reason = e.to_string();
    if field == "." {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        }
    } else {
        ConfigError::Field {
            path: path.to_path_buf(),
            field,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn yaml_and_json_sale_files_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let y = write(
            &dir,
            "sale.yaml",
            "name: spring\nitems:\n  - sku: tee\n    stock: 100\n    perCustomerLimit: 2\nreservationTtlMs: 60000\n",
        );
        let j = write(
            &dir,
            "sale.json",
            r#"{"name":"spring","items":[{"sku":"tee","stock":100,"perCustomerLimit":2}],"reservationTtlMs":60000}"#,
        );
        let a = load_sale_config(&y).unwrap();
        assert_eq!(a, load_sale_config(&j).unwrap());
        assert_eq!(a.items[0].per_customer_limit, 2);
        assert_eq!(a.durability, Durability::Fsync);
    }

    #[test]
    fn a_bad_sale_file_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "bad.yaml",
            "name: s\nitems:\n  - sku: tee\n    stock: lots\nreservationTtlMs: 1\n",
        );
        let e = load_sale_config(&p).unwrap_err().to_string();
        assert!(e.contains("items[0].stock"), "{e}");
        let p = write(
            &dir,
            "dup.json",
            r#"{"name":"s","items":[{"sku":"a","stock":1},{"sku":"a","stock":2}],"reservationTtlMs":1}"#,
        );
        let e = load_sale_config(&p).unwrap_err().to_string();
        assert!(e.contains("items[1].sku") && e.contains("twice"), "{e}");
        let p = write(
            &dir,
            "typo.yaml",
            "name: s\nitemz: []\nreservationTtlMs: 1\n",
        );
        let e = load_sale_config(&p).unwrap_err().to_string();
        assert!(e.contains("itemz"), "{e}");
    }

    #[test]
    fn flags_have_defaults_and_the_operator_contract_parses() {
        let c = Cli::try_parse_from(
            std::iter::once("x").chain(flashsale_core::admin::POD_SERVE_FLAGS.iter().copied()),
        )
        .unwrap();
        assert_eq!(c.serve.role, StartRole::Standby);
        assert_eq!(
            c.serve.lease,
            LeaseArg::Required,
            "the operator's pods need a lease"
        );
        assert_eq!(c.serve.log_format, LogFormat::Json);
        assert_eq!(c.serve.listen.port(), 8080);
        let lone = Cli::try_parse_from(["x", "--data-dir", "d"]).unwrap();
        assert_eq!(lone.serve.role, StartRole::Primary);
        assert_eq!(lone.serve.lease, LeaseArg::Off);
        assert!(lone.serve.durability.is_none());
        assert!(Cli::try_parse_from(["x", "--data-dir", "d", "--role", "boss"]).is_err());
        assert!(
            Cli::try_parse_from([
                "x",
                "--data-dir",
                "d",
                "--admin-token",
                "a",
                "--admin-token-file",
                "f"
            ])
            .is_err()
        );
    }

    #[test]
    fn a_request_timeout_out_of_range_is_refused_naming_the_flag() {
        for bad in ["0", "3600001", "18446744073709551615"] {
            let Err(e) = Cli::try_parse_from(["x", "--data-dir", "d", "--request-timeout-ms", bad])
            else {
                panic!("--request-timeout-ms {bad} was taken");
            };
            let e = e.to_string();
            assert!(e.contains("--request-timeout-ms") && e.contains(bad), "{e}");
        }
        let c = Cli::try_parse_from(["x", "--data-dir", "d", "--request-timeout-ms", "3600000"]);
        assert_eq!(c.ok().map(|c| c.serve.request_timeout_ms), Some(3_600_000));
    }

    #[test]
    fn the_token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "t", "s3cret\n");
        let empty = write(&dir, "e", " \n");
        let mut c = Cli::try_parse_from(["x", "--data-dir", "d"]).unwrap().serve;
        assert_eq!(c.admin_token().unwrap(), None);
        c.admin_token_file = Some(good);
        assert_eq!(c.admin_token().unwrap().as_deref(), Some("s3cret"));
        c.admin_token_file = Some(empty);
        assert!(matches!(
            c.admin_token(),
            Err(ConfigError::EmptyToken { .. })
        ));
    }
}
