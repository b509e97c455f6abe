//! Reconciliation: validate → build (pure, `build`) → server-side apply (`reconcile`) →
//! status (pure, `status`).

pub mod build;
pub mod reconcile;
pub mod status;
