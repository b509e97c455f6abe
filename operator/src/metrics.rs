//! The operator's own Prometheus metrics: reconciles by result, their duration, errors by
//! category, leadership, and the builtin autoscaler's decisions, replicas and scrape errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub namespace: String,
    pub name: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
    decisions: Family<DecisionLabel, Counter>,
    desired: Family<ObjectLabel, Gauge>,
    current: Family<ObjectLabel, Gauge>,
    scrape_errors: Family<ObjectLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register("kandle_operator_reconciles", "Reconciliations by result", reconciles.clone());
        registry.register("kandle_operator_reconcile_errors", "Failed reconciliations by error category", errors.clone());
        registry.register("kandle_operator_reconcile_duration_seconds", "Time one reconciliation took", duration.clone());
        let leader = Gauge::default();
        registry.register("kandle_operator_leader", "1 while this replica holds the leader lease and reconciles", leader.clone());
        let decisions = Family::<DecisionLabel, Counter>::default();
        let desired = Family::<ObjectLabel, Gauge>::default();
        let current = Family::<ObjectLabel, Gauge>::default();
        let scrape_errors = Family::<ObjectLabel, Counter>::default();
        registry.register("kandle_operator_autoscaler_decisions", "Builtin autoscaler decisions by direction and reason", decisions.clone());
        registry.register("kandle_operator_autoscaler_desired_replicas", "Replicas the autoscaler asks for", desired.clone());
        registry.register("kandle_operator_autoscaler_current_replicas", "Replicas the Deployment has", current.clone());
        registry.register("kandle_operator_autoscaler_scrape_errors", "Ready pods whose /metrics could not be read", scrape_errors.clone());
        Self { registry, reconciles, errors, duration, leader, decisions, desired, current, scrape_errors }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration, error: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        self.reconciles.get_or_create(&ResultLabel { result: if error.is_some() { "error" } else { "success" } }).inc();
        if let Some(category) = error {
            self.errors.get_or_create(&CategoryLabel { category }).inc();
        }
    }

    pub fn observe_poll(&self, namespace: &str, name: &str, poll: &crate::autoscaler::Poll, current_replicas: i32) {
        let direction = match poll.decision.desired.cmp(&poll.current) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "none",
        };
        self.decisions.get_or_create(&DecisionLabel { direction, reason: poll.decision.reason.as_str() }).inc();
        let obj = ObjectLabel { namespace: namespace.into(), name: name.into() };
        self.desired.get_or_create(&obj).set(poll.decision.desired as i64);
        self.current.get_or_create(&obj).set(current_replicas as i64);
        if !poll.scrape_errors.is_empty() {
            self.scrape_errors.get_or_create(&obj).inc_by(poll.scrape_errors.len() as u64);
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
