//! The pure build functions, per model source and setting, and the generated CRD: committed
//! file up to date, CEL rules accept good specs and reject bad ones.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kandle_operator::controller::build::{build, endpoint, model_summary, BuildConfig, Children, SpecError, INSTANCE_LABEL};
use kandle_operator::crd::{LLMDeployment, LLMDeploymentSpec};
use serde_json::{json, Value};

fn llm(spec: Value) -> LLMDeployment {
    let mut obj: LLMDeployment = serde_json::from_value(json!({
        "apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "1234", "generation": 1},
        "spec": spec,
    }))
    .expect("a valid LLMDeployment");
    obj.status = None;
    obj
}

fn cfg() -> BuildConfig {
    BuildConfig { server_image: "ghcr.io/kandle/kandle-server:0.1.0".into() }
}

fn children(spec: Value) -> Children {
    build(&llm(spec), &cfg(), None).expect("builds")
}

fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn server(d: &Deployment) -> &Container {
    &pod(d).containers[0]
}

fn args(d: &Deployment) -> Vec<String> {
    server(d).args.clone().unwrap()
}

fn flag(d: &Deployment, name: &str) -> Option<String> {
    let a = args(d);
    a.iter().position(|x| x == name).map(|i| a[i + 1].clone())
}

#[test]
fn pvc_model_on_cpu() {
    let c = children(json!({"model": {"pvc": {"claimName": "models", "path": "smollm2/model.gguf"}}}));
    let d = &c.deployment;
    assert_eq!(flag(d, "--model").as_deref(), Some("/models/smollm2/model.gguf"));
    assert_eq!(flag(d, "--served-model-name").as_deref(), Some("chat"));
    assert_eq!(flag(d, "--port").as_deref(), Some("8000"));
    assert_eq!(flag(d, "--device"), None, "no GPUs requested: CPU");
    let vol = pod(d).volumes.as_ref().unwrap().iter().find(|v| v.name == "model").unwrap();
    assert_eq!(vol.persistent_volume_claim.as_ref().unwrap().claim_name, "models");
    assert!(server(d).resources.as_ref().unwrap().limits.is_none());
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    assert!(c.pdb.is_none() && c.chat_template.is_none());
    // Owned by the LLMDeployment, selected by its label.
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("LLMDeployment", "chat", Some(true)));
    assert_eq!(c.service.spec.as_ref().unwrap().selector.as_ref().unwrap()[INSTANCE_LABEL], "chat");
    assert_eq!(c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
    let probes = server(d);
    assert_eq!(probes.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readiness"));
    assert_eq!(probes.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/liveness"));
    let startup = probes.startup_probe.as_ref().unwrap();
    assert!(startup.failure_threshold.unwrap() * startup.period_seconds.unwrap() >= 1800);
    assert_eq!(endpoint(&llm(json!({"model": {"hostPath": {"path": "/m"}}}))), "http://chat.ml.svc:8000/v1");
}

#[test]
fn gpu_model_from_hugging_face() {
    let c = children(json!({
        "model": {"huggingFace": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "revision": "main",
            "tokenSecretRef": {"name": "hf", "key": "token"}}, "servedModelNames": ["llama", "llama-3.1"],
            "dtype": "bf16", "maxModelLen": 8192},
        "server": {"resources": {"gpus": 1, "memory": "64Gi"}, "gpuMemoryUtilization": 0.9, "maxNumSeqs": 128, "port": 9000,
            "apiKeySecretRef": {"name": "llm-key", "key": "key"}, "args": ["--max-num-batched-tokens", "4096"]},
        "replicas": 2,
    }));
    let d = &c.deployment;
    assert_eq!(flag(d, "--device").as_deref(), Some("cuda"));
    assert_eq!(flag(d, "--dtype").as_deref(), Some("bf16"));
    assert_eq!(flag(d, "--max-model-len").as_deref(), Some("8192"));
    assert_eq!(flag(d, "--gpu-memory-utilization").as_deref(), Some("0.9"));
    assert_eq!(flag(d, "--max-num-seqs").as_deref(), Some("128"));
    assert_eq!(args(d).iter().filter(|a| *a == "--served-model-name").count(), 2);
    assert_eq!(args(d).last().map(String::as_str), Some("4096"), "extra args come last");
    let res = server(d).resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    assert!(pod(d).tolerations.as_ref().unwrap().iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    let init = &pod(d).init_containers.as_ref().unwrap()[0];
    let init_args = init.args.clone().unwrap();
    assert_eq!(&init_args[..3], ["download", "--repo", "meta-llama/Llama-3.1-8B-Instruct"]);
    assert_eq!(flag(d, "--model").as_deref(), Some("/model-cache/meta-llama--Llama-3.1-8B-Instruct"));
    assert_eq!(init.env.as_ref().unwrap()[0].name, "HF_TOKEN");
    assert!(server(d).env.as_ref().unwrap().iter().any(|e| e.name == "API_KEY" && e.value_from.is_some()));
    assert_eq!(c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 9000);
    assert!(c.pdb.is_some(), "two replicas get a PodDisruptionBudget");
    assert_eq!(model_summary(&llm(json!({"model": {"huggingFace": {"repo": "a/b", "revision": "v1"}}})).spec), "hf://a/b@v1");
}

#[test]
fn url_and_image_sources() {
    let url = "https://example.com/models/smol.Q4_1.gguf?download=true";
    let c = children(json!({"model": {"url": url}, "server": {"env": [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "OTHER", "value": "x"}]}}));
    assert_eq!(flag(&c.deployment, "--model").as_deref(), Some("/model-cache/smol.Q4_1.gguf"));
    let init = &pod(&c.deployment).init_containers.as_ref().unwrap()[0];
    let init_args = init.args.as_ref().unwrap();
    assert_eq!(init_args[1..3], ["--url".to_string(), url.into()]);
    assert_eq!(init_args[init_args.len() - 2..], ["--filename".to_string(), "smol.Q4_1.gguf".into()]);
    let init_env: Vec<&str> = init.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(init_env, ["HTTPS_PROXY"], "proxy settings reach the download, other env does not");
    let c = children(json!({"model": {"image": {"reference": "registry.example/models/llama:8b", "path": "weights"}}}));
    assert_eq!(flag(&c.deployment, "--model").as_deref(), Some("/models/weights"));
    let vol = pod(&c.deployment).volumes.as_ref().unwrap().iter().find(|v| v.name == "model").unwrap();
    assert_eq!(vol.image.as_ref().unwrap().reference.as_deref(), Some("registry.example/models/llama:8b"));
    assert!(pod(&c.deployment).init_containers.is_none());
}

#[test]
fn chat_templates_inline_and_by_reference() {
    let c = children(json!({"model": {"hostPath": {"path": "/m"}, "chatTemplate": {"inline": "{{ messages }}"}}}));
    let cm = c.chat_template.clone().expect("inline template gets a ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some("chat-chat-template"));
    assert_eq!(cm.data.unwrap()["chat_template.jinja"], "{{ messages }}");
    assert_eq!(flag(&c.deployment, "--chat-template").as_deref(), Some("/etc/kandle/chat-template/chat_template.jinja"));
    // Editing the template changes the pod template (so the pods roll), keeping it does not.
    let hash = |c: &kandle_operator::controller::build::Children| {
        c.deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["kandle.dev/chat-template-hash"].clone()
    };
    let edited = children(json!({"model": {"hostPath": {"path": "/m"}, "chatTemplate": {"inline": "{{ messages }}!"}}}));
    let same = children(json!({"model": {"hostPath": {"path": "/m"}, "chatTemplate": {"inline": "{{ messages }}"}}}));
    assert_ne!(hash(&c), hash(&edited));
    assert_eq!(hash(&c), hash(&same));
    let c = children(json!({"model": {"hostPath": {"path": "/m"},
        "chatTemplate": {"configMapKeyRef": {"name": "templates", "key": "llama3.jinja"}}}}));
    assert!(c.chat_template.is_none());
    let vol = pod(&c.deployment).volumes.as_ref().unwrap().iter().find(|v| v.name == "chat-template").unwrap();
    assert_eq!(vol.config_map.as_ref().unwrap().name, "templates");
    assert_eq!(flag(&c.deployment, "--chat-template").as_deref(), Some("/etc/kandle/chat-template/llama3.jinja"));
}

#[test]
fn autoscaled_replicas_overrides_and_embeddings() {
    let spec = json!({
        "model": {"pvc": {"claimName": "m"}, "task": "embed"},
        "replicas": 1,
        "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 4},
        "scheduling": {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "high", "runtimeClassName": "nvidia"},
        "podTemplate": {"labels": {"team": "search"}, "annotations": {"a": "b"}, "serviceAccountName": "llm"},
    });
    let c = build(&llm(spec), &cfg(), Some(3)).unwrap();
    let d = &c.deployment;
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3), "the autoscaler's decision wins");
    assert!(c.pdb.is_some());
    assert_eq!(flag(d, "--task").as_deref(), Some("embed"));
    let p = pod(d);
    assert_eq!(p.node_selector.as_ref().unwrap()["pool"], "gpu");
    assert_eq!(p.priority_class_name.as_deref(), Some("high"));
    assert_eq!(p.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(p.service_account_name.as_deref(), Some("llm"));
    let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "search");
    assert_eq!(meta.labels.as_ref().unwrap()[INSTANCE_LABEL], "chat", "overrides cannot drop the selector label");
    assert_eq!(meta.annotations.as_ref().unwrap()["prometheus.io/scrape"], "true");
}

