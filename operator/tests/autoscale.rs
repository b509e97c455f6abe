//! The builtin autoscaler end to end, minus the cluster: pods in the fake API point at real
//! HTTP servers (one per loopback address, as pod IPs) that serve a recorded kandle-server
//! scrape with the load the test sets; each reconcile lists the pods, scrapes them, decides,
//! and applies the Deployment. Also the HPA and KEDA modes' objects.

mod support;

use axum::http::StatusCode;
use kandle_operator::controller::build::BuildConfig;
use kandle_operator::controller::reconcile::{reconcile, Context};
use kandle_operator::crd::LLMDeployment;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_api::{start, Store};
use support::recorded::scrape_text;

const LLM: &str = "/apis/kandle.dev/v1alpha1/namespaces/ml/llmdeployments/chat";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ml/deployments/chat";
const HPA: &str = "/apis/autoscaling/v2/namespaces/ml/horizontalpodautoscalers/chat";
const SCALED_OBJECT: &str = "/apis/keda.sh/v1alpha1/namespaces/ml/scaledobjects/chat";

/// What a fake pod's /metrics reports: (waiting, running, kv usage), or None for a 503.
type Load = Arc<Mutex<Option<(f64, f64, f64)>>>;

/// Serves /metrics on `ip:port` (0 picks a port); returns the port.
async fn metrics_server(ip: &str, port: u16, load: Load) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || {
        let now = *load.lock().unwrap();
        async move {
            match now {
                Some(l) => (StatusCode::OK, scrape_text(l)),
                None => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
            }
        }
    }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "labels": {"kandle.dev/llmdeployment": "chat"}},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

