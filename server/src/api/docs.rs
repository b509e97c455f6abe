//! `/openapi.json` (generated from the handlers' annotations and the request types) and
//! `/docs`, a self-contained page that renders it and can send requests: it works offline,
//! unlike Swagger UI pages that load their scripts from a CDN.

use super::state::AppState;
use super::{admin, chat, completions, embeddings, generate, protocol, structured, text, tokenize, tools};
use axum::extract::State;
use axum::response::Html;
use axum::Json;
use std::sync::Arc;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "kandle-server", description = "OpenAI-compatible LLM inference server with happy_vllm's extras."),
    paths(completions::completions, chat::chat_completions, admin::models, admin::health, admin::liveness,
        admin::readiness, admin::info, admin::launch_arguments, admin::live_metrics, admin::abort_request, admin::metrics,
        tokenize::tokenize, tokenize::detokenize, tokenize::legacy_tokenizer, tokenize::legacy_decode, text::metadata_text,
        text::split_text, generate::generate, generate::generate_stream, embeddings::embeddings),
    components(schemas(protocol::SamplingFields, protocol::CompletionFields, protocol::ChatFields, protocol::ChatMessage,
        protocol::Prompt, protocol::Stop, protocol::Content, protocol::StreamOptions, admin::AbortRequest,
        tokenize::TokenizeCompletion, tokenize::Detokenize, tokenize::LegacyTokenize, tokenize::LegacyDecode,
        text::MetadataText, text::SplitText, generate::GenerateFields, structured::StructuredFields, tools::ToolFields,
        embeddings::EmbeddingFields))
)]
struct ApiDoc;

pub async fn openapi_json(State(state): State<Arc<AppState>>) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let prefix = super::normalize_prefix(&state.args.server.api_endpoint_prefix);
    if !prefix.is_empty() {
        doc.servers = Some(vec![utoipa::openapi::Server::new(prefix)]);
    }
    Json(doc)
}

pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_HTML)
}

const DOCS_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>kandle-server API</title>
<style>
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
details{border:1px solid #ccc;border-radius:6px;margin:.5em 0;padding:.4em .8em}
summary{cursor:pointer;font-weight:600}.m{display:inline-block;width:4.5em;color:#fff;border-radius:4px;text-align:center;margin-right:.5em}
.get{background:#2b7}.post{background:#27c}pre,textarea{background:#f6f6f6;padding:.5em;overflow:auto;width:100%;box-sizing:border-box}
textarea{height:8em;font-family:monospace}
</style></head><body>
<h1>kandle-server API</h1><p id="desc"></p><div id="routes">Loading openapi.json…</div>
<script>
fetch('openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('desc').textContent = doc.info.description + ' Version ' + doc.info.version + '.';
  const base = (doc.servers && doc.servers[0] ? doc.servers[0].url : '');
  const root = document.getElementById('routes'); root.textContent = '';
  const schemas = (doc.components || {}).schemas || {};
  for (const [path, item] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(item)) {
    const d = document.createElement('details');
    const s = document.createElement('summary');
    s.innerHTML = `<span class="m ${method}">${method.toUpperCase()}</span>`; s.append(path + '  ' + (op.summary || ''));
    d.append(s);
    if (op.description) { const p = document.createElement('p'); p.textContent = op.description; d.append(p); }
    const body = op.requestBody && op.requestBody.content['application/json'];
    let ta = null;
    if (body) {
      const pre = document.createElement('pre'); pre.textContent = JSON.stringify(body.schema, null, 2); d.append(pre);
      if (op.requestBody.description) { const p = document.createElement('p'); p.textContent = op.requestBody.description; d.append(p); }
      ta = document.createElement('textarea'); ta.value = '{}'; d.append(ta);
    }
    const btn = document.createElement('button'); btn.textContent = 'Send'; d.append(btn);
    const out = document.createElement('pre'); d.append(out);
    btn.onclick = async () => {
      const init = {method: method.toUpperCase(), headers: {'Content-Type': 'application/json'}};
      if (ta) init.body = ta.value;
      const r = await fetch(base + path, init); out.textContent = r.status + '\n' + await r.text();
    };
    root.append(d);
  }
  const p = document.createElement('details'); p.innerHTML = '<summary>Schemas</summary>';
  const pre = document.createElement('pre'); pre.textContent = JSON.stringify(schemas, null, 2); p.append(pre); root.append(p);
});
</script></body></html>"#;
