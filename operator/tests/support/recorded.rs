//! A recorded kandle-server `/metrics` page with the three gauges the autoscaler reads set
//! to chosen values (shared by the autoscaler test and benchmark).

// Only some of the test crates that share `support/` use it.
#![allow(dead_code)]

const RECORDED: &str = include_str!("../fixtures/kandle-server-metrics.txt");

/// The recording with `(waiting, running, kv usage)` in place of its zeros.
pub fn scrape_text(load: (f64, f64, f64)) -> String {
    let model = "{model_name=\"models/SmolLM2-135M-Instruct.Q4_1.gguf\"}";
    RECORDED
        .replace(&format!("vllm:num_requests_waiting{model} 0.0"), &format!("vllm:num_requests_waiting{model} {}", load.0))
        .replace(&format!("vllm:num_requests_running{model} 0.0"), &format!("vllm:num_requests_running{model} {}", load.1))
        .replace(&format!("vllm:kv_cache_usage_perc{model} 0.0"), &format!("vllm:kv_cache_usage_perc{model} {}", load.2))
}
