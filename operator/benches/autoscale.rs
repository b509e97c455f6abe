//! Time from load crossing the target to the scale decision, with the builtin autoscaler's
//! poll loop as the controller runs it (reconcile, then requeue after `pollSeconds`). A pod
//! in the in-memory API points at a real HTTP server on 127.0.0.2 serving a recorded
//! kandle-server scrape; at a random moment its queue jumps above target, and the clock
//! stops when the Deployment's replicas change in the API.
//!
//!     cargo bench -p kandle-operator --bench autoscale            # pollSeconds 5 (default)
//!     POLL_SECONDS=1 TRIALS=20 cargo bench -p kandle-operator --bench autoscale

#[path = "../tests/support/fake_api.rs"]
mod fake_api;
#[path = "../tests/support/recorded.rs"]
mod recorded;

use kandle_operator::autoscaler::poll_interval;
use kandle_operator::controller::build::BuildConfig;
use kandle_operator::controller::reconcile::{reconcile, Context};
use kandle_operator::crd::LLMDeployment;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LLM: &str = "/apis/kandle.dev/v1alpha1/namespaces/bench/llmdeployments/chat";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/bench/deployments/chat";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let poll = env("POLL_SECONDS", 5);
    let trials = env("TRIALS", 6);
    let waiting = Arc::new(Mutex::new(0.0f64));
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = {
        let waiting = waiting.clone();
        axum::Router::new().route("/metrics", axum::routing::get(move || {
            let w = *waiting.lock().unwrap();
            let text = recorded::scrape_text((w, 0.0, 0.0));
            async move { text }
        }))
    };
    tokio::spawn(async move { axum::serve(listener, app).await });

    let spec = json!({"model": {"hostPath": {"path": "/m"}}, "server": {"port": port},
        "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 8, "targetRequestsPerReplica": 16, "pollSeconds": poll}});
    let mut latencies = vec![];
    let mut reconcile_ms = vec![];
    for trial in 0..trials {
        *waiting.lock().unwrap() = 2.0;
        let store = Arc::new(Mutex::new(fake_api::Store::default()));
        let llm: LLMDeployment = serde_json::from_value(json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "chat", "namespace": "bench", "uid": "u-1", "generation": 1}, "spec": spec})).unwrap();
        {
            let mut s = store.lock().unwrap();
            s.objects.insert(LLM.into(), serde_json::to_value(&llm).unwrap());
            s.objects.insert("/api/v1/namespaces/bench/pods/chat-a".into(), json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "chat-a", "namespace": "bench", "labels": {"kandle.dev/llmdeployment": "chat"}},
                "status": {"phase": "Running", "podIP": "127.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]}}));
            s.deployment_status = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
        }
        let ctx = Arc::new(Context::new(fake_api::start(store.clone()), BuildConfig { server_image: "kandle-server:bench".into() }));
        let interval = poll_interval(llm.spec.autoscaling.as_ref().unwrap());
        // The controller's loop for this resource: reconcile, requeue after the interval.
        let driver = {
            let (store, ctx) = (store.clone(), ctx.clone());
            let times = Arc::new(Mutex::new(vec![]));
            let t = times.clone();
            (tokio::spawn(async move {
                loop {
                    let obj: LLMDeployment = serde_json::from_value(store.lock().unwrap().objects[LLM].clone()).unwrap();
                    let t0 = Instant::now();
                    reconcile(Arc::new(obj), ctx.clone()).await.unwrap();
                    t.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1e3);
                    tokio::time::sleep(interval).await;
                }
            }), times)
        };
        // Cross the target at a random phase of the poll cycle.
        let phase = Duration::from_millis(300 + (trial * 7919 % 1000) * poll);
        tokio::time::sleep(phase).await;
        *waiting.lock().unwrap() = 60.0;
        let crossed = Instant::now();
        loop {
            let replicas = store.lock().unwrap().objects.get(DEPLOYMENT).and_then(|d| d["spec"]["replicas"].as_i64());
            if replicas.is_some_and(|r| r > 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = crossed.elapsed().as_secs_f64();
        latencies.push(secs);
        driver.0.abort();
        reconcile_ms.extend(driver.1.lock().unwrap().iter().copied());
        println!("trial {trial}: load crossed the target → replicas raised in {secs:.2} s");
    }
    latencies.sort_by(f64::total_cmp);
    reconcile_ms.sort_by(f64::total_cmp);
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    println!("pollSeconds {poll}: {trials} trials, crossing → decision mean {mean:.2} s, max {:.2} s (target ≤ {} s = 2 polls)",
        latencies[latencies.len() - 1], 2 * poll);
    println!("one poll (list pods, scrape, decide, apply, status): median {:.2} ms, max {:.2} ms",
        reconcile_ms[reconcile_ms.len() / 2], reconcile_ms[reconcile_ms.len() - 1]);
}
