//! The operator's own Prometheus metrics: reconciles by result, their duration, and errors
//! by category.

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

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
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
        Self { registry, reconciles, errors, duration, leader }
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

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
