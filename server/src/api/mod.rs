//! The HTTP edge: routes, request parsing, SSE and the error mapping. Handlers validate and
//! translate; the engine thread does the work.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod docs;
pub mod embeddings;
pub mod error;
pub mod extract;
pub mod generate;
pub mod generation;
pub mod protocol;
pub mod state;
pub mod structured;
pub mod text;
pub mod tokenize;
pub mod tools;

use crate::config::{ServeArgs, ServerArgs};
use crate::engine::constraint::Guidance;
use crate::engine::{EngineCore, EngineHandle, GenerateRequest, RequestEvent, SamplingParams};
use crate::model::LoadedModel;
use crate::tokenizer::TokenizerInfo;
use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use state::{AppState, EmbedServing, Phase, Serving};
use crate::embed::EmbedHandle;
use crate::model::embedding::EmbeddingModel;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// All routes. OpenAI routes are served with and without `/v1`; everything but `/metrics`
/// sits under `--api-endpoint-prefix`.
pub fn router(state: Arc<AppState>) -> Router {
    let server = &state.args.server;
    let openai = Router::new()
        .route("/completions", post(completions::completions))
        .route("/chat/completions", post(chat::chat_completions))
        .route("/embeddings", post(embeddings::embeddings))
        .route("/models", get(admin::models));
    let api = Router::new()
        .nest("/v1", openai.clone())
        .merge(openai)
        .route("/v1/info", get(admin::info))
        .route("/v1/launch_arguments", get(admin::launch_arguments))
        .route("/v1/live_metrics", get(admin::live_metrics))
        .route("/v1/abort_request", post(admin::abort_request))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v2/tokenizer", post(tokenize::tokenize))
        .route("/v2/decode", post(tokenize::detokenize))
        .route("/v1/tokenizer", post(tokenize::legacy_tokenizer))
        .route("/v1/decode", post(tokenize::legacy_decode))
        .route("/v1/generate", post(generate::generate))
        .route("/v1/generate_stream", post(generate::generate_stream))
        .route("/v1/metadata_text", post(text::metadata_text))
        .route("/v1/split_text", post(text::split_text))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    let open = Router::new()
        .route("/health", get(admin::health))
        .route("/liveness", get(admin::liveness))
        .route("/readiness", get(admin::readiness))
        .route("/openapi.json", get(docs::openapi_json))
        .route("/docs", get(docs::docs_page));
    let prefix = normalize_prefix(&server.api_endpoint_prefix);
    let app = if prefix.is_empty() { api.merge(open) } else { Router::new().nest(&prefix, api.merge(open)) };
    app.route("/metrics", get(admin::metrics))
        .fallback(|req: Request| async move { ApiError::NotFound(format!("No route for {} {}.", req.method(), req.uri().path())) })
        .layer(DefaultBodyLimit::max(usize::try_from(server.max_request_body).unwrap_or(usize::MAX)))
        .layer(cors(server))
        .layer(middleware::from_fn(extract::request_id_layer))
        .with_state(state)
}

/// `llm/` → `/llm`; empty stays empty.
pub fn normalize_prefix(p: &str) -> String {
    let p = p.trim().trim_end_matches('/');
    if p.is_empty() { String::new() } else if p.starts_with('/') { p.to_string() } else { format!("/{p}") }
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.args.server.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::Unauthorized("Invalid or missing API key: send `Authorization: Bearer <key>`.".into()).into_response();
        }
    }
    next.run(req).await
}

