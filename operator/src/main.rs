//! kandle-operator. `render` prints the objects an LLMDeployment turns into (like
//! `helm template`), without a cluster: `kandle-operator render -f llm.yaml`.

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

#[derive(Subcommand)]
enum Command {
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Render { file, namespace, server_image } => {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let cfg = BuildConfig { server_image };
            for llm in kandle_operator::llm_documents(&text)? {
                let mut llm: LLMDeployment = llm;
                llm.metadata.namespace.get_or_insert(namespace.clone());
                // Owner references need a uid; a rendered object has none yet.
                llm.metadata.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
                let name = llm.metadata.name.clone().unwrap_or_default();
                let children = build(&llm, &cfg, None).map_err(|e| format!("{name}: {e}"))?;
                let mut docs = vec![serde_yaml::to_string(&children.deployment)?, serde_yaml::to_string(&children.service)?];
                docs.extend(children.chat_template.map(|c| serde_yaml::to_string(&c)).transpose()?);
                docs.extend(children.pdb.map(|p| serde_yaml::to_string(&p)).transpose()?);
                for doc in docs {
                    print!("---\n{doc}");
                }
            }
            Ok(())
        }
    }
}
