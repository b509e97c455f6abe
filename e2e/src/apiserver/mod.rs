//! A Kubernetes API server stand-in for machines without a control plane: real HTTP, the
//! REST paths, verbs, content types and `Status` errors of the real API, enough for
//! `kube::Client` (the operator, the node agent, the suite) and `kubectl get`.
//!
//! Emulated: discovery (`/api`, `/apis`, group versions, `/version`); create / get / list /
//! replace / patch (JSON merge, strategic merge treated as merge, server-side apply with
//! field managers and conflicts) / delete; watch with resourceVersions, bookmarks,
//! `sendInitialEvents`, label and field selectors (objects leaving a selector are DELETED);
//! status and scale subresources; pod `binding`; ownerReference garbage collection,
//! graceful deletion of bound pods, finalizers, namespace termination; CRDs with structural
//! schema pruning, defaults, validation and CEL rules (see `schema`); the Deployment and
//! ReplicaSet controllers (see `controllers`).
//!
//! Not emulated: authentication and RBAC (every request is allowed; RBAC is checked by the
//! operator's own RBAC test), admission webhooks, validation of built-in kinds, protobuf,
//! table output for `kubectl get -o wide` columns, pagination (`limit` returns everything,
//! which the API allows), watch cache compaction (410 Gone never happens), EndpointSlices,
//! the scheduler (the node agent binds pods itself), `dryRun`.

pub mod controllers;
pub mod patch;
pub mod resources;
pub mod schema;
pub mod store;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use resources::ResourceType;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{ApiError, Filter, Part, Store};
use tokio::sync::watch;

struct Inner {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watches and the controllers to wait on.
    changed: watch::Sender<u64>,
}

/// A running stand-in. Dropping it does not stop the server (it lives with the runtime).
#[derive(Clone)]
pub struct ApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl ApiServer {
    /// Serves on `addr` (port 0: any free port) and starts the controllers.
    pub async fn start(addr: SocketAddr) -> std::io::Result<ApiServer> {
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner { store: Mutex::new(Store::new()), changed });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::spawn(run_controllers(inner.clone()));
        Ok(ApiServer { addr, inner })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (no credentials: it checks none).
    pub fn kubeconfig(&self) -> String {
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: {}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: nobody\n    namespace: default\ncurrent-context: stand-in\nusers:\n- name: nobody\n  user: {{}}\n", self.url())
    }

    /// A client for in-process callers.
    pub fn client(&self) -> kube::Client {
        let uri: axum::http::Uri = self.url().parse().expect("url");
        let config = kube::Config::new(uri);
        kube::Client::try_from(config).expect("client")
    }

    /// Number of stored objects of every kind (for tests of the stand-in).
    pub fn object_count(&self) -> usize {
        self.inner.store.lock().expect("store").objects.len()
    }
}

async fn run_controllers(inner: Arc<Inner>) {
    let mut rx = inner.changed.subscribe();
    loop {
        {
            let mut store = inner.store.lock().expect("store");
            let before = store.rv;
            controllers::reconcile_all(&mut store);
            if store.rv != before {
                inner.changed.send_replace(store.rv);
            }
        }
        // Also wake up now and then, like the controllers' resyncs.
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    }
}

fn respond(code: u16, body: Value) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), [("content-type", "application/json")],
        body.to_string()).into_response()
}

fn error(e: ApiError) -> Response {
    respond(e.code, e.to_status())
}

/// What a request path names.
struct Target {
    t: ResourceType,
    ns: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(types: &[ResourceType], path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    let find = |plural: &str| types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned();
    let unknown = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|t| t.namespaced) && tail.len() <= 2 => Ok(Target {
            t: find(plural).ok_or_else(unknown)?,
            ns: ns.to_string(),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
        }),
        [plural, tail @ ..] if tail.len() <= 2 => Ok(Target {
            t: find(plural).ok_or_else(unknown)?,
            ns: String::new(),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
        }),
        _ => Err(unknown()),
    }
}

