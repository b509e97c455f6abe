//! HPA and KEDA modes: for clusters that already run a metrics adapter or KEDA, the operator
//! hands scaling to them. Both target the LLMDeployment's scale subresource (not the
//! Deployment, whose replicas the operator applies), so `spec.replicas` is what they move.

use super::Policy;
use crate::controller::build::{child_meta, SpecError};
use crate::crd::{AutoscalingSpec, LLMDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::json;

pub const WAITING_METRIC: &str = "vllm:num_requests_waiting";
pub const KV_METRIC: &str = "vllm:kv_cache_usage_perc";

/// KEDA's ScaledObject (`keda.sh/v1alpha1`), applied as a dynamic object: its CRD is KEDA's.
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"), "scaledobjects")
}

fn target_ref(llm: &LLMDeployment) -> CrossVersionObjectReference {
    CrossVersionObjectReference { api_version: Some("kandle.dev/v1alpha1".into()), kind: "LLMDeployment".into(), name: llm.name_any() }
}

/// A Kubernetes quantity for a target such as 0.8 (→ "800m") or 16 (→ "16").
fn quantity(v: f64) -> Quantity {
    let milli = (v * 1000.0).round() as i64;
    Quantity(if milli % 1000 == 0 { (milli / 1000).to_string() } else { format!("{milli}m") })
}

pub fn hpa(llm: &LLMDeployment, spec: &AutoscalingSpec, policy: &Policy) -> Result<HorizontalPodAutoscaler, SpecError> {
    let pods_metric = |name: &str, target: f64| MetricSpec {
        type_: "Pods".into(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier { name: name.into(), selector: None },
            target: MetricTarget { type_: "AverageValue".into(), average_value: Some(quantity(target)), ..Default::default() },
        }),
        ..Default::default()
    };
    let mut metrics = vec![pods_metric(WAITING_METRIC, policy.target_requests_per_replica.unwrap_or(super::DEFAULT_TARGET_REQUESTS))];
    if let Some(kv) = spec.target_kv_cache_usage {
        metrics.push(pods_metric(KV_METRIC, kv));
    }
    Ok(HorizontalPodAutoscaler {
        metadata: child_meta(llm, llm.name_any())?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: target_ref(llm),
            // An HPA cannot go below one replica (scale to zero needs an alpha gate).
            min_replicas: Some(policy.min_replicas.max(1)),
            max_replicas: policy.max_replicas.max(1),
            metrics: Some(metrics),
            behavior: Some(behavior(policy)),
        }),
        status: None,
    })
}

/// The same windows as the builtin autoscaler: up at once after stabilization, down one
/// pod per scale-down delay.
fn behavior(policy: &Policy) -> HorizontalPodAutoscalerBehavior {
    // HPA caps both at 3600 s / 1800 s.
    let up = policy.scale_up_stabilization.as_secs().min(3600) as i32;
    let down = policy.scale_down_delay.as_secs().min(3600) as i32;
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules { stabilization_window_seconds: Some(up), ..Default::default() }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(down),
            policies: Some(vec![HPAScalingPolicy { type_: "Pods".into(), value: 1, period_seconds: down.clamp(1, 1800) }]),
            ..Default::default()
        }),
    }
}

/// Waiting + running requests of this deployment's pods, as Prometheus scrapes them with the
/// usual `namespace`/`pod` target labels.
pub fn prometheus_query(llm: &LLMDeployment) -> String {
    let sel = format!("namespace=\"{}\",pod=~\"{}-[a-z0-9]+-[a-z0-9]+\"", llm.namespace().unwrap_or_default(), llm.name_any());
    format!("sum(vllm:num_requests_waiting{{{sel}}}) + sum(vllm:num_requests_running{{{sel}}})")
}

pub fn scaled_object(llm: &LLMDeployment, spec: &AutoscalingSpec, policy: &Policy, poll_seconds: u64)
    -> Result<DynamicObject, SpecError> {
    let target = policy.target_requests_per_replica.unwrap_or(super::DEFAULT_TARGET_REQUESTS);
    let mut obj = DynamicObject::new(&llm.name_any(), &scaled_object_resource());
    obj.metadata = child_meta(llm, llm.name_any())?;
    let r = target_ref(llm);
    obj.data = json!({"spec": {
        "scaleTargetRef": {"apiVersion": r.api_version, "kind": r.kind, "name": r.name},
        "minReplicaCount": policy.min_replicas,
        "maxReplicaCount": policy.max_replicas,
        "pollingInterval": poll_seconds,
        "cooldownPeriod": policy.scale_down_delay.as_secs(),
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(policy)}},
        "triggers": [{
            "type": "prometheus",
            "metadata": {
                "serverAddress": spec.prometheus_address.clone().unwrap_or_default(),
                "query": prometheus_query(llm),
                "threshold": format!("{target}"),
            },
        }],
    }});
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity(0.8).0, "800m");
        assert_eq!(quantity(16.0).0, "16");
        assert_eq!(quantity(2.5).0, "2500m");
    }
}
