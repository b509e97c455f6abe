//! Reconcile latency for 200 LLMDeployments against the in-memory test API (operator-side
//! time: building, serialising, the client's request/response handling and status
//! computation; the fake API answers in microseconds).
//!
//!     cargo bench -p kandle-operator --bench reconcile

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use kandle_operator::controller::build::BuildConfig;
use kandle_operator::controller::reconcile::{reconcile, Context};
use kandle_operator::crd::LLMDeployment;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn resource(i: usize) -> LLMDeployment {
    let model = match i % 4 {
        0 => json!({"pvc": {"claimName": "models", "path": format!("m{i}")}}),
        1 => json!({"huggingFace": {"repo": format!("org/model-{i}")}, "chatTemplate": {"inline": "{{ messages }}"}}),
        2 => json!({"url": format!("https://example.com/m{i}.gguf")}),
        _ => json!({"image": {"reference": format!("registry.example/m:{i}")}}),
    };
    serde_json::from_value(json!({
        "apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment",
        "metadata": {"name": format!("llm-{i}"), "namespace": "bench", "uid": format!("u-{i}"), "generation": 1},
        "spec": {"model": model, "replicas": 1 + i % 3, "server": {"resources": {"gpus": i % 2}},
            "autoscaling": {"enabled": i % 5 == 0, "minReplicas": 1, "maxReplicas": 4}},
    }))
    .unwrap()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p / 100.0).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let store = Arc::new(Mutex::new(fake_api::Store::default()));
    store.lock().unwrap().deployment_status = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
    let ctx = Arc::new(Context::new(fake_api::start(store.clone()), BuildConfig { server_image: "kandle-server:bench".into() }));
    for round in ["first (creates everything)", "steady state (nothing changed)"] {
        let mut times = vec![];
        for i in 0..200 {
            let mut llm = resource(i);
            let path = format!("/apis/kandle.dev/v1alpha1/namespaces/bench/llmdeployments/llm-{i}");
            // The status the API server holds (after the first round: what the operator wrote).
            let stored = store.lock().unwrap().objects.get(&path).and_then(|o| o.get("status").cloned());
            llm.status = stored.and_then(|s| serde_json::from_value(s).ok());
            store.lock().unwrap().objects.insert(path, serde_json::to_value(&llm).unwrap());
            let t = Instant::now();
            reconcile(Arc::new(llm), ctx.clone()).await.expect("reconcile");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("{round}: 200 LLMDeployments, reconcile p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            pct(&times, 50.0), pct(&times, 99.0), times[times.len() - 1]);
    }
}
