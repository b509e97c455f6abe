//! One reconciliation of an LLMDeployment: validate → build → server-side apply of every
//! child under one field manager → status (patched only when it changed).

use super::build::{build, validate, BuildConfig, Children, MANAGER};
use super::status::{self, Observed, Scaling};
use crate::autoscaler::{self, external, Autoscaler, Poll};
use crate::crd::{AutoscalingMode, AutoscalingSpec, LLMDeployment};
use crate::metrics::Metrics;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Shared by every reconciliation.
pub struct Context {
    pub client: Client,
    pub build: BuildConfig,
    pub recorder: Recorder,
    pub autoscaler: Autoscaler,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, build: BuildConfig) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance: None });
        Self { client, build, recorder, autoscaler: Autoscaler::default(), metrics: Arc::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the LLMDeployment has no namespace")]
    NoNamespace,
}

impl Error {
    /// Label for the operator's error metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::NoNamespace => "spec",
        }
    }
}

/// How often a healthy resource is looked at again without any change.
const RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(llm: Arc<LLMDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = llm.namespace().ok_or(Error::NoNamespace)?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Err(invalid) = validate(&llm.spec) {
        let seen = Observed { invalid: Some(invalid), ..Default::default() };
        write_status(&llm, &ctx, status::compute(&llm, &seen, now)).await?;
        // Nothing to retry until the spec changes.
        return Ok(Action::await_change());
    }
    let scaling = llm.spec.autoscaling.as_ref().filter(|a| a.enabled);
    let mode = scaling.map(|a| a.mode.unwrap_or_default());
    let poll = match scaling {
        Some(a) if mode == Some(AutoscalingMode::Builtin) => Some(ctx.autoscaler.poll(&ctx.client, &llm, a).await?),
        _ => {
            ctx.autoscaler.forget(&llm);
            None
        }
    };
    let children = build(&llm, &ctx.build, poll.as_ref().map(|p| p.decision.desired)).expect("validated");
    let desired_replicas = children.deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let applied = apply_children(&ctx.client, &ns, children).await?;
    let scaling_seen = match (scaling, mode) {
        (Some(a), Some(mode)) => Some(scale(&ctx, &ns, &llm, a, mode, poll.as_ref(), &applied).await?),
        _ => {
            remove_external(&ctx.client, &ns, &llm, None).await?;
            None
        }
    };
    let seen = Observed {
        invalid: None,
        deployment: applied.status,
        desired_replicas,
        chat_template_problem: check_chat_template(&ctx.client, &ns, &llm).await?,
        scaling: scaling_seen,
    };
    write_status(&llm, &ctx, status::compute(&llm, &seen, now)).await?;
    Ok(match scaling {
        Some(a) if mode == Some(AutoscalingMode::Builtin) => Action::requeue(autoscaler::poll_interval(a)),
        _ => Action::requeue(RESYNC),
    })
}

/// The autoscaling side of a reconcile: builtin polls are reported (metrics, an Event per
/// scale); HPA and KEDA modes apply their object and remove the other one.
async fn scale(ctx: &Context, ns: &str, llm: &LLMDeployment, spec: &AutoscalingSpec, mode: AutoscalingMode,
    poll: Option<&Poll>, applied: &Deployment) -> Result<Scaling, Error> {
    let policy = autoscaler::policy(spec);
    remove_external(&ctx.client, ns, llm, Some(mode)).await?;
    let active = match mode {
        AutoscalingMode::Builtin => {
            let p = poll.expect("builtin mode polls");
            let current = applied.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            ctx.metrics.observe_poll(ns, &llm.name_any(), p, current);
            for (pod, err) in &p.scrape_errors {
                tracing::warn!(llm = %llm.name_any(), %pod, error = %err, "scrape failed");
            }
            if p.scaled() {
                record_scale(ctx, llm, p).await;
            }
            let reason = p.decision.reason;
            let ok = reason != autoscaler::Reason::NoMetrics;
            let message = match p.scrape_errors.first() {
                Some((pod, err)) if !ok => format!("no pod could be scraped ({pod}: {err})"),
                _ => format!("{} replicas wanted ({} pods scraped, {} starting)", p.decision.desired, p.load.scraped, p.load.starting),
            };
            (ok, reason.as_str().to_string(), message)
        }
        AutoscalingMode::Hpa => {
            let hpa = external::hpa(llm, spec, &policy).expect("validated");
            apply(&ctx.client, ns, &hpa).await?;
            (true, "HPA".into(), format!("HorizontalPodAutoscaler {} scales on {}", llm.name_any(), external::WAITING_METRIC))
        }
        AutoscalingMode::Keda => {
            if keda_installed(&ctx.client).await? {
                let so = external::scaled_object(llm, spec, &policy, autoscaler::poll_interval(spec).as_secs()).expect("validated");
                let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &external::scaled_object_resource());
                api.patch(&llm.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&so)).await?;
                (true, "KEDA".into(), format!("ScaledObject {} queries {}", llm.name_any(), external::prometheus_query(llm)))
            } else {
                (false, "KEDANotInstalled".into(), "KEDA's ScaledObject CRD (keda.sh/v1alpha1) is not installed".into())
            }
        }
    };
    Ok(Scaling { active, metrics: poll.map(Poll::summary), scaled: poll.is_some_and(Poll::scaled) })
}

