//! Reading the pods' own `/metrics` (vLLM names, Prometheus text) into decision samples.

use super::decision::PodSample;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use std::time::Duration;

/// The gauges a decision needs, summed over label sets (one per served model name).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerLoad {
    pub waiting: f64,
    pub running: f64,
    pub kv_cache_usage: f64,
}

/// Parses a scrape; every input must be present (a pod without them is not a
/// kandle-server/vLLM we can judge, which counts as unknown rather than idle).
pub fn parse(text: &str) -> Result<ServerLoad, String> {
    // Families the parser rejects (OpenMetrics-style counters whose samples carry `_total`
    // under a TYPE line without it) are not ones we read: keep what did parse.
    let (metrics, _errors) = prom_text_format_parser::parse_scrape(text);
    let sum = |name: &str| -> Option<f64> {
        let m = metrics.iter().find(|m| m.name == name)?;
        Some(m.samples.iter().map(|s| s.value.value.parse::<f64>().unwrap_or(0.0)).sum())
    };
    let need = |name: &str| sum(name).ok_or_else(|| format!("{name} missing"));
    Ok(ServerLoad {
        waiting: need("vllm:num_requests_waiting")?,
        running: need("vllm:num_requests_running")?,
        // vLLM before 0.10 names it gpu_cache_usage_perc.
        kv_cache_usage: sum("vllm:kv_cache_usage_perc").or_else(|| sum("vllm:gpu_cache_usage_perc"))
            .ok_or("vllm:kv_cache_usage_perc missing")?,
    })
}

/// Where a pod stands for autoscaling.
#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Ready: scrape this address.
    Ready(String),
    Starting,
    /// Terminating or finished: neither load nor capacity.
    Gone,
}

pub fn pod_state(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Gone;
    }
    let Some(status) = &pod.status else { return PodState::Starting };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return PodState::Gone;
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    match (&status.pod_ip, ready) {
        (Some(ip), true) if !ip.is_empty() => PodState::Ready(ip.clone()),
        _ => PodState::Starting,
    }
}

pub struct Sampled {
    pub samples: Vec<PodSample>,
    /// (pod, error) for ready pods that could not be scraped.
    pub errors: Vec<(String, String)>,
}

/// Scrapes every ready pod at once, each with `timeout`.
pub async fn sample(http: &reqwest::Client, pods: &[Pod], port: i32, timeout: Duration) -> Sampled {
    let mut samples = vec![];
    let mut targets = vec![];
    for pod in pods {
        match pod_state(pod) {
            PodState::Ready(ip) => targets.push((pod.metadata.name.clone().unwrap_or_default(), ip)),
            PodState::Starting => samples.push(PodSample::Starting),
            PodState::Gone => {}
        }
    }
    let results = join_all(targets.iter().map(|(_, ip)| {
        // IPv6 pod addresses need brackets in a URL.
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.clone() };
        fetch(http, format!("http://{host}:{port}/metrics"), timeout)
    })).await;
    let mut errors = vec![];
    for ((name, _), r) in targets.into_iter().zip(results) {
        match r {
            Ok(l) => samples.push(PodSample::Metrics { waiting: l.waiting, running: l.running, kv_cache_usage: l.kv_cache_usage }),
            Err(e) => {
                samples.push(PodSample::Unknown);
                errors.push((name, e));
            }
        }
    }
    Sampled { samples, errors }
}

async fn fetch(http: &reqwest::Client, url: String, timeout: Duration) -> Result<ServerLoad, String> {
    let response = http.get(&url).timeout(timeout).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    let text = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kandle_server_scrape() {
        let text = include_str!("../../tests/fixtures/kandle-server-metrics.txt")
            .replace("vllm:num_requests_waiting{model_name=\"models/SmolLM2-135M-Instruct.Q4_1.gguf\"} 0.0",
                "vllm:num_requests_waiting{model_name=\"models/SmolLM2-135M-Instruct.Q4_1.gguf\"} 7.0")
            .replace("vllm:kv_cache_usage_perc{model_name=\"models/SmolLM2-135M-Instruct.Q4_1.gguf\"} 0.0",
                "vllm:kv_cache_usage_perc{model_name=\"models/SmolLM2-135M-Instruct.Q4_1.gguf\"} 0.25");
        let l = parse(&text).unwrap();
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (7.0, 0.0, 0.25));
    }

    #[test]
    fn vllm_names_and_missing_metrics() {
        let text = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"a\"} 3\n\
            vllm:num_requests_running{model_name=\"b\"} 2\n# TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"a\"} 1\n# TYPE vllm:gpu_cache_usage_perc gauge\n\
            vllm:gpu_cache_usage_perc{model_name=\"a\"} 0.5\n";
        assert_eq!(parse(text).unwrap(), ServerLoad { waiting: 1.0, running: 5.0, kv_cache_usage: 0.5 });
        assert!(parse("# TYPE up gauge\nup 1\n").unwrap_err().contains("vllm:num_requests_waiting missing"));
    }
}
