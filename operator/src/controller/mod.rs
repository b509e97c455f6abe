//! Reconciliation: validate → build (pure, `build`) → server-side apply → status.

pub mod build;
