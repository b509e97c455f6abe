//! `kandle-operator run`: watches LLMDeployments (one namespace or all) and the objects they
//! own, reconciles them, and serves `/healthz`, `/readyz` and `/metrics`.

use crate::controller::build::BuildConfig;
use crate::controller::reconcile::{error_policy, reconcile, Context, Error};
use crate::crd::LLMDeployment;
use crate::leader::{ElectionConfig, Leadership};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// (API group, plural) of every kind the controller lists and watches: the LLMDeployments
/// and the kinds `.owns()` below. The RBAC test reads this.
pub fn watched_kinds() -> Vec<(String, String)> {
    fn gr<K: kube::Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }
    vec![gr::<LLMDeployment>(), gr::<Deployment>(), gr::<Service>(), gr::<ConfigMap>(), gr::<PodDisruptionBudget>()]
}

pub struct RunConfig {
    pub watch_namespace: Option<String>,
    pub server_image: String,
    pub probe_addr: String,
    /// Reconcile only while holding this Lease (for more than one replica).
    pub election: Option<ElectionConfig>,
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

struct State {
    ctx: Arc<Context>,
}

pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let api = |c: &Client| -> (Api<LLMDeployment>, Api<Deployment>, Api<Service>, Api<ConfigMap>, Api<PodDisruptionBudget>) {
        match &cfg.watch_namespace {
            Some(ns) => (Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns), Api::namespaced(c.clone(), ns)),
            None => (Api::all(c.clone()), Api::all(c.clone()), Api::all(c.clone()), Api::all(c.clone()), Api::all(c.clone())),
        }
    };
    let (llms, deployments, services, config_maps, pdbs) = api(&client);
    // Fail fast with a clear message when the CRD is not installed.
    llms.list(&kube::api::ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!("cannot list LLMDeployments ({e}); is the CRD installed? kubectl apply -f crds/llmdeployment.yaml")
    })?;
    let state = Arc::new(State {
        ctx: Arc::new(Context::new(client, BuildConfig { server_image: cfg.server_image })),
    });
    let ready = Arc::new(AtomicBool::new(false));
    let probes = {
        let (state, ready) = (state.clone(), ready.clone());
        axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move { if ready { (axum::http::StatusCode::OK, "ok") } else { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting") } }
            }))
            .route("/metrics", get(move || {
                let body = state.ctx.metrics.encode();
                async move { body }
            }))
    };
    let listener = tokio::net::TcpListener::bind(&cfg.probe_addr).await?;
    tokio::spawn(async move { axum::serve(listener, probes).await });
    // A standby replica is healthy and ready; it just does not reconcile.
    ready.store(true, Ordering::Relaxed);
    let leadership = match &cfg.election {
        Some(e) => tokio::select! {
            l = Leadership::acquire(state.ctx.client.clone(), e) => Some(l?),
            _ = shutdown_signal() => {
                tracing::info!("shut down before becoming the leader");
                return Ok(());
            }
        },
        None => None,
    };
    state.ctx.metrics.set_leader(true);
    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let lost_lease = leadership.as_ref().map(|l| l.lost());
        let lost = lost.clone();
        async move {
            let lost_lease = async move {
                match lost_lease {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("shutting down"),
                _ = lost_lease => {
                    tracing::error!("lost the leader lease; stopping so that only one replica reconciles");
                    lost.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    tracing::info!(namespace = cfg.watch_namespace.as_deref().unwrap_or("<all>"), probes = %cfg.probe_addr, "starting the controller");
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kandle-operator");
    Controller::new(llms, watcher::Config::default())
        .owns(deployments, owned.clone())
        .owns(services, owned.clone())
        .owns(config_maps, owned.clone())
        .owns(pdbs, owned)
        .graceful_shutdown_on(stop)
        .run(
            |llm, state: Arc<State>| async move {
                let t = Instant::now();
                let result = reconcile(llm, state.ctx.clone()).await;
                state.ctx.metrics.observe(t.elapsed(), result.as_ref().err().map(Error::category));
                result
            },
            |llm, err: &Error, state: Arc<State>| -> Action { error_policy(llm, err, state.ctx.clone()) },
            state.clone(),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    state.ctx.metrics.set_leader(false);
    if let Some(l) = leadership {
        l.release().await;
    }
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!("lost the leader lease");
    }
    tracing::info!("shut down");
    Ok(())
}
