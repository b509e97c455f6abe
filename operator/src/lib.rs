//! kandle-operator: reconciles `LLMDeployment` resources (`kandle.dev/v1alpha1`) into
//! kandle-server Deployments, Services and their companions.

pub mod autoscaler;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod run;

/// The kandle-server image pods run unless a resource or `--server-image` says otherwise.
pub const DEFAULT_SERVER_IMAGE: &str = "ghcr.io/kandle-dev/kandle-server:0.1.0";

/// The LLMDeployments of a multi-document YAML text (other kinds skipped).
pub fn llm_documents(text: &str) -> Result<Vec<crd::LLMDeployment>, serde_yaml::Error> {
    use serde::Deserialize;
    let mut out = vec![];
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("LLMDeployment") {
            out.push(serde_yaml::from_value(value)?);
        }
    }
    Ok(out)
}