async fn handle(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let path = uri.path().to_string();
    match discovery(&inner, &path) {
        Some(doc) => return respond(200, doc),
        None if method == Method::GET && matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") => {
            return "ok".into_response();
        }
        None => {}
    }
    let target = {
        let store = inner.store.lock().expect("store");
        parse(&store.types, &path)
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    if method == Method::GET && target.name.is_none() && q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return watch_response(inner, target, q);
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
    let result = {
        let mut store = inner.store.lock().expect("store");
        let r = serve(&mut store, &method, &target, &q, &content_type, &body);
        inner.changed.send_replace(store.rv);
        r
    };
    match result {
        Ok((code, v)) => respond(code, v),
        Err(e) => error(e),
    }
}

fn discovery(inner: &Inner, path: &str) -> Option<Value> {
    let store = inner.store.lock().expect("store");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Some(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kandle-e2e", "platform": "linux/amd64"})),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})),
        ["apis"] => Some(resources::group_list(&store.types)),
        ["api", v] => resources::resource_list(&store.types, "", v),
        ["apis", g, v] => Some(resources::resource_list(&store.types, g, v).unwrap_or_else(|| {
            ApiError::new(404, "NotFound", "the server could not find the requested resource").to_status()
        })).filter(|d| d["kind"] != "Status"),
        _ => None,
    }
}

fn parse_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let parsed = if content_type.contains("yaml") { serde_yaml::from_slice(body).map_err(|e| e.to_string()) } else { serde_json::from_slice(body).map_err(|e| e.to_string()) };
    parsed.map_err(|e| ApiError::new(400, "BadRequest", format!("the body of the request could not be decoded: {e}")))
}

fn filter(q: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        labels: store::parse_label_selector(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: q.get("fieldSelector").cloned().unwrap_or_default(),
    })
}

fn serve(store: &mut Store, method: &Method, target: &Target, q: &HashMap<String, String>, content_type: &str, body: &[u8])
    -> Result<(u16, Value), ApiError> {
    let t = &target.t;
    let ns = target.ns.as_str();
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
    let body = parse_body(content_type, body)?;
    let Some(name) = target.name.as_deref() else {
        return match *method {
            Method::GET => {
                let f = filter(q)?;
                let items: Vec<Value> = store.list(t, ns).into_iter().filter(|o| f.matches(o)).collect();
                Ok((200, json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                    "metadata": {"resourceVersion": store.rv.to_string()}, "items": items})))
            }
            Method::POST => store.create(t, ns, body, &manager).map(|o| (201, o)),
            _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported on a collection"))),
        };
    };
    let key = Store::key_of(t, ns, name);
    match (target.sub.as_deref(), method.clone()) {
        (None | Some("status"), Method::GET) => store.get(t, ns, name).map(|o| (200, o)),
        (None, Method::DELETE) => {
            let grace = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()).or(body["gracePeriodSeconds"].as_i64());
            let policy = q.get("propagationPolicy").cloned().or(body["propagationPolicy"].as_str().map(String::from));
            store.delete(t, ns, name, grace, policy.as_deref() == Some("Orphan")).map(|o| (200, o))
        }
        (Some("binding"), Method::POST) if t.plural == "pods" => {
            let pod = store.get(t, ns, name)?;
            if !pod["spec"]["nodeName"].is_null() {
                return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node {}", pod["spec"]["nodeName"])));
            }
            let mut bound = pod.clone();
            bound["spec"]["nodeName"] = body["target"]["name"].clone();
            store.write(t, &key, Some(&pod), bound, Part::Main, &manager, None)?;
            Ok((201, json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})))
        }
        (Some("scale"), m) if t.scale.is_some() => scale(store, t, ns, name, m, content_type, body, &manager),
        (sub @ (None | Some("status")), Method::PUT) => {
            let part = if sub.is_some() { Part::Status } else { Part::Main };
            let old = store.get(t, ns, name)?;
            if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                if rv != old["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
                    return Err(conflict(t, name));
                }
            }
            store.write(t, &key, Some(&old), body, part, &manager, None).map(|o| (200, o))
        }
        (sub @ (None | Some("status")), Method::PATCH) => {
            let part = if sub.is_some() { Part::Status } else { Part::Main };
            let old = store.get(t, ns, name);
            if content_type.starts_with("application/apply-patch") {
                let force = q.get("force").is_some_and(|f| f == "true");
                let current = old.as_ref().map(|o| o.clone()).unwrap_or(Value::Null);
                let mut owners = store.ownership(&key);
                let merged = patch::apply(&current, &body, &manager, force, &mut owners).map_err(|conflicts| {
                    let list: Vec<String> = conflicts.iter().map(|c| format!("conflict with \"{}\": {}", c.manager, c.field)).collect();
                    ApiError::new(409, "Conflict", format!("Apply failed with {} conflict{}: {}", list.len(), if list.len() == 1 { "" } else { "s" }, list.join("\n")))
                })?;
                return match old {
                    Ok(old) => store.write(t, &key, Some(&old), merged, part, &manager, Some(owners)).map(|o| (200, o)),
                    Err(_) if part == Part::Main => {
                        let created = store.create(t, ns, merged, &manager)?;
                        store.set_ownership(&key, owners);
                        Ok((201, created))
                    }
                    Err(e) => Err(e),
                };
            }
            let old = old?;
            let mut new = old.clone();
            if content_type.starts_with("application/json-patch") {
                json_patch(&mut new, &body)?;
            } else {
                patch::merge_patch(&mut new, &body);
            }
            store.write(t, &key, Some(&old), new, part, &manager, None).map(|o| (200, o))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}

