//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager), so several
//! operator replicas can run and only one reconciles. Like controller-runtime, a replica
//! that loses the lease stops (and is restarted by its Deployment) rather than risk two
//! leaders writing the same objects.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct ElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a lease lasts without renewal (a crashed leader is replaced after this).
    pub lease_duration_secs: u64,
    /// How long before expiry the leader renews.
    pub renew_before_secs: u64,
}

/// A lease this process holds until `release` (or until it is lost).
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Waits until this replica holds the lease.
    pub async fn acquire(client: Client, cfg: &ElectionConfig) -> anyhow::Result<Self> {
        let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
            .with_namespace(&cfg.namespace)
            .with_identity(&cfg.identity)
            .with_duration(cfg.lease_duration_secs)
            .with_grace(cfg.renew_before_secs)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("lease {}/{}: {e}", cfg.namespace, cfg.lease_name))?;
        let (mut state, task) = manager.watch().await;
        tracing::info!(lease = %cfg.lease_name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting for leadership");
        while !*state.borrow_and_update() {
            if state.changed().await.is_err() {
                let err = match task.await {
                    Ok(Err(e)) => e.to_string(),
                    other => format!("{other:?}"),
                };
                anyhow::bail!("leader election stopped: {err}");
            }
        }
        tracing::info!(identity = %cfg.identity, "acquired leadership");
        Ok(Self { state, task })
    }

    /// Resolves when the lease is lost (another replica took it, or renewals failed).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            while *state.borrow_and_update() {
                if state.changed().await.is_err() {
                    break;
                }
            }
        }
    }

    /// Gives the lease up so a standby replica takes over without waiting for expiry.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released leadership"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the lease failed; it expires on its own"),
            Err(e) => tracing::warn!(error = %e, "lease task failed"),
        }
    }
}