fn llm(spec: Value) -> Arc<LLMDeployment> {
    Arc::new(serde_json::from_value(json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-1", "generation": 1}, "spec": spec})).unwrap())
}

/// The resource as stored (with the status the last reconcile wrote), then a reconcile.
async fn reconcile_stored(store: &Arc<Mutex<Store>>, ctx: &Arc<Context>) {
    let obj: LLMDeployment = serde_json::from_value(store.lock().unwrap().objects[LLM].clone()).unwrap();
    reconcile(Arc::new(obj), ctx.clone()).await.unwrap();
}

fn replicas(store: &Arc<Mutex<Store>>) -> i64 {
    store.lock().unwrap().objects[DEPLOYMENT]["spec"]["replicas"].as_i64().unwrap()
}

fn status(store: &Arc<Mutex<Store>>) -> Value {
    store.lock().unwrap().objects[LLM]["status"].clone()
}

fn scaling_condition(store: &Arc<Mutex<Store>>) -> (String, String) {
    let st = status(store);
    let c = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ScalingActive").unwrap().clone();
    (c["status"].as_str().unwrap().into(), c["reason"].as_str().unwrap().into())
}

fn events(store: &Arc<Mutex<Store>>) -> usize {
    store.lock().unwrap().log.iter().filter(|l| l.starts_with("POST") && l.contains("/events")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_pods_decides_and_patches_the_deployment() {
    let loads: Vec<Load> = (0..4).map(|_| Arc::new(Mutex::new(Some((0.0, 2.0, 0.1))))).collect();
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let port = metrics_server(ips[0], 0, loads[0].clone()).await;
    for i in 1..4 {
        metrics_server(ips[i], port, loads[i].clone()).await;
    }
    let store = Arc::new(Mutex::new(Store::default()));
    let ctx = Arc::new(Context::new(start(store.clone()), BuildConfig { server_image: "kandle-server:test".into() }));
    let spec = json!({"model": {"hostPath": {"path": "/m"}}, "server": {"port": port},
        "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 4, "targetRequestsPerReplica": 4,
            "scaleDownDelaySeconds": 1, "pollSeconds": 1}});
    {
        let mut s = store.lock().unwrap();
        s.objects.insert(LLM.into(), serde_json::to_value(&*llm(spec)).unwrap());
        s.objects.insert("/api/v1/namespaces/ml/pods/chat-a".into(), pod("chat-a", ips[0], true));
        // Another deployment's pod: not scraped.
        let mut other = pod("other-a", ips[1], true);
        other["metadata"]["labels"]["kandle.dev/llmdeployment"] = "other".into();
        s.objects.insert("/api/v1/namespaces/ml/pods/other-a".into(), other);
        s.deployment_status = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
    }

    // Light load on the one pod: stays at one.
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 1);
    assert_eq!(status(&store)["metrics"]["scrapedPods"], 1, "{}", status(&store));
    assert_eq!(scaling_condition(&store), ("True".into(), "Stable".into()));
    assert!(status(&store)["lastScaleTime"].is_null());

    // 14 requests at 4 per replica: four replicas in one poll.
    *loads[0].lock().unwrap() = Some((10.0, 4.0, 0.5));
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 4);
    let st = status(&store);
    assert_eq!((st["desiredReplicas"].as_i64(), st["metrics"]["waitingPerReplica"].as_f64()), (Some(4), Some(10.0)));
    assert_eq!(st["metrics"]["reason"], "RequestLoad");
    assert!(st["lastScaleTime"].is_string());
    assert_eq!(events(&store), 2, "a Ready event and a ScaledUp event");
    let metrics = ctx.metrics.encode();
    assert!(metrics.contains(r#"kandle_operator_autoscaler_decisions_total{direction="up",reason="RequestLoad"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"kandle_operator_autoscaler_desired_replicas{namespace="ml",name="chat"} 4"#));

    // Three new pods: two loading the model, one ready but its metrics fail. The queue is
    // unchanged: no further scale-up, and the unknown pod is counted at the mean, not idle.
    {
        let mut s = store.lock().unwrap();
        s.objects.insert("/api/v1/namespaces/ml/pods/chat-b".into(), pod("chat-b", ips[1], false));
        s.objects.insert("/api/v1/namespaces/ml/pods/chat-c".into(), pod("chat-c", ips[2], false));
        s.objects.insert("/api/v1/namespaces/ml/pods/chat-d".into(), pod("chat-d", ips[3], true));
        s.deployment_status = json!({"replicas": 4, "readyReplicas": 2, "updatedReplicas": 4});
    }
    *loads[3].lock().unwrap() = None;
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 4);
    let m = status(&store)["metrics"].clone();
    assert_eq!((m["scrapedPods"].as_i64(), m["startingPods"].as_i64(), m["unscrapedPods"].as_i64()), (Some(1), Some(2), Some(1)));
    assert!(ctx.metrics.encode().contains(r#"kandle_operator_autoscaler_scrape_errors_total{namespace="ml",name="chat"} 1"#));

    // Load gone, but one ready pod still cannot be read: never scale down on missing data.
    *loads[0].lock().unwrap() = Some((0.0, 0.0, 0.0));
    reconcile_stored(&store, &ctx).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 4);
    assert_eq!(status(&store)["metrics"]["reason"], "MissingMetrics");

    // Everything readable and idle: one step down per scaleDownDelaySeconds.
    for (i, l) in loads.iter().enumerate() {
        *l.lock().unwrap() = Some((0.0, 0.0, 0.0));
        let name = ["chat-a", "chat-b", "chat-c", "chat-d"][i];
        store.lock().unwrap().objects.insert(format!("/api/v1/namespaces/ml/pods/{name}"), pod(name, ips[i], true));
    }
    reconcile_stored(&store, &ctx).await;
    assert_eq!((replicas(&store), status(&store)["metrics"]["reason"].as_str()), (4, Some("ScaleDownDelayed")));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 3);
    assert_eq!(status(&store)["metrics"]["reason"], "LowLoad");
    assert_eq!(events(&store), 3, "a ScaledDown event");
    reconcile_stored(&store, &ctx).await;
    assert_eq!(replicas(&store), 3, "the next step waits a full delay again");
}

#[tokio::test]
async fn hpa_and_keda_modes_apply_their_objects_and_clean_up() {
    let store = Arc::new(Mutex::new(Store::default()));
    let ctx = Arc::new(Context::new(start(store.clone()), BuildConfig { server_image: "kandle-server:test".into() }));
    let spec = |mode: &str| json!({"model": {"hostPath": {"path": "/m"}}, "replicas": 2,
        "autoscaling": {"enabled": true, "mode": mode, "minReplicas": 1, "maxReplicas": 5, "targetRequestsPerReplica": 8,
            "targetKvCacheUsage": 0.8, "prometheusAddress": "http://prometheus.monitoring.svc:9090"}});
    store.lock().unwrap().objects.insert(LLM.into(), serde_json::to_value(&*llm(spec("HPA"))).unwrap());
    reconcile_stored(&store, &ctx).await;
    let hpa = store.lock().unwrap().objects[HPA].clone();
    assert_eq!(hpa["spec"]["scaleTargetRef"], json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment", "name": "chat"}));
    assert_eq!(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], "vllm:num_requests_waiting");
    assert_eq!(hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"], "800m");
    assert_eq!(replicas(&store), 2, "HPA mode: replicas come from spec.replicas (the scale subresource)");
    assert_eq!(scaling_condition(&store), ("True".into(), "HPA".into()));

    // Switch to KEDA on a cluster without KEDA: the HPA goes, the condition says why.
    store.lock().unwrap().objects.get_mut(LLM).unwrap()["spec"] = spec("KEDA");
    reconcile_stored(&store, &ctx).await;
    assert!(!store.lock().unwrap().objects.contains_key(HPA));
    assert_eq!(scaling_condition(&store), ("False".into(), "KEDANotInstalled".into()));

    // KEDA installed: the ScaledObject is applied.
    store.lock().unwrap().objects.insert("/apis/keda.sh/v1alpha1".into(), json!({"kind": "APIResourceList",
        "groupVersion": "keda.sh/v1alpha1", "resources": [{"name": "scaledobjects", "singularName": "scaledobject",
        "namespaced": true, "kind": "ScaledObject", "verbs": ["get", "list", "patch"]}]}));
    reconcile_stored(&store, &ctx).await;
    let so = store.lock().unwrap().objects[SCALED_OBJECT].clone();
    assert_eq!(so["spec"]["maxReplicaCount"], 5);
    assert_eq!(so["spec"]["triggers"][0]["metadata"]["threshold"], "8");
    assert!(so["spec"]["triggers"][0]["metadata"]["query"].as_str().unwrap().contains(r#"namespace="ml""#));
    assert_eq!(scaling_condition(&store), ("True".into(), "KEDA".into()));

    // Autoscaling off: the ScaledObject goes and the condition with it.
    store.lock().unwrap().objects.get_mut(LLM).unwrap()["spec"]["autoscaling"]["enabled"] = false.into();
    reconcile_stored(&store, &ctx).await;
    assert!(!store.lock().unwrap().objects.contains_key(SCALED_OBJECT));
    assert!(!status(&store)["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "ScalingActive"));
}