async fn keda_installed(client: &Client) -> Result<bool, kube::Error> {
    match client.list_api_group_resources("keda.sh/v1alpha1").await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "scaledobjects")),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the HPA / ScaledObject a previous mode created (known from the ScalingActive
/// condition's reason, so steady state costs no calls).
async fn remove_external(client: &Client, ns: &str, llm: &LLMDeployment, mode: Option<AutoscalingMode>) -> Result<(), kube::Error> {
    let before = llm.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "ScalingActive")).map(|c| c.reason.as_str());
    let name = llm.name_any();
    if before == Some("HPA") && mode != Some(AutoscalingMode::Hpa) {
        ignore_missing(Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns).delete(&name, &DeleteParams::default()).await)?;
    }
    if before == Some("KEDA") && mode != Some(AutoscalingMode::Keda) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &external::scaled_object_resource());
        ignore_missing(api.delete(&name, &DeleteParams::default()).await)?;
    }
    Ok(())
}

fn ignore_missing<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

async fn record_scale(ctx: &Context, llm: &LLMDeployment, p: &Poll) {
    let m = p.summary();
    let event = Event {
        type_: EventType::Normal,
        reason: if p.decision.desired > p.current { "ScaledUp" } else { "ScaledDown" }.into(),
        note: Some(format!("{} → {} replicas: {} (per scraped replica: {} waiting, {} running, KV cache {:.0}%; {} starting, {} unscraped)",
            p.current, p.decision.desired, m.reason, m.waiting_per_replica, m.running_per_replica, m.kv_cache_usage * 100.0,
            m.starting_pods, m.unscraped_pods)),
        action: "Scale".into(),
        secondary: None,
    };
    tracing::info!(llm = %llm.name_any(), from = p.current, to = p.decision.desired, reason = %m.reason, "scaled");
    if let Err(e) = ctx.recorder.publish(&event, &llm.object_ref(&())).await {
        tracing::warn!(error = %e, "recording an event");
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await
}

/// Applies every child; returns the Deployment as the API server has it now.
async fn apply_children(client: &Client, ns: &str, children: Children) -> Result<Deployment, kube::Error> {
    if let Some(cm) = &children.chat_template {
        apply(client, ns, cm).await?;
    }
    let deployment = apply(client, ns, &children.deployment).await?;
    apply(client, ns, &children.service).await?;
    let pdb_name = deployment.name_any();
    match &children.pdb {
        Some(pdb) => {
            apply(client, ns, pdb).await?;
        }
        None => {
            // Back to one replica: the budget goes (absent already is fine).
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
            ignore_missing(api.delete(&pdb_name, &DeleteParams::default()).await)?;
        }
    }
    Ok(deployment)
}

/// A chat template referenced by ConfigMap key must exist (an inline one is ours).
async fn check_chat_template(client: &Client, ns: &str, llm: &LLMDeployment) -> Result<Option<(String, String)>, Error> {
    let Some(r) = llm.spec.model.chat_template.as_ref().and_then(|t| t.config_map_key_ref.as_ref()) else {
        return Ok(None);
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(match api.get_opt(&r.name).await? {
        None => Some(("ConfigMapNotFound".into(), format!("ConfigMap {} does not exist", r.name))),
        Some(cm) if !cm.data.as_ref().is_some_and(|d| d.contains_key(&r.key)) => {
            Some(("KeyNotFound".into(), format!("ConfigMap {} has no key {}", r.name, r.key)))
        }
        Some(_) => None,
    })
}

/// Patches the status subresource when it differs from what is stored, and records an
/// Event when readiness changes.
async fn write_status(llm: &LLMDeployment, ctx: &Context, new: crate::crd::LLMDeploymentStatus) -> Result<(), Error> {
    let old = llm.status.clone().unwrap_or_default();
    if old == new {
        return Ok(());
    }
    let ns = llm.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LLMDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"status": new});
    api.patch_status(&llm.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let (before, after) = (status::ready(&old), status::ready(&new));
    if before.map(|c| (&c.status, &c.reason)) != after.map(|c| (&c.status, &c.reason)) {
        if let Some(c) = after {
            let event = Event {
                type_: if c.status == "True" { EventType::Normal } else { EventType::Warning },
                reason: c.reason.clone(),
                note: Some(c.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            // Events are best effort: a failure to record one must not fail the reconcile.
            if let Err(e) = ctx.recorder.publish(&event, &llm.object_ref(&())).await {
                tracing::warn!(error = %e, "recording an event");
            }
        }
    }
    Ok(())
}

/// Requeue with a delay after an error (the API server may be briefly unavailable).
pub fn error_policy(_llm: Arc<LLMDeployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}
