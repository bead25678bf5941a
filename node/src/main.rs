//! The `stock-node` binary: `serve` a sale over HTTP, or read a WAL directory offline
//! (`wal verify | dump | export`).

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stock_node::config::{LogFormat, ServeArgs};
use stock_node::http::noop::serve_noop;
use stock_node::serve::{huge_pages, serve};
use stock_node::walcli::{self, WalCommand};

/// glibc malloc took ~9% of the node's CPU under purchase load (many small, short-lived
/// buffers across threads); mimalloc is built for exactly that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stock-node",
    version,
    about = "Sells a flash sale's items over HTTP, durably, without overselling."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a sale: public API, admin API, health and metrics on one port.
    Serve(Box<ServeArgs>),
    /// Read, verify and export a WAL directory offline.
    #[command(subcommand)]
    Wal(WalCommand),
    /// The benchmark's HTTP ceiling: a purchase endpoint that does nothing.
    #[command(hide = true)]
    BenchNoop {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            huge_pages(args.allow_thp);
            runtime()?
                .block_on(serve(*args, shutdown_signal()))
                .context("stock-node serve")
        }
        Command::Wal(cmd) => walcli::run(cmd),
        Command::BenchNoop { listen } => {
            init_logs(LogFormat::Human);
            huge_pages(false);
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                tracing::info!(addr = %listener.local_addr()?, "no-op server listening");
                serve_noop(listener, shutdown_signal())
                    .await
                    .context("no-op server")
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Worker threads default to the CPUs this process may run on (taskset is honoured).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOCK_NODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on the first SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}
