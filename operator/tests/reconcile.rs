//! The reconciler against a Kubernetes API (`support/fake_api.rs`: a `tower-test` mock
//! answered from an in-memory store).

mod support;

use kandle_operator::controller::build::BuildConfig;
use kandle_operator::controller::reconcile::{reconcile, Context};
use kandle_operator::crd::LLMDeployment;
use kube::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use support::fake_api::{start, Store};

fn llm(spec: Value, status: Option<Value>) -> Arc<LLMDeployment> {
    let mut v = json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1", "generation": 2}, "spec": spec});
    if let Some(st) = status {
        v["status"] = st;
    }
    Arc::new(serde_json::from_value(v).unwrap())
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ml/deployments/chat";
const SERVICE: &str = "/api/v1/namespaces/ml/services/chat";
const PDB: &str = "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/chat";
const CM: &str = "/api/v1/namespaces/ml/configmaps/chat-chat-template";
const LLM: &str = "/apis/kandle.dev/v1alpha1/namespaces/ml/llmdeployments/chat";

/// Stores the resource as the API server holds it, then reconciles it.
async fn run(store: &Arc<Mutex<Store>>, ctx: &Arc<Context>, obj: Arc<LLMDeployment>) {
    store.lock().unwrap().objects.insert(LLM.into(), serde_json::to_value(&*obj).unwrap());
    reconcile(obj, ctx.clone()).await.unwrap();
}

fn ctx(client: Client) -> Arc<Context> {
    Arc::new(Context::new(client, BuildConfig { server_image: "kandle-server:test".into() }))
}

fn condition(store: &Store, type_: &str) -> (String, String) {
    let conds = store.objects[LLM]["status"]["conditions"].as_array().unwrap();
    let c = conds.iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c["status"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap().to_string())
}

fn args(store: &Store) -> Vec<String> {
    serde_json::from_value(store.objects[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

#[tokio::test]
async fn applies_children_then_reports_status_and_rolls_on_model_change() {
    let store = Arc::new(Mutex::new(Store::default()));
    store.lock().unwrap().deployment_status = json!({"replicas": 2, "readyReplicas": 0, "updatedReplicas": 2});
    let ctx = ctx(start(store.clone()));
    let spec = json!({"model": {"pvc": {"claimName": "models", "path": "a"}, "chatTemplate": {"inline": "{{ x }}"}},
        "replicas": 2});
    run(&store, &ctx, llm(spec.clone(), None)).await;
    {
        let s = store.lock().unwrap();
        for path in [CM, DEPLOYMENT, SERVICE, PDB] {
            assert!(s.objects.contains_key(path), "{path} applied; log: {:?}", s.log);
        }
        assert!(s.log.iter().any(|l| l.starts_with("PATCH") && l.contains("/deployments/chat")));
        let owner = &s.objects[DEPLOYMENT]["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["controller"].as_bool()), (Some("LLMDeployment"), Some(true)));
        assert_eq!(condition(&s, "Ready"), ("False".into(), "NoReadyReplicas".into()));
        assert_eq!(condition(&s, "Progressing"), ("True".into(), "RollingOut".into()));
        assert_eq!(condition(&s, "ChatTemplateResolved").0, "True");
        let st = &s.objects[LLM]["status"];
        assert_eq!(st["endpoint"], "http://chat.ml.svc:8000/v1");
        assert_eq!(st["selector"], "kandle.dev/llmdeployment=chat");
        assert_eq!(st["observedGeneration"], 2);
        assert!(s.log.iter().any(|l| l.starts_with("POST") && l.contains("events")), "an event for the transition");
    }
    // Pods become ready: Ready=True, and the stored status feeds the next round.
    let previous = store.lock().unwrap().objects[LLM]["status"].clone();
    store.lock().unwrap().deployment_status = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
    run(&store, &ctx, llm(spec.clone(), Some(previous.clone()))).await;
    let ready_since = {
        let s = store.lock().unwrap();
        assert_eq!(condition(&s, "Ready"), ("True".into(), "Serving".into()));
        assert_eq!(condition(&s, "Progressing"), ("False".into(), "Complete".into()));
        s.objects[LLM]["status"].clone()
    };
    // Nothing changed: no status write at all.
    let writes = |s: &Store| s.log.iter().filter(|l| l.ends_with("/status")).count();
    let before = writes(&store.lock().unwrap());
    run(&store, &ctx, llm(spec.clone(), Some(ready_since.clone()))).await;
    assert_eq!(writes(&store.lock().unwrap()), before, "an unchanged status is not rewritten");
    // A new model source rolls the Deployment (its pod template changes); one replica drops the PDB.
    let new_spec = json!({"model": {"pvc": {"claimName": "models", "path": "b"}}, "replicas": 1});
    run(&store, &ctx, llm(new_spec, Some(ready_since))).await;
    let s = store.lock().unwrap();
    let a = args(&s);
    assert_eq!(a[a.iter().position(|x| x == "--model").unwrap() + 1], "/models/b");
    assert!(!s.objects.contains_key(PDB), "the PodDisruptionBudget is deleted at one replica");
    assert_eq!(s.objects[DEPLOYMENT]["spec"]["replicas"], 1);
}

#[tokio::test]
async fn invalid_spec_reports_and_builds_nothing() {
    let store = Arc::new(Mutex::new(Store::default()));
    let ctx = ctx(start(store.clone()));
    let spec = json!({"model": {"pvc": {"claimName": "a"}, "url": "https://x/m.gguf"}});
    run(&store, &ctx, llm(spec, None)).await;
    let s = store.lock().unwrap();
    assert_eq!(condition(&s, "Ready"), ("False".into(), "InvalidSpec".into()));
    assert_eq!(condition(&s, "ModelSourceResolved"), ("False".into(), "InvalidSpec".into()));
    let msg = s.objects[LLM]["status"]["conditions"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("exactly one model source"), "{msg}");
    for path in [DEPLOYMENT, SERVICE, PDB, CM] {
        assert!(!s.objects.contains_key(path), "{path} must not be created for an invalid spec");
    }
}

#[tokio::test]
async fn missing_chat_template_config_map_is_reported() {
    let store = Arc::new(Mutex::new(Store::default()));
    let ctx = ctx(start(store.clone()));
    let spec = json!({"model": {"hostPath": {"path": "/m"}, "chatTemplate": {"configMapKeyRef": {"name": "tpl", "key": "t.jinja"}}}});
    run(&store, &ctx, llm(spec.clone(), None)).await;
    assert_eq!(condition(&store.lock().unwrap(), "ChatTemplateResolved"), ("False".into(), "ConfigMapNotFound".into()));
    store.lock().unwrap().objects.insert("/api/v1/namespaces/ml/configmaps/tpl".into(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tpl"}, "data": {"other": "x"}}));
    let previous = store.lock().unwrap().objects[LLM]["status"].clone();
    run(&store, &ctx, llm(spec, Some(previous))).await;
    assert_eq!(condition(&store.lock().unwrap(), "ChatTemplateResolved"), ("False".into(), "KeyNotFound".into()));
}
