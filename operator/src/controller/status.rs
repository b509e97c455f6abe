//! The LLMDeployment status as a pure function of what the reconciler saw: the spec's
//! validity, the Deployment's status and the chat template's resolution. Conditions keep
//! their `lastTransitionTime` while their status does not change.

use super::build::{endpoint, model_summary, selector_string, SpecError};
use crate::crd::{AutoscalingMetrics, LLMDeployment, LLMDeploymentStatus};
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What the reconciler learnt this round.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Set when the spec cannot be built.
    pub invalid: Option<SpecError>,
    /// The Deployment's status (None before it exists).
    pub deployment: Option<DeploymentStatus>,
    /// Replicas asked of the Deployment.
    pub desired_replicas: i32,
    /// Why a referenced chat template is not usable (None: fine or none referenced).
    pub chat_template_problem: Option<(String, String)>,
    /// Set when autoscaling is enabled.
    pub scaling: Option<Scaling>,
}

/// What the autoscaling side of a reconcile found.
#[derive(Debug, Clone, Default)]
pub struct Scaling {
    /// The ScalingActive condition: (status, reason, message).
    pub active: (bool, String, String),
    /// The builtin autoscaler's poll.
    pub metrics: Option<AutoscalingMetrics>,
    /// The replica count changed this round.
    pub scaled: bool,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// `new` conditions, with the transition time of an `old` one of the same type and status.
fn keep_transition_times(new: Vec<Condition>, old: &[Condition]) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            c
        })
        .collect()
}

pub fn compute(llm: &LLMDeployment, seen: &Observed, now: Time) -> LLMDeploymentStatus {
    let generation = llm.metadata.generation;
    let old = llm.status.clone().unwrap_or_default();
    let name = llm.metadata.name.clone().unwrap_or_default();
    let mut status = LLMDeploymentStatus {
        observed_generation: generation,
        selector: Some(selector_string(&name)),
        model: Some(model_summary(&llm.spec)),
        last_scale_time: old.last_scale_time.clone(),
        ..Default::default()
    };
    let conditions = if let Some(err) = &seen.invalid {
        let msg = err.to_string();
        let source_ok = !matches!(err, SpecError::ModelSource(_) | SpecError::Url(_));
        vec![
            condition("Ready", false, "InvalidSpec", msg.clone(), generation, &now),
            condition("Progressing", false, "InvalidSpec", msg.clone(), generation, &now),
            condition("Degraded", true, "InvalidSpec", msg.clone(), generation, &now),
            condition("ModelSourceResolved", source_ok, if source_ok { "Resolved" } else { "InvalidSpec" },
                if source_ok { model_summary(&llm.spec) } else { msg }, generation, &now),
        ]
    } else {
        let d = seen.deployment.clone().unwrap_or_default();
        let desired = seen.desired_replicas;
        let ready = d.ready_replicas.unwrap_or(0);
        let updated = d.updated_replicas.unwrap_or(0);
        status.replicas = Some(d.replicas.unwrap_or(0));
        status.ready_replicas = Some(ready);
        status.desired_replicas = Some(desired);
        status.endpoint = Some(endpoint(llm));
        let failing = d.conditions.iter().flatten().find(|c| {
            (c.type_ == "ReplicaFailure" && c.status == "True")
                || (c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        });
        let rolling = updated < desired || ready < desired || d.replicas.unwrap_or(0) > desired;
        let mut conds = vec![
            if ready > 0 {
                condition("Ready", true, "Serving", format!("{ready}/{desired} replicas ready"), generation, &now)
            } else if desired == 0 {
                condition("Ready", false, "ScaledToZero", "no replicas requested".into(), generation, &now)
            } else {
                condition("Ready", false, "NoReadyReplicas", format!("0/{desired} replicas ready (loading the model?)"),
                    generation, &now)
            },
            if rolling {
                condition("Progressing", true, "RollingOut", format!("{updated} updated, {ready} ready of {desired}"),
                    generation, &now)
            } else {
                condition("Progressing", false, "Complete", format!("{ready}/{desired} replicas up to date"), generation, &now)
            },
            match failing {
                Some(c) => condition("Degraded", true, c.reason.as_deref().unwrap_or("DeploymentFailure"),
                    c.message.clone().unwrap_or_default(), generation, &now),
                None => condition("Degraded", false, "AsExpected", String::new(), generation, &now),
            },
            condition("ModelSourceResolved", true, "Resolved", model_summary(&llm.spec), generation, &now),
        ];
        if let Some(sc) = &seen.scaling {
            let (ok, reason, message) = &sc.active;
            conds.push(condition("ScalingActive", *ok, reason, message.clone(), generation, &now));
            status.metrics = sc.metrics.clone();
            if sc.scaled {
                status.last_scale_time = Some(now.clone());
            }
        }
        if llm.spec.model.chat_template.is_some() {
            conds.push(match &seen.chat_template_problem {
                Some((reason, msg)) => condition("ChatTemplateResolved", false, reason, msg.clone(), generation, &now),
                None => condition("ChatTemplateResolved", true, "Resolved", String::new(), generation, &now),
            });
        }
        conds
    };
    status.conditions = keep_transition_times(conditions, &old.conditions);
    status
}

/// The status's Ready condition.
pub fn ready(status: &LLMDeploymentStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == "Ready")
}