fn cors(s: &ServerArgs) -> CorsLayer {
    let any = |v: &[String]| v.iter().any(|x| x == "*");
    // Browsers refuse `*` with credentials, so wildcards then mirror the request instead.
    let layer = if any(&s.allowed_origins) {
        CorsLayer::new().allow_origin(if s.allow_credentials { AllowOrigin::mirror_request() } else { AllowOrigin::any() })
    } else {
        CorsLayer::new().allow_origin(s.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect::<Vec<_>>())
    };
    let layer = if any(&s.allowed_methods) {
        layer.allow_methods(if s.allow_credentials { AllowMethods::mirror_request() } else { AllowMethods::any() })
    } else {
        layer.allow_methods(s.allowed_methods.iter().filter_map(|m| m.parse::<Method>().ok()).collect::<Vec<_>>())
    };
    let layer = if any(&s.allowed_headers) {
        layer.allow_headers(if s.allow_credentials { AllowHeaders::mirror_request() } else { AllowHeaders::any() })
    } else {
        layer.allow_headers(s.allowed_headers.iter().filter_map(|h| h.parse::<header::HeaderName>().ok()).collect::<Vec<_>>())
    };
    layer.allow_credentials(s.allow_credentials)
}

/// `--chat-template`: a file when the path exists, otherwise the template text itself.
fn resolve_chat_template(arg: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path).with_context(|| format!("reading --chat-template {arg}"));
    }
    if arg.contains("{{") || arg.contains("{%") {
        return Ok(arg.to_string());
    }
    anyhow::bail!("--chat-template {arg:?} is neither a readable file nor a Jinja template")
}

/// Loads the model and everything around it; runs on a blocking thread.
fn load(args: &ServeArgs, chat_template: Option<String>) -> anyhow::Result<Serving> {
    let opts = args.model.options().map_err(anyhow::Error::msg)?;
    let mut loaded = LoadedModel::load(&opts).context("loading the model")?;
    if let Some(path) = &args.server.tokenizer {
        let dir = if path.is_file() { path.parent().unwrap_or(path) } else { path };
        let mut replacement = TokenizerInfo::from_hf_dir(dir).context("loading --tokenizer")?;
        replacement.eos_token_ids.extend(loaded.tokenizer.eos_token_ids.iter().copied());
        replacement.eos_token_ids.dedup();
        loaded.tokenizer = replacement;
    }
    if let Some(t) = chat_template {
        loaded.tokenizer.chat_template = Some(t);
    }
    if loaded.tokenizer.chat_template.is_some() {
        // A broken template fails here, at startup, not on the first chat request.
        let sample = serde_json::json!([
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ]);
        loaded.tokenizer.apply_chat_template(&sample, true, &serde_json::Value::Null)
            .map_err(|e| anyhow::anyhow!("the chat template does not render a sample conversation: {e}"))?;
    }
    let defaults = loaded.generation_defaults.clone();
    let max_model_len = loaded.max_model_len;
    let truncation_side = loaded.tokenizer.truncation_side.clone().unwrap_or_else(|| "right".into());
    let guidance = Guidance::new(&loaded.tokenizer, loaded.model.config().vocab_size).map(Arc::new);
    if let Err(e) = &guidance {
        tracing::warn!("structured outputs are unavailable for this model: {e}");
    }
    let core = EngineCore::new(loaded, &args.engine.config()).context("starting the engine")?;
    Ok(Serving { engine: EngineHandle::spawn(core), defaults, max_model_len, created: protocol::unix_now(), truncation_side,
        guidance })
}

/// One short generation so the first user request does not pay for lazy initialisation.
async fn warm_up(engine: &EngineHandle) -> anyhow::Result<()> {
    let ids = engine.tokenizer().encode("Hello", true).map_err(anyhow::Error::msg)?;
    let params = SamplingParams { max_tokens: Some(1), ..SamplingParams::greedy() };
    let mut rx = engine.submit(GenerateRequest::new("kandle-warmup", ids, params))?;
    while let Some(ev) = rx.recv().await {
        match ev {
            RequestEvent::Finished { .. } => return Ok(()),
            RequestEvent::Error(e) => anyhow::bail!("warm-up failed: {e}"),
            RequestEvent::Delta(_) => {}
        }
    }
    anyhow::bail!("the engine stopped during warm-up")
}

