//! Writes the LLMDeployment CustomResourceDefinition as YAML (to stdout, or to the path
//! given): `cargo run -p kandle-operator --bin crdgen -- crds/llmdeployment.yaml`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = kandle_operator::crd::crd_yaml()?;
    match std::env::args().nth(1) {
        Some(path) => std::fs::write(&path, yaml)?,
        None => print!("{yaml}"),
    }
    Ok(())
}
