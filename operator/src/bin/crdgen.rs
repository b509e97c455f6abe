//! Writes the LLMDeployment CustomResourceDefinition as YAML to each path given (or stdout):
//! `cargo run -p kandle-operator --bin crdgen -- crds/llmdeployment.yaml charts/kandle-operator/crds/llmdeployment.yaml`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = kandle_operator::crd::crd_yaml()?;
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        std::fs::write(&path, &yaml)?;
    }
    Ok(())
}
