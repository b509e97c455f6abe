//! Prometheus metrics under vLLM's names (`vllm:*`, label `model_name`), so dashboards,
//! KEDA rules and the operator's autoscaler read Kandle exactly as they read vLLM.
//! Engine gauges and token counters are read from the engine's atomics at scrape time;
//! per-request latencies are observed by the HTTP side as events stream out.

use crate::engine::{FinishReason, StatsSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The engine numbers a scrape reads; set once the model is loaded.
pub type StatsSource = Arc<OnceLock<Box<dyn Fn() -> StatsSnapshot + Send + Sync>>>;

// vLLM's bucket boundaries, so histograms line up with existing dashboards.
const TTFT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
const ITL_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const REQUEST_BUCKETS: &[f64] = &[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0];

type ReasonLabels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_request_latency: Histogram,
    request_queue_time: Histogram,
    request_success: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new(model_name: &str, stats: StatsSource) -> Self {
        let mut registry = Registry::with_labels(
            [(Cow::Borrowed("model_name"), Cow::Owned(model_name.to_string()))].into_iter());
        let hist = |b: &[f64]| Histogram::new(b.iter().copied());
        let m = Self {
            time_to_first_token: hist(TTFT_BUCKETS),
            inter_token_latency: hist(ITL_BUCKETS),
            e2e_request_latency: hist(REQUEST_BUCKETS),
            request_queue_time: hist(REQUEST_BUCKETS),
            request_success: Family::default(),
            registry: Registry::default(),
        };
        registry.register("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds",
            m.time_to_first_token.clone());
        registry.register("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds",
            m.inter_token_latency.clone());
        registry.register("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds",
            m.e2e_request_latency.clone());
        registry.register("vllm:request_queue_time_seconds", "Histogram of time spent waiting before the first step",
            m.request_queue_time.clone());
        registry.register("vllm:request_success", "Count of successfully processed requests (one per choice)",
            m.request_success.clone());
        registry.register_collector(Box::new(EngineCollector { stats }));
        Self { registry, ..m }
    }

    pub fn observe_first_token(&self, since_arrival: Duration) {
        self.time_to_first_token.observe(since_arrival.as_secs_f64());
    }
    pub fn observe_inter_token(&self, gap: Duration) {
        self.inter_token_latency.observe(gap.as_secs_f64());
    }
    pub fn observe_request(&self, e2e: Duration, queue: Duration) {
        self.e2e_request_latency.observe(e2e.as_secs_f64());
        self.request_queue_time.observe(queue.as_secs_f64());
    }
    pub fn count_finished(&self, reason: FinishReason) {
        let reason = match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::ToolCalls => "tool_calls",
        };
        self.request_success.get_or_create(&vec![("finished_reason", reason)]).inc();
    }

    /// The Prometheus text exposition (OpenMetrics flavour, as prometheus-client writes it).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

struct EngineCollector {
    stats: StatsSource,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineCollector")
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Before the model is loaded the gauges read zero: the pod is idle, not unknown.
        let s = self.stats.get().map(|f| f()).unwrap_or_default();
        gauge(&mut enc, "vllm:num_requests_running", "Number of requests in model execution batches",
            s.num_requests_running as f64)?;
        gauge(&mut enc, "vllm:num_requests_waiting", "Number of requests waiting to be processed",
            s.num_requests_waiting as f64)?;
        gauge(&mut enc, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage", s.kv_cache_usage_perc)?;
        gauge(&mut enc, "vllm:gpu_cache_usage_perc", "Deprecated alias of vllm:kv_cache_usage_perc", s.kv_cache_usage_perc)?;
        counter(&mut enc, "vllm:num_preemptions", "Cumulative number of preemptions from the engine", s.num_preemptions_total)?;
        counter(&mut enc, "vllm:prompt_tokens", "Number of prefill tokens processed", s.prompt_tokens_total)?;
        counter(&mut enc, "vllm:generation_tokens", "Number of generation tokens processed", s.generation_tokens_total)?;
        if s.kv_total_blocks > 0 {
            let g = ConstGauge::new(1i64);
            let mut m = enc.encode_descriptor("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                None, g.metric_type())?;
            let labels = [("block_size", s.block_size.to_string()), ("num_gpu_blocks", s.kv_total_blocks.to_string())];
            g.encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
