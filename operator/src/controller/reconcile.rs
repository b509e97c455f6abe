//! One reconciliation of an LLMDeployment: validate → build → server-side apply of every
//! child under one field manager → status (patched only when it changed).

use super::build::{build, validate, BuildConfig, Children, MANAGER};
use super::status::{self, Observed};
use crate::crd::LLMDeployment;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
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
}

impl Context {
    pub fn new(client: Client, build: BuildConfig) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance: None });
        Self { client, build, recorder }
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
    // Replicas come from spec.replicas until the autoscaler (a later issue) supplies its
    // decision here.
    let children = build(&llm, &ctx.build, None).expect("validated");
    let desired_replicas = children.deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let applied = apply_children(&ctx.client, &ns, children).await?;
    let seen = Observed {
        invalid: None,
        deployment: applied.status,
        desired_replicas,
        chat_template_problem: check_chat_template(&ctx.client, &ns, &llm).await?,
    };
    write_status(&llm, &ctx, status::compute(&llm, &seen, now)).await?;
    Ok(Action::requeue(RESYNC))
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
            match api.delete(&pdb_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => return Err(e),
            }
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
