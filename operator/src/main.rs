//! kandle-operator. `run` reconciles LLMDeployments in the cluster of the current kubeconfig
//! (or the in-cluster service account); `render` prints the objects an LLMDeployment turns
//! into (like `helm template`), without a cluster: `kandle-operator render -f llm.yaml`.

use clap::{Parser, Subcommand};
use kandle_operator::controller::build::{build, BuildConfig};
use kandle_operator::crd::LLMDeployment;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "kandle-operator", version, about = "Reconciles LLMDeployment resources into kandle-server pods")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run {
        /// Only watch this namespace (default: all).
        #[arg(long, env = "WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// kandle-server image for resources that do not name one.
        #[arg(long, env = "KANDLE_SERVER_IMAGE", default_value = kandle_operator::DEFAULT_SERVER_IMAGE)]
        server_image: String,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "PROBE_ADDR", default_value = "0.0.0.0:8080")]
        probe_addr: String,
        #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Reconcile only while holding a Lease, so several replicas can run (one active).
        #[arg(long, env = "LEADER_ELECT")]
        leader_elect: bool,
        /// Name of the Lease.
        #[arg(long, env = "LEADER_ELECTION_ID", default_value = "kandle-operator-leader")]
        leader_election_id: String,
        /// Namespace of the Lease (default: the operator pod's namespace).
        #[arg(long, env = "POD_NAMESPACE")]
        leader_election_namespace: Option<String>,
        /// Seconds a lease lasts without renewal: how long a crashed leader blocks failover.
        #[arg(long, default_value_t = 15)]
        leader_election_lease_duration: u64,
    },
    /// Print the Deployment, Service, ConfigMap and PodDisruptionBudget each LLMDeployment
    /// in a file would get (other documents in the file are skipped).
    Render {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Namespace for resources that do not set one.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// kandle-server image for resources that do not name one.
        #[arg(long, env = "KANDLE_SERVER_IMAGE", default_value = kandle_operator::DEFAULT_SERVER_IMAGE)]
        server_image: String,
    },
}

/// The namespace of the service account the operator runs as (in a pod), else `default`.
fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The lease holder's name: the pod name (`POD_NAME`, else the hostname, which is the pod
/// name in Kubernetes), plus the pid so two local processes never share one.
fn own_identity() -> String {
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "kandle-operator".into());
    format!("{host}_{}", std::process::id())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Run { watch_namespace, server_image, probe_addr, log_format, leader_elect, leader_election_id,
            leader_election_namespace, leader_election_lease_duration } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
            match log_format {
                LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
                LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
            }
            let runtime = tokio::runtime::Runtime::new()?;
            let election = leader_elect.then(|| kandle_operator::leader::ElectionConfig {
                lease_name: leader_election_id,
                namespace: leader_election_namespace.unwrap_or_else(own_namespace),
                identity: own_identity(),
                lease_duration_secs: leader_election_lease_duration.max(2),
                renew_before_secs: (leader_election_lease_duration / 3).max(1),
            });
            let cfg = kandle_operator::run::RunConfig { watch_namespace, server_image, probe_addr, election };
            runtime.block_on(kandle_operator::run::run(cfg)).map_err(|e| e.to_string())?;
            Ok(())
        }
        Command::Render { file, namespace, server_image } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let cfg = BuildConfig { server_image };
            for llm in kandle_operator::llm_documents(&text)? {
                let mut llm: LLMDeployment = llm;
                llm.metadata.namespace.get_or_insert(namespace.clone());
                // Owner references need a uid; a rendered object has none yet.
                llm.metadata.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
                let name = llm.metadata.name.clone().unwrap_or_default();
                let mut children = build(&llm, &cfg, None).map_err(|e| format!("{name}: {e}"))?;
                // The placeholder owner does not exist: applied as is, the garbage collector
                // would delete these objects, so rendered output carries no owner.
                children.deployment.metadata.owner_references = None;
                children.service.metadata.owner_references = None;
                if let Some(c) = children.chat_template.as_mut() {
                    c.metadata.owner_references = None;
                }
                if let Some(p) = children.pdb.as_mut() {
                    p.metadata.owner_references = None;
                }
                let mut docs = vec![serde_yaml::to_string(&children.deployment)?, serde_yaml::to_string(&children.service)?];
                docs.extend(children.chat_template.map(|c| serde_yaml::to_string(&c)).transpose()?);
                docs.extend(children.pdb.map(|p| serde_yaml::to_string(&p)).transpose()?);
                // HPA / KEDA modes hand scaling to an object of their own.
                if let Some(a) = llm.spec.autoscaling.as_ref().filter(|a| a.enabled) {
                    use kandle_operator::autoscaler::{external, policy, poll_interval};
                    use kandle_operator::crd::AutoscalingMode;
                    let p = policy(a);
                    match a.mode.unwrap_or_default() {
                        AutoscalingMode::Builtin => {}
                        AutoscalingMode::Hpa => {
                            let mut hpa = external::hpa(&llm, a, &p).map_err(|e| format!("{name}: {e}"))?;
                            hpa.metadata.owner_references = None;
                            docs.push(serde_yaml::to_string(&hpa)?);
                        }
                        AutoscalingMode::Keda => {
                            let mut so = external::scaled_object(&llm, a, &p, poll_interval(a).as_secs()).map_err(|e| format!("{name}: {e}"))?;
                            so.metadata.owner_references = None;
                            docs.push(serde_yaml::to_string(&so)?);
                        }
                    }
                }
                for doc in docs {
                    print!("---\n{doc}");
                }
            }
            Ok(())
        }
    }
}