fn conflict(t: &ResourceType, name: &str) -> ApiError {
    ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.plural))
}

fn path_get<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.trim_start_matches('.').split('.').fold(v, |v, k| &v[k])
}

fn path_set(v: &mut Value, dotted: &str, x: Value) {
    let mut cur = v;
    for k in dotted.trim_start_matches('.').split('.') {
        cur = &mut cur[k];
    }
    *cur = x;
}

/// The autoscaling/v1 Scale of an object (GET), or a write of its spec.replicas.
#[allow(clippy::too_many_arguments)]
fn scale(store: &mut Store, t: &ResourceType, ns: &str, name: &str, method: Method, content_type: &str, body: Value, manager: &str)
    -> Result<(u16, Value), ApiError> {
    let paths = t.scale.clone().expect("scale");
    let obj = store.get(t, ns, name)?;
    let selector = match &paths.label_selector {
        Some(p) => path_get(&obj, p).clone(),
        None => {
            let m = obj["spec"]["selector"]["matchLabels"].as_object().cloned().unwrap_or_default();
            json!(m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        }
    };
    let current = json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": name, "namespace": ns, "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"]},
        "spec": {"replicas": path_get(&obj, &paths.spec_replicas)},
        "status": {"replicas": path_get(&obj, &paths.status_replicas).as_i64().unwrap_or(0), "selector": selector}});
    let wanted = match method {
        Method::GET => return Ok((200, current)),
        Method::PUT => body,
        Method::PATCH => {
            let mut s = current.clone();
            patch::merge_patch(&mut s, &body);
            s
        }
        _ => return Err(ApiError::new(405, "MethodNotAllowed", "scale supports get, update and patch")),
    };
    let _ = content_type;
    let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return Err(ApiError::new(422, "Invalid", format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: must be greater than or equal to 0")));
    };
    let mut new = obj.clone();
    path_set(&mut new, &paths.spec_replicas, json!(replicas));
    let key = Store::key_of(t, ns, name);
    let written = store.write(t, &key, Some(&obj), new, Part::Main, manager, None)?;
    let mut out = current;
    out["spec"]["replicas"] = json!(replicas);
    out["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"].clone();
    Ok((200, out))
}

