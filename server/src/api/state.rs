//! What every handler shares: the configuration, the engine once it is loaded, the
//! server's lifecycle phase and the registry of in-flight requests.

use super::error::ApiError;
use crate::config::ServeArgs;
use crate::engine::constraint::Guidance;
use crate::embed::EmbedHandle;
use crate::engine::{EngineHandle, StatsSnapshot};
use crate::metrics::{Metrics, StatsSource};
use crate::model::GenerationDefaults;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The loaded model and what the routes need to know about it.
pub struct Serving {
    pub engine: EngineHandle,
    pub defaults: GenerationDefaults,
    pub max_model_len: usize,
    /// Unix time the model finished loading (`created` in /v1/models).
    pub created: u64,
    /// From tokenizer_config.json (`right` when absent), reported by /v1/info.
    pub truncation_side: String,
    /// Structured-output compiler for this tokenizer, or why there is none.
    pub guidance: Result<Arc<Guidance>, String>,
}

/// A loaded embedding model (servers started with an encoder).
pub struct EmbedServing {
    pub embedder: EmbedHandle,
    pub created: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Loading = 0,
    Ready = 1,
    Draining = 2,
    Failed = 3,
}

pub struct AppState {
    pub args: ServeArgs,
    /// Names accepted in `model`; the first is the one reported.
    pub served_names: Vec<String>,
    serving: OnceLock<Serving>,
    embedding: OnceLock<EmbedServing>,
    phase: AtomicU8,
    pub inflight: InFlight,
    pub metrics: Metrics,
    stats: StatsSource,
}

impl AppState {
    pub fn new(args: ServeArgs) -> Self {
        let served_names = if args.server.served_model_name.is_empty() {
            // vLLM's default: the --model argument as given.
            vec![args.model.model.as_ref().map(|p| p.display().to_string()).unwrap_or_default()]
        } else {
            args.server.served_model_name.clone()
        };
        let stats = StatsSource::default();
        Self {
            metrics: Metrics::new(&served_names[0], stats.clone()),
            args,
            served_names,
            serving: OnceLock::new(),
            embedding: OnceLock::new(),
            phase: AtomicU8::new(Phase::Loading as u8),
            inflight: InFlight::default(),
            stats,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Failed,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Installs the loaded engine (once) and points the metrics at it.
    pub fn install(&self, serving: Serving) {
        let engine = serving.engine.clone();
        let _ = self.stats.set(Box::new(move || engine.stats()));
        let _ = self.serving.set(serving);
    }

    /// Installs the loaded embedding model (once) and points the metrics at its worker.
    pub fn install_embedder(&self, serving: EmbedServing) {
        let embedder = serving.embedder.clone();
        let _ = self.stats.set(Box::new(move || embedder.stats()));
        let _ = self.embedding.set(serving);
    }

    /// Unix time the model finished loading, 0 while loading.
    pub fn created(&self) -> u64 {
        self.serving.get().map(|s| s.created).or(self.embedding.get().map(|e| e.created)).unwrap_or(0)
    }

    /// The longest input the model takes, once loaded.
    pub fn max_model_len(&self) -> Option<usize> {
        self.serving.get().map(|s| s.max_model_len).or(self.embedding.get().map(|e| e.embedder.model.max_len))
    }

    /// Live queue counters of whichever model is loaded.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.get().map(|f| f()).unwrap_or_default()
    }

    /// The embedding model for a new /v1/embeddings request (503 while loading or draining).
    pub fn admit_embedding(&self) -> Result<&EmbedServing, ApiError> {
        self.check_phase()?;
        if self.serving.get().is_some() {
            return Err(ApiError::bad_request("model", "This server serves a generative model; embeddings need an \
                embedding model (start the server on a sentence-transformers folder, or with --task embed)."));
        }
        self.embedding.get().ok_or_else(|| ApiError::Unavailable("The model is still loading.".into()))
    }

    fn check_phase(&self) -> Result<(), ApiError> {
        match self.phase() {
            Phase::Loading => Err(ApiError::Unavailable("The model is still loading.".into())),
            Phase::Draining => Err(ApiError::Unavailable("The server is shutting down.".into())),
            Phase::Failed => Err(ApiError::Unavailable("The engine failed to start; see the server log.".into())),
            Phase::Ready => Ok(()),
        }
    }

    /// The generative model for read-only routes (tokenizer, text utilities, abort): 503
    /// while loading, 400 on a server that embeds.
    pub fn generative(&self) -> Result<&Serving, ApiError> {
        if let Some(s) = self.serving.get() {
            return Ok(s);
        }
        if self.embedding.get().is_some() {
            return Err(ApiError::bad_request("model", "This server serves an embedding model; this route needs a \
                generative one."));
        }
        Err(ApiError::Unavailable("The model is still loading.".into()))
    }

    /// The engine, if it is loaded (for read-only routes that work while draining).
    pub fn loaded(&self) -> Option<&Serving> {
        self.serving.get()
    }

    /// The engine for a new generation request: 503 + Retry-After while loading, draining
    /// or overloaded.
    pub fn admit(&self) -> Result<&Serving, ApiError> {
        self.check_phase()?;
        if self.embedding.get().is_some() {
            return Err(ApiError::bad_request("model", "This server serves an embedding model: use /v1/embeddings."));
        }
        let serving = self.serving.get().ok_or_else(|| ApiError::Unavailable("The model is still loading.".into()))?;
        if let Some(max) = self.args.server.max_waiting_requests {
            if serving.engine.stats().num_requests_waiting >= max {
                return Err(ApiError::Unavailable(format!("The server is overloaded ({max} requests waiting); retry later.")));
            }
        }
        Ok(serving)
    }

    /// The served name a request's `model` refers to (the first one when omitted).
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None | Some("") => Ok(self.served_names[0].clone()),
            Some(name) if self.served_names.iter().any(|n| n == name) => Ok(name.to_string()),
            Some(name) => Err(ApiError::ModelNotFound(name.to_string())),
        }
    }
}

/// Request ids in flight → the engine request ids they fan out to (one per prompt). Used to
/// abort by id, to wait for in-flight work when draining, and to refuse a reused id.
#[derive(Default)]
pub struct InFlight {
    requests: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

/// Removes its request from the registry when the response is done (or dropped).
pub struct InFlightGuard {
    requests: Arc<Mutex<HashMap<String, Vec<String>>>>,
    id: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.requests.lock().expect("in-flight registry poisoned").remove(&self.id);
    }
}

impl InFlight {
    pub fn register(&self, id: &str, engine_ids: Vec<String>) -> Result<InFlightGuard, ApiError> {
        let mut map = self.requests.lock().expect("in-flight registry poisoned");
        if map.contains_key(id) {
            return Err(ApiError::bad_request("X-Request-Id", format!("request id {id:?} is already in use")));
        }
        map.insert(id.to_string(), engine_ids);
        Ok(InFlightGuard { requests: self.requests.clone(), id: id.to_string() })
    }

    pub fn len(&self) -> usize {
        self.requests.lock().expect("in-flight registry poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Aborts a request's engine work; false when no such request is in flight.
    pub fn abort(&self, id: &str, engine: &EngineHandle) -> bool {
        let ids = self.requests.lock().expect("in-flight registry poisoned").get(id).cloned();
        for engine_id in ids.iter().flatten() {
            engine.abort(engine_id);
        }
        ids.is_some()
    }

    pub fn abort_all(&self, engine: &EngineHandle) {
        let ids: Vec<String> = self.requests.lock().expect("in-flight registry poisoned").values().flatten().cloned().collect();
        for id in ids {
            engine.abort(&id);
        }
    }
}
