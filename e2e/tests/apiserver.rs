//! The API stand-in answers kube-rs the way a real API server does, for what the operator
//! and the node agent rely on: watches (with bookmarks and resume), server-side apply that
//! removes fields dropped from the applied configuration, conflicts between managers, the
//! scale subresource, garbage collection, CRD validation, and Deployment rollouts.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kandle_e2e::apiserver::ApiServer;
use kandle_e2e::cluster::until;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::time::Duration;

async fn server() -> (ApiServer, kube::Client) {
    let s = ApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let c = s.client();
    (s, c)
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_sends_bookmarks() {
    let (_s, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "a", "labels": {"app": "x"}}})).unwrap();
    let created = cms.create(&PostParams::default(), &a).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "v"}}))).await.unwrap();
    // A watch from the creation's version sees the later change, and nothing older.
    let mut stream = cms.watch(&kube::api::WatchParams::default().labels("app=x"), &rv).await.unwrap().boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    match first {
        kube::api::WatchEvent::Modified(cm) => assert_eq!(cm.data.unwrap()["k"], "v"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // Leaving the selector reads as a deletion.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}}))).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(next, kube::api::WatchEvent::Deleted(_)), "{next:?}");
    // Idle watches get bookmarks.
    let bookmark = tokio::time::timeout(Duration::from_secs(8), stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(bookmark, kube::api::WatchEvent::Bookmark(_)), "{bookmark:?}");
    // kube-runtime's watcher (list, then watch) sees objects created later.
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap()).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = w.next().await {
            if let Ok(Event::Apply(cm) | Event::InitApply(cm)) = e {
                if cm.metadata.name.as_deref() == Some("b") {
                    return true;
                }
            }
        }
        false
    }).await.unwrap();
    assert!(seen);
}

#[tokio::test]
async fn server_side_apply_removes_dropped_fields_and_reports_conflicts() {
    let (_s, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    cms.patch("c", &PatchParams::apply("op").force(), &Patch::Apply(apply(json!({"a": "1", "b": "2"})))).await.unwrap();
    // Another manager's field survives the operator dropping its own.
    cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"mine": "x"}}))).await.unwrap();
    let after = cms.patch("c", &PatchParams::apply("op").force(), &Patch::Apply(apply(json!({"a": "1"})))).await.unwrap();
    let data = after.data.unwrap();
    assert_eq!((data.get("a").map(String::as_str), data.get("b"), data.get("mine").map(String::as_str)), (Some("1"), None, Some("x")));
    // Changing a field another manager owns, without force, is a 409.
    let err = cms.patch("c", &PatchParams::apply("other"), &Patch::Apply(apply(json!({"a": "9"})))).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");
}

#[tokio::test]
async fn crd_schema_and_cel_rules_are_enforced() {
    let (_s, client) = server().await;
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/llmdeployment.yaml")).unwrap();
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("kandle.dev", "v1alpha1", "LLMDeployment"));
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let obj = |spec: serde_json::Value| -> kube::api::DynamicObject {
        serde_json::from_value(json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": "m"}, "spec": spec})).unwrap()
    };
    let err = api.create(&PostParams::default(), &obj(json!({"model": {}}))).await.unwrap_err();
    assert!(err.to_string().contains("exactly one model source"), "{err}");
    let created = api.create(&PostParams::default(), &obj(json!({"model": {"url": "https://x/m.gguf"}, "unknown": 1}))).await.unwrap();
    let spec = &created.data["spec"];
    assert!(spec.get("unknown").is_none(), "unknown fields are pruned: {spec}");
    assert!(spec["server"].is_object(), "defaults are applied: {spec}");
    // The scale subresource reads and writes spec.replicas.
    let scale = api.patch_scale("m", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    assert_eq!(api.get("m").await.unwrap().data["spec"]["replicas"], 3);
}

#[tokio::test]
async fn deployments_roll_and_owners_collect_garbage() {
    let (_s, client) = server().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let d = |image: &str| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}});
    deployments.patch("web", &PatchParams::apply("t"), &Patch::Apply(d("v1"))).await.unwrap();
    // Nobody runs these pods: mark them ready by hand, as a kubelet would.
    let make_ready = || async {
        for p in pods.list(&ListParams::default()).await.unwrap().items {
            let name = p.metadata.name.unwrap();
            let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
            let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await;
        }
    };
    until("2 pods", Duration::from_secs(10), || async { Ok((pods.list(&ListParams::default()).await?.items.len() == 2).then_some(())) }).await.unwrap();
    make_ready().await;
    deployments.patch("web", &PatchParams::apply("t"), &Patch::Apply(d("v2"))).await.unwrap();
    // maxUnavailable 0: a third (new) pod appears before any old one goes.
    until("a surge pod", Duration::from_secs(10), || async { Ok((pods.list(&ListParams::default()).await?.items.len() == 3).then_some(())) }).await.unwrap();
    until("the rollout", Duration::from_secs(20), || async {
        make_ready().await;
        let d = deployments.get("web").await?;
        let s = d.status.unwrap_or_default();
        let images: Vec<String> = pods.list(&ListParams::default()).await?.items.iter()
            .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone()).collect();
        Ok((s.updated_replicas == Some(2) && s.ready_replicas == Some(2) && images == ["v2", "v2"]).then_some(()))
    }).await.unwrap();
    assert_eq!(rss.list(&ListParams::default()).await.unwrap().items.len(), 2);
    // Deleting the Deployment takes its ReplicaSets and their pods with it.
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    until("garbage collection", Duration::from_secs(10), || async {
        Ok((rss.list(&ListParams::default()).await?.items.is_empty() && pods.list(&ListParams::default()).await?.items.is_empty()).then_some(()))
    }).await.unwrap();
}
