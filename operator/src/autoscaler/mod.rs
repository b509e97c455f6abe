//! Autoscaling LLMDeployments from the engine's own metrics. In Builtin mode the reconciler
//! polls: it lists the pods, scrapes each ready one's `/metrics` concurrently, and asks the
//! pure decision function for the replica count it then applies to the Deployment.

pub mod decision;
pub mod external;
pub mod scrape;

pub use decision::{decide, Decision, Load, PodSample, Policy, Reason, Windows};

use crate::controller::build::selector_string;
use crate::crd::{AutoscalingMetrics, AutoscalingSpec, LLMDeployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_TARGET_REQUESTS: f64 = 16.0;
pub const DEFAULT_POLL_SECONDS: u64 = 5;
const DEFAULT_SCALE_DOWN_DELAY: u64 = 300;
/// Per pod; a pod slower than this counts as unknown for this poll.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn policy(spec: &AutoscalingSpec) -> Policy {
    let secs = |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |v| v.max(0) as u64));
    let min_replicas = spec.min_replicas.unwrap_or(1).max(0);
    Policy {
        min_replicas,
        max_replicas: spec.max_replicas.unwrap_or(min_replicas.max(1)).max(min_replicas),
        // With neither target set, scale on requests.
        target_requests_per_replica: spec.target_requests_per_replica
            .or(spec.target_kv_cache_usage.is_none().then_some(DEFAULT_TARGET_REQUESTS)),
        target_kv_cache_usage: spec.target_kv_cache_usage,
        scale_up_stabilization: secs(spec.scale_up_stabilization_seconds, 0),
        scale_down_delay: secs(spec.scale_down_delay_seconds, DEFAULT_SCALE_DOWN_DELAY),
    }
}

pub fn poll_interval(spec: &AutoscalingSpec) -> Duration {
    Duration::from_secs(spec.poll_seconds.map_or(DEFAULT_POLL_SECONDS, |s| s.max(1) as u64))
}

/// One poll's outcome.
#[derive(Debug, Clone)]
pub struct Poll {
    /// Replicas asked before this poll.
    pub current: i32,
    pub decision: Decision,
    pub load: Load,
    /// (pod, error) of ready pods that could not be scraped.
    pub scrape_errors: Vec<(String, String)>,
}

impl Poll {
    pub fn scaled(&self) -> bool {
        self.decision.desired != self.current
    }

    /// The status summary: per-replica figures over the pods that were scraped.
    pub fn summary(&self) -> AutoscalingMetrics {
        let n = self.load.scraped.max(1) as f64;
        let round = |v: f64| (v * 100.0).round() / 100.0;
        AutoscalingMetrics {
            scraped_pods: self.load.scraped as i32,
            unscraped_pods: self.load.unknown as i32,
            starting_pods: self.load.starting as i32,
            waiting_per_replica: round(self.load.waiting / n),
            running_per_replica: round(self.load.running / n),
            kv_cache_usage: round(self.load.kv_cache_usage / n),
            reason: self.decision.reason.as_str().into(),
        }
    }
}

/// What the builtin autoscaler remembers between polls, per LLMDeployment.
#[derive(Default)]
struct Memory {
    windows: Windows,
    /// The replica count this process last decided (ahead of the watched status).
    desired: Option<i32>,
}

/// Memory is per resource: `namespace/name`.
fn key(llm: &LLMDeployment) -> String {
    format!("{}/{}", llm.namespace().unwrap_or_default(), llm.name_any())
}

pub struct Autoscaler {
    http: reqwest::Client,
    memory: Mutex<HashMap<String, Memory>>,
}

impl Default for Autoscaler {
    fn default() -> Self {
        let http = reqwest::Client::builder().connect_timeout(SCRAPE_TIMEOUT).pool_max_idle_per_host(1).build()
            .expect("a plain HTTP client builds");
        Self { http, memory: Mutex::default() }
    }
}

impl Autoscaler {
    /// Lists the pods, scrapes the ready ones and decides.
    pub async fn poll(&self, client: &Client, llm: &LLMDeployment, spec: &AutoscalingSpec) -> Result<Poll, kube::Error> {
        let ns = llm.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let list = pods.list(&ListParams::default().labels(&selector_string(&llm.name_any()))).await?;
        let sampled = scrape::sample(&self.http, &list.items, llm.spec.port(), SCRAPE_TIMEOUT).await;
        let policy = policy(spec);
        let mut memory = self.memory.lock().unwrap();
        let m = memory.entry(key(llm)).or_default();
        let current = m.desired
            .or(llm.status.as_ref().and_then(|s| s.desired_replicas))
            .or(llm.spec.replicas)
            .unwrap_or(policy.min_replicas);
        let load = Load::of(&sampled.samples);
        let decision = decide(&policy, current, &load, &mut m.windows, Instant::now());
        m.desired = Some(decision.desired);
        Ok(Poll { current, decision, load, scrape_errors: sampled.errors })
    }

    /// Drops what is remembered of a resource (deleted, or autoscaling turned off), so a
    /// later enable starts from its spec.
    pub fn forget(&self, llm: &LLMDeployment) {
        self.memory.lock().unwrap().remove(&key(llm));
    }
}
