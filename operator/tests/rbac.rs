//! The API calls the operator makes, collected from what it actually sends (every reconcile
//! path, every autoscaling mode, events, leader election) plus the kinds its controller
//! lists and watches, written as `operator/rbac.json`. The chart's test checks that its
//! RBAC grants exactly these (no more). Refresh after changing what the operator calls:
//!
//!     KANDLE_UPDATE_RBAC=1 cargo test -p kandle-operator --test rbac

mod support;

use kandle_operator::controller::build::BuildConfig;
use kandle_operator::controller::reconcile::{reconcile, Context};
use kandle_operator::crd::LLMDeployment;
use kandle_operator::leader::{ElectionConfig, Leadership};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use support::fake_api::{start, Store};

const LLM: &str = "/apis/kandle.dev/v1alpha1/namespaces/ml/llmdeployments/chat";

/// "METHOD /path" → (group, resource[/subresource], verb); None for discovery documents.
fn permission(line: &str) -> Option<(String, String, String)> {
    let (method, path) = line.split_once(' ')?;
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match seg[0] {
        "api" => ("", &seg[2..]),
        "apis" => (seg[1], &seg[3..]),
        _ => return None,
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 { &rest[2..] } else { rest };
    let (resource, named) = match rest {
        [] => return None,
        [r] => (r.to_string(), false),
        [r, _name] => (r.to_string(), true),
        [r, _name, sub, ..] => (format!("{r}/{sub}"), true),
    };
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    Some((group.into(), resource, verb.into()))
}

async fn reconcile_stored(store: &Arc<Mutex<Store>>, ctx: &Arc<Context>, spec: Value) {
    let mut obj = store.lock().unwrap().objects.get(LLM).cloned().unwrap_or_else(|| json!({"apiVersion": "kandle.dev/v1alpha1",
        "kind": "LLMDeployment", "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1", "generation": 1}}));
    obj["spec"] = spec;
    store.lock().unwrap().objects.insert(LLM.into(), obj.clone());
    let llm: LLMDeployment = serde_json::from_value(obj).unwrap();
    reconcile(Arc::new(llm), ctx.clone()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_needs_exactly_these_permissions() {
    let store = Arc::new(Mutex::new(Store::default()));
    let client = start(store.clone());
    let ctx = Arc::new(Context::new(client.clone(), BuildConfig { server_image: "kandle-server:test".into() }));
    store.lock().unwrap().objects.insert("/api/v1/namespaces/ml/pods/chat-a".into(), json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chat-a", "namespace": "ml", "labels": {"kandle.dev/llmdeployment": "chat"}},
        "status": {"phase": "Running", "podIP": "127.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]}}));
    let model = json!({"hostPath": {"path": "/m"}, "chatTemplate": {"inline": "{{ messages }}"}});
    // Builtin autoscaling, an inline template, a PDB (2 replicas) and its removal.
    reconcile_stored(&store, &ctx, json!({"model": model, "replicas": 2})).await;
    reconcile_stored(&store, &ctx, json!({"model": model, "autoscaling": {"enabled": true, "maxReplicas": 2}})).await;
    // A template by reference (read), HPA mode, then KEDA (with and without KEDA), then off.
    let by_ref = json!({"hostPath": {"path": "/m"}, "chatTemplate": {"configMapKeyRef": {"name": "t", "key": "k"}}});
    let scaling = |mode: &str, on: bool| json!({"enabled": on, "mode": mode, "prometheusAddress": "http://p:9090"});
    reconcile_stored(&store, &ctx, json!({"model": by_ref, "autoscaling": scaling("HPA", true)})).await;
    reconcile_stored(&store, &ctx, json!({"model": by_ref, "autoscaling": scaling("KEDA", true)})).await;
    store.lock().unwrap().objects.insert("/apis/keda.sh/v1alpha1".into(), json!({"kind": "APIResourceList",
        "groupVersion": "keda.sh/v1alpha1", "resources": [{"name": "scaledobjects", "singularName": "scaledobject",
        "namespaced": true, "kind": "ScaledObject", "verbs": ["patch"]}]}));
    reconcile_stored(&store, &ctx, json!({"model": by_ref, "autoscaling": scaling("KEDA", true)})).await;
    reconcile_stored(&store, &ctx, json!({"model": by_ref, "autoscaling": scaling("KEDA", false)})).await;
    // The same event twice: the recorder patches the first one.
    for _ in 0..2 {
        store.lock().unwrap().objects.get_mut(LLM).unwrap()["status"] = Value::Null;
        reconcile_stored(&store, &ctx, json!({"model": {"hostPath": {"path": "/m"}}, "autoscaling": {"minReplicas": 3, "maxReplicas": 1}})).await;
    }
    let cfg = ElectionConfig { lease_name: "l".into(), namespace: "kandle-system".into(), identity: "a".into(),
        lease_duration_secs: 2, renew_before_secs: 1 };
    Leadership::acquire(client, &cfg).await.unwrap().release().await;

    let mut needed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for line in &store.lock().unwrap().log {
        if let Some((g, r, v)) = permission(line) {
            needed.entry((g, r)).or_default().insert(v);
        }
    }
    for (g, r) in kandle_operator::run::watched_kinds() {
        needed.entry((g, r)).or_default().extend(["list".to_string(), "watch".to_string()]);
    }
    for must in [("events.k8s.io", "events", "patch"), ("", "pods", "list"), ("keda.sh", "scaledobjects", "delete"),
        ("coordination.k8s.io", "leases", "create"), ("autoscaling", "horizontalpodautoscalers", "delete")] {
        assert!(needed.get(&(must.0.into(), must.1.into())).is_some_and(|v| v.contains(must.2)), "{must:?} not exercised");
    }
    let rules: Vec<Value> = needed.into_iter().map(|((g, r), v)| json!({"apiGroup": g, "resource": r, "verbs": v})).collect();
    let text = serde_json::to_string_pretty(&json!({
        "comment": "Generated by `KANDLE_UPDATE_RBAC=1 cargo test -p kandle-operator --test rbac`; do not edit.",
        "rules": rules})).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rbac.json");
    if std::env::var("KANDLE_UPDATE_RBAC").is_ok() {
        std::fs::write(path, &text).unwrap();
    }
    assert_eq!(std::fs::read_to_string(path).unwrap_or_default(), text,
        "operator/rbac.json is stale: KANDLE_UPDATE_RBAC=1 cargo test -p kandle-operator --test rbac");
}
