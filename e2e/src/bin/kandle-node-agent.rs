//! The suite's node agent as a program, for any API server (a kind cluster, the stand-in):
//! `kandle-node-agent --image kandle-server=target/debug/kandle-server` registers a Node and
//! runs the pods scheduled to it as local processes. Uses `KUBECONFIG` (or the default
//! kubeconfig) like kubectl.

use clap::Parser;
use kandle_e2e::agent::{Agent, AgentConfig};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Runs the pods of one Kubernetes node as local processes")]
struct Cli {
    /// Name of the Node to register.
    #[arg(long, default_value = "kandle-node-agent")]
    node_name: String,
    /// PATTERN=BINARY: containers whose image contains PATTERN run BINARY (repeatable).
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// Pod directories and container logs.
    #[arg(long, default_value = "/tmp/kandle-node-agent")]
    work_dir: PathBuf,
    /// PersistentVolumeClaim CLAIM is the directory PVC_ROOT/CLAIM.
    #[arg(long)]
    pvc_root: Option<PathBuf>,
    /// The first pod address (loopback); later pods count up.
    #[arg(long, default_value = "127.0.0.2")]
    first_ip: Ipv4Addr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let cli = Cli::parse();
    let images = cli.images.iter().map(|m| {
        let (pattern, binary) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--image {m:?}: expected PATTERN=BINARY"))?;
        Ok((pattern.to_string(), std::fs::canonicalize(binary).map_err(|e| anyhow::anyhow!("{binary}: {e}"))?))
    }).collect::<anyhow::Result<Vec<_>>>()?;
    let client = kube::Client::try_default().await?;
    let config = AgentConfig { node_name: cli.node_name, images, work_dir: cli.work_dir, pvc_root: cli.pvc_root, first_ip: cli.first_ip };
    let agent = Agent::start(client, config).await?;
    tracing::info!(node = %agent.config.node_name, "node agent running; Ctrl-C stops it and its pods' processes");
    tokio::signal::ctrl_c().await?;
    agent.shutdown().await;
    Ok(())
}
