//! The suite's Kubernetes API stand-in as a program, to try the operator (or kubectl) on a
//! machine without a cluster: `kandle-apiserver --kubeconfig /tmp/kubeconfig`, then
//! `KUBECONFIG=/tmp/kubeconfig kubectl get nodes`. A test fixture: no authentication, state
//! in memory only (see the `apiserver` module for what it does not emulate).

use clap::Parser;
use kandle_e2e::apiserver::ApiServer;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "An in-memory Kubernetes API server stand-in for tests")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let server = ApiServer::start(cli.listen).await?;
    if let Some(path) = &cli.kubeconfig {
        std::fs::write(path, server.kubeconfig())?;
    }
    println!("serving the Kubernetes API stand-in at {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
