//! The pod runner: the local cluster's kubelet stand-in (test/dev only). `run`
//! registers a Node and runs the pods bound to it as local processes in their own
//! network namespaces; `shim` is the per-container exec helper; `fault` and
//! `cleanup` act on a runner's state dir from outside.

mod cleanup;
mod config;
mod expand;
mod fault;
mod images;
mod ipam;
mod logs;
mod net;
mod node;
mod pod;
mod provisioner;
mod proxy;
mod run;
mod shim;
mod state;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pod-runner",
    about = "Kubelet stand-in of the flashsale local cluster (test/dev only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register the node and run the pods bound to it.
    Run(RunArgs),
    /// (internal) Enter a pod's namespaces, mount its volumes, exec the container.
    Shim {
        #[arg(long)]
        spec: PathBuf,
    },
    /// Inject a fault into a running pod: kill|freeze|thaw|cut|restore.
    Fault {
        #[arg(long)]
        state_dir: PathBuf,
        fault: fault::Fault,
        /// <namespace>/<pod>
        target: String,
        /// Only this container (default: all of the pod's containers).
        #[arg(long)]
        container: Option<String>,
    },
    /// Remove every process, namespace, link and mountpoint a runner of this cluster made.
    Cleanup {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        cluster_index: u8,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long)]
    node_name: String,
    #[arg(long)]
    state_dir: PathBuf,
    /// Image → binary map (testbed/images.yaml).
    #[arg(long)]
    images: PathBuf,
    /// Bridge made by cluster.sh, `fsbr<N>`.
    #[arg(long)]
    bridge: String,
    #[arg(long)]
    pod_cidr: String,
    /// Host side of the bridge: pods' default route, the node's InternalIP.
    #[arg(long)]
    gateway: Ipv4Addr,
    #[arg(long)]
    service_cidr: String,
    /// The API server as pods reach it, e.g. https://10.213.1.1:16443.
    #[arg(long)]
    api_server: String,
    #[arg(long)]
    ca_file: PathBuf,
    /// Port of the kubelet log endpoint (HTTPS on the gateway address).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// CPUs the Node advertises to the scheduler. Nothing is enforced (pods are
    /// plain processes), so the default is generous enough for a test sale's
    /// requests; 0 = this machine's core count.
    #[arg(long, default_value_t = 16)]
    node_cpus: u32,
    /// Defaults to N of `--bridge fsbr<N>`.
    #[arg(long)]
    cluster_index: Option<u8>,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        // Before any thread exists: setns/unshare need a single-threaded process.
        Cmd::Shim { spec } => {
            let e = shim::run(&spec).unwrap_err();
            eprintln!("pod-runner shim: {e}");
            std::process::exit(127);
        }
        Cmd::Fault {
            state_dir,
            fault,
            target,
            container,
        } => {
            let st = state::StateDir::new(state_dir);
            let done = fault::apply(&st, fault, &target, container.as_deref())
                .with_context(|| format!("{fault:?} {target}"))?;
            println!("{fault:?}: {}", done.join(", "));
            Ok(())
        }
        Cmd::Cleanup {
            state_dir,
            cluster_index,
        } => {
            let st = state::StateDir::new(state_dir);
            for line in cleanup::run(&st, cluster_index) {
                println!("removed {line}");
            }
            proxy_cleanup(cluster_index);
            Ok(())
        }
        Cmd::Run(args) => {
            init_tracing();
            let rt = tokio::runtime::Runtime::new().context("starting tokio")?;
            rt.block_on(run::run(args))
        }
    }
}

/// The service proxy's rules go with the cluster (its module owns them).
fn proxy_cleanup(cluster_index: u8) {
    for line in proxy::cleanup::run(cluster_index) {
        println!("removed {line}");
    }
}
