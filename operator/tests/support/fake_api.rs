//! A Kubernetes API for tests and benchmarks, in memory: a `tower-test` mock service whose
//! requests are answered from a store (server-side apply stores the applied object, GET and
//! DELETE read and remove, status patches merge, event POSTs are accepted), so callers see
//! exactly what the operator asked the API to do.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Store {
    /// Path (without query) → object.
    pub objects: BTreeMap<String, Value>,
    /// Every request as "METHOD path".
    pub log: Vec<String>,
    /// What a Deployment's status reads when the operator applies it.
    pub deployment_status: Value,
    /// Lease path → spec field → field manager that last set it.
    pub lease_owners: BTreeMap<String, BTreeMap<String, String>>,
}

pub fn start(store: Arc<Mutex<Store>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let apply = req.headers().get("content-type").is_some_and(|c| c.as_bytes().starts_with(b"application/apply-patch"));
            let body = req.into_body().collect_bytes().await.unwrap();
            let (code, out) = if path.contains("/leases") {
                serve_lease(&store, &method, &path, &query, apply, &body)
            } else {
                serve(&store, &method, &path, &query, &body)
            };
            respond.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(&out).unwrap())).unwrap());
        }
    });
    Client::new(service, "default")
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": format!("{path} not found")}))
}

/// A GET of a collection: the stored objects directly under `path` whose labels match the
/// equality-based `labelSelector` of the query.
fn list(s: &Store, path: &str, query: &str) -> Option<Value> {
    let selector: Vec<(String, String)> = query.split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .map(|sel| {
            let sel = sel.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/");
            sel.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        })
        .unwrap_or_default();
    let prefix = format!("{path}/");
    let items: Vec<Value> = s.objects.iter()
        .filter(|(k, _)| k.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/')))
        .map(|(_, v)| v.clone())
        .filter(|o| selector.iter().all(|(k, v)| o["metadata"]["labels"][k] == v.as_str()))
        .collect();
    // /api/v1/namespaces/NS/RESOURCE or /apis/GROUP/VERSION/namespaces/NS/RESOURCE.
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_collection = matches!((segments[0], segments.len()), ("api", 5) | ("apis", 6));
    is_collection
        .then(|| json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}))
}

fn serve(store: &Mutex<Store>, method: &Method, path: &str, query: &str, body: &[u8]) -> (StatusCode, Value) {
    let mut s = store.lock().unwrap();
    s.log.push(format!("{method} {path}"));
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap() };
    match *method {
        Method::GET => match s.objects.get(path).cloned() {
            Some(o) => (StatusCode::OK, o),
            None => list(&s, path, query).map_or_else(|| not_found(path), |l| (StatusCode::OK, l)),
        },
        Method::DELETE => s.objects.remove(path).map_or_else(|| not_found(path), |o| (StatusCode::OK, o)),
        Method::POST => (StatusCode::CREATED, body),
        Method::PATCH if path.ends_with("/status") => {
            let key = path.trim_end_matches("/status").to_string();
            let obj = s.objects.entry(key).or_insert_with(|| json!({}));
            obj["status"] = body["status"].clone();
            (StatusCode::OK, obj.clone())
        }
        Method::PATCH => {
            let mut obj = body;
            if obj["kind"] == "Deployment" {
                obj["status"] = s.deployment_status.clone();
            }
            s.objects.insert(path.to_string(), obj.clone());
            (StatusCode::OK, obj)
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
    }
}


fn status(code: StatusCode, reason: &str, message: String) -> (StatusCode, Value) {
    (code, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code.as_u16(), "message": message}))
}

/// Leases with the server-side-apply ownership leader election relies on: an apply that
/// changes a spec field another field manager set is a 409 Conflict (unless forced); merge
/// patches take ownership of what they set and `null` removes a field.
fn serve_lease(store: &Mutex<Store>, method: &Method, path: &str, query: &str, apply: bool, body: &[u8]) -> (StatusCode, Value) {
    let mut s = store.lock().unwrap();
    s.log.push(format!("{method} {path}"));
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap() };
    let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('='))).map(str::to_string);
    match *method {
        Method::GET => s.objects.get(path).cloned().map_or_else(|| not_found(path), |o| (StatusCode::OK, o)),
        Method::POST => {
            let key = format!("{path}/{}", body["metadata"]["name"].as_str().unwrap_or_default());
            if s.objects.contains_key(&key) {
                return status(StatusCode::CONFLICT, "AlreadyExists", format!("{key} already exists"));
            }
            let mut obj = body;
            obj["metadata"]["resourceVersion"] = json!("1");
            s.objects.insert(key, obj.clone());
            (StatusCode::CREATED, obj)
        }
        Method::PATCH => {
            let manager = param("fieldManager").unwrap_or_default();
            let force = param("force").as_deref() == Some("true");
            let Some(mut obj) = s.objects.get(path).cloned() else { return not_found(path) };
            let owners = s.lease_owners.entry(path.to_string()).or_default();
            let fields = body["spec"].as_object().cloned().unwrap_or_default();
            if apply && !force {
                for (k, v) in &fields {
                    let current = &obj["spec"][k];
                    if !current.is_null() && current != v && owners.get(k).is_some_and(|o| *o != manager) {
                        return status(StatusCode::CONFLICT, "Conflict", format!("Apply failed with 1 conflict: conflict with {:?}: .spec.{k}", owners[k]));
                    }
                }
            }
            for (k, v) in fields {
                if v.is_null() {
                    obj["spec"].as_object_mut().map(|m| m.remove(&k));
                    owners.remove(&k);
                } else {
                    obj["spec"][&k] = v;
                    owners.insert(k, manager.clone());
                }
            }
            let rv = obj["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            s.objects.insert(path.to_string(), obj.clone());
            (StatusCode::OK, obj)
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
    }
}