/// Runs the server until SIGTERM/SIGINT (then drains) or until the model fails to load.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.model.options().map_err(anyhow::Error::msg)?;
    let chat_template = args.server.chat_template.as_deref().map(resolve_chat_template).transpose()?;
    error::EXPLICIT_ERRORS.store(args.server.explicit_errors, std::sync::atomic::Ordering::Relaxed);
    let state = Arc::new(AppState::new(args.clone()));
    let addr = format!("{}:{}", args.server.host, args.server.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, model = %state.served_names[0], "listening; loading the model");

    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let loader_state = state.clone();
    tokio::spawn(async move {
        let t0 = Instant::now();
        if args.model.embeds() {
            let loaded = tokio::task::spawn_blocking(move || load_embedding(&args)).await;
            let result = match loaded {
                Ok(Ok(serving)) => {
                    let embedder = serving.embedder.clone();
                    loader_state.install_embedder(serving);
                    embedder.embed(vec![vec![0, 1]]).await.map(|_| ()).map_err(anyhow::Error::msg)
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the loader panicked: {e}")),
            };
            return finish_loading(&loader_state, t0, result, fail_tx);
        }
        let loaded = tokio::task::spawn_blocking(move || load(&args, chat_template)).await;
        let result = match loaded {
            Ok(Ok(serving)) => {
                let engine = serving.engine.clone();
                loader_state.install(serving);
                tracing::info!("warming up (on a fresh GPU machine the driver first compiles the kernels: ~20 s)");
                warm_up(&engine).await
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the loader panicked: {e}")),
        };
        finish_loading(&loader_state, t0, result, fail_tx);
    });

    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let drain_state = state.clone();
    let shutdown = async move {
        tokio::select! {
            _ = termination() => drain(&drain_state).await,
            Ok(e) = fail_rx => { let _ = failed_tx.send(e).await; }
        }
    };
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await.context("serving HTTP")?;
    if let Ok(e) = failed_rx.try_recv() {
        return Err(e);
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Ready after a successful load and warm-up; otherwise the server stops with the error.
fn finish_loading(state: &AppState, t0: Instant, result: anyhow::Result<()>, fail: tokio::sync::oneshot::Sender<anyhow::Error>) {
    match result {
        Ok(()) => {
            state.set_phase(Phase::Ready);
            tracing::info!(seconds = t0.elapsed().as_secs_f64(), "model loaded and warmed up; ready");
        }
        Err(e) => {
            state.set_phase(Phase::Failed);
            let _ = fail.send(e);
        }
    }
}

/// Loads a sentence-transformers encoder and starts its worker.
fn load_embedding(args: &ServeArgs) -> anyhow::Result<EmbedServing> {
    let opts = args.model.options().map_err(anyhow::Error::msg)?;
    let device = crate::model::parse_device(&opts.device)?;
    let model = EmbeddingModel::load(&opts.path, &device).context("loading the embedding model")?;
    tracing::info!(dim = model.dim, max_len = model.max_len, pooling = ?model.pooling, normalize = model.normalize,
        "embedding model loaded");
    Ok(EmbedServing { embedder: EmbedHandle::spawn(model), created: protocol::unix_now() })
}

async fn termination() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Readiness turns `ko` and new requests get 503 while in-flight ones finish, up to
/// `--shutdown-timeout`; what is left then is aborted.
async fn drain(state: &AppState) {
    state.set_phase(Phase::Draining);
    let timeout = Duration::from_secs_f64(state.args.server.shutdown_timeout.max(0.0));
    tracing::info!(in_flight = state.inflight.len(), ?timeout, "draining");
    let deadline = Instant::now() + timeout;
    while !state.inflight.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !state.inflight.is_empty() {
        tracing::warn!(in_flight = state.inflight.len(), "shutdown timeout reached; aborting what is left");
        if let Some(s) = state.loaded() {
            state.inflight.abort_all(&s.engine);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(super::normalize_prefix(""), "");
        assert_eq!(super::normalize_prefix("/"), "");
        assert_eq!(super::normalize_prefix("llm/"), "/llm");
        assert_eq!(super::normalize_prefix("/a/b"), "/a/b");
    }
}