#[test]
fn invalid_specs_build_nothing() {
    let bad = [
        (json!({"model": {}}), SpecError::ModelSource(0)),
        (json!({"model": {"pvc": {"claimName": "a"}, "url": "https://x/y.gguf"}}), SpecError::ModelSource(2)),
        (json!({"model": {"url": "ftp://x/y.gguf"}}), SpecError::Url("ftp://x/y.gguf".into())),
        (json!({"model": {"url": "https://x/y.gguf"}, "autoscaling": {"enabled": true, "mode": "KEDA"}}), SpecError::KedaPrometheus),
        (json!({"model": {"pvc": {"claimName": "a"}, "chatTemplate": {}}}), SpecError::ChatTemplate),
        (json!({"model": {"pvc": {"claimName": "a"}}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
            SpecError::ReplicaBounds(5, 2)),
    ];
    for (spec, want) in bad {
        assert_eq!(build(&llm(spec.clone()), &cfg(), None).unwrap_err(), want, "{spec}");
        // The CRD's CEL rules refuse the same specs at admission.
        assert!(llm(spec.clone()).validate_cel().is_err(), "CEL accepted {spec}");
    }
    let ok = llm(json!({"model": {"pvc": {"claimName": "a"}}})).validate_cel();
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn committed_crds_are_up_to_date() {
    // The chart carries its own copy (Helm installs CRDs from the chart's crds/).
    for file in ["crds/llmdeployment.yaml", "charts/kandle-operator/crds/llmdeployment.yaml"] {
        let committed = std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_default();
        assert!(committed == kandle_operator::crd::crd_yaml().unwrap(),
            "{file} is stale: run `cargo run -p kandle-operator --bin crdgen -- crds/llmdeployment.yaml charts/kandle-operator/crds/llmdeployment.yaml`");
    }
}

#[test]
fn spec_round_trips() {
    let spec: LLMDeploymentSpec = serde_json::from_value(json!({"model": {"pvc": {"claimName": "m"}}})).unwrap();
    assert_eq!(spec.port(), 8000);
    assert_eq!(serde_json::to_value(&spec).unwrap()["model"]["pvc"]["claimName"], "m");
}

#[test]
fn every_example_passes_the_crd_rules_and_builds() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for mut llm in kandle_operator::llm_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            let checked = llm.validate_cel();
            assert!(checked.is_ok(), "{}: {checked:?}", path.display());
            llm.metadata.namespace = Some("default".into());
            llm.metadata.uid = Some("1".into());
            build(&llm, &cfg(), None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "examples found: {seen}");
}