/// RFC 6902 with `add`, `replace`, `remove` and `test` (what kube clients send).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    for op in ops.as_array().ok_or_else(|| bad("a JSON patch is a list of operations".into()))? {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent, last) = path.rsplit_once('/').ok_or_else(|| bad(format!("bad path {path:?}")))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(bad(format!("test failed at {path}")));
                }
            }
            Some(kind @ ("add" | "replace" | "remove")) => {
                let p = target.pointer_mut(parent).ok_or_else(|| bad(format!("no parent for {path}")))?;
                match p {
                    Value::Object(m) if kind == "remove" => {
                        m.remove(&last);
                    }
                    Value::Object(m) => {
                        m.insert(last, op["value"].clone());
                    }
                    Value::Array(a) => {
                        let i = if last == "-" { a.len() } else { last.parse().map_err(|_| bad(format!("bad index {last}")))? };
                        match kind {
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            "replace" if i < a.len() => a[i] = op["value"].clone(),
                            "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                            _ => return Err(bad(format!("index {i} out of range"))),
                        }
                    }
                    _ => return Err(bad(format!("{parent} is not a container"))),
                }
            }
            other => return Err(bad(format!("unsupported operation {other:?}"))),
        }
    }
    Ok(())
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch: replays the history after `resourceVersion` (or the current objects as ADDED),
/// then streams changes, with BOOKMARKs every few seconds when asked, until `timeoutSeconds`.
fn watch_response(inner: Arc<Inner>, target: Target, q: HashMap<String, String>) -> Response {
    let f = match filter(&q) {
        Ok(f) => f,
        Err(e) => return error(e),
    };
    let kind = target.t.key();
    let ns = target.ns.clone();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800u64);
    let from: Option<u64> = q.get("resourceVersion").and_then(|rv| rv.parse().ok()).filter(|rv| *rv > 0);
    let initial = q.get("sendInitialEvents").is_some_and(|s| s == "true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let bookmark = {
        let (api_version, kind_name) = (target.t.api_version(), target.t.kind.clone());
        move |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line("BOOKMARK", &json!({"kind": kind_name, "apiVersion": api_version, "metadata": meta}))
        }
    };
    tokio::spawn(async move {
        let mut changed = inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let in_scope = |k: &str, n: &str| k == kind && (ns.is_empty() || n == ns);
        let mut cursor = match from {
            Some(rv) if !initial => rv,
            _ => {
                let (lines, rv) = {
                    let store = inner.store.lock().expect("store");
                    let t = store.type_by_key(&kind);
                    let objs = t.map(|t| store.list(&t, &ns)).unwrap_or_default();
                    (objs.into_iter().filter(|o| f.matches(o)).map(|o| event_line("ADDED", &o)).collect::<Vec<_>>(), store.rv)
                };
                for l in lines {
                    if tx.send(Ok(l)).await.is_err() {
                        return;
                    }
                }
                if initial && bookmarks && tx.send(Ok(bookmark(rv, true))).await.is_err() {
                    return;
                }
                rv
            }
        };
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let (lines, rv) = {
                let store = inner.store.lock().expect("store");
                let start = store.events.partition_point(|e| e.rv <= cursor);
                let mut lines = vec![];
                for e in store.events[start..].iter().filter(|e| in_scope(&e.kind, &e.ns)) {
                    let now = f.matches(&e.object);
                    let before = e.prev.as_ref().is_some_and(|p| f.matches(p));
                    let type_ = match (e.type_, before, now) {
                        ("MODIFIED", false, true) => Some("ADDED"),
                        ("MODIFIED", true, false) => Some("DELETED"),
                        ("MODIFIED", true, true) => Some("MODIFIED"),
                        ("MODIFIED", false, false) => None,
                        (t, _, true) => Some(t),
                        _ => None,
                    };
                    if let Some(t) = type_ {
                        lines.push(event_line(t, &e.object));
                    }
                }
                (lines, store.rv)
            };
            for l in lines {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            cursor = cursor.max(rv);
            if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(5) {
                if tx.send(Ok(bookmark(cursor, false))).await.is_err() {
                    return;
                }
                last_bookmark = tokio::time::Instant::now();
            }
            let wake = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = tx.closed() => return,
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(stream)).expect("response")
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
