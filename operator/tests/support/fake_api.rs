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
}

pub fn start(store: Arc<Mutex<Store>>) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            let (code, out) = serve(&store, &method, &path, &body);
            respond.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(&out).unwrap())).unwrap());
        }
    });
    Client::new(service, "default")
}

fn not_found(path: &str) -> (StatusCode, Value) {
    (StatusCode::NOT_FOUND, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": format!("{path} not found")}))
}

fn serve(store: &Mutex<Store>, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
    let mut s = store.lock().unwrap();
    s.log.push(format!("{method} {path}"));
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(body).unwrap() };
    match *method {
        Method::GET => s.objects.get(path).cloned().map_or_else(|| not_found(path), |o| (StatusCode::OK, o)),
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

