//! The end-to-end scenarios: `cargo test -p kandle-e2e` (names as arguments run a subset,
//! e.g. `cargo test -p kandle-e2e --test e2e -- serve autoscale`).
//!
//! Without `KUBECONFIG` the suite starts its Kubernetes API stand-in; with it, it runs
//! against that cluster. Either way the node agent of this crate runs the pods as local
//! processes and the operator runs as a real `kandle-operator` process. Each scenario gets
//! its own namespace and polls with deadlines; on failure the operator's and the servers'
//! logs are printed. Measured times are written to `target/e2e/results.json`.

use anyhow::{bail, ensure, Context as _};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kandle_e2e::cluster::{until, Cluster};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Results = BTreeMap<String, f64>;

fn llm_api(c: &Cluster, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("kandle.dev", "v1alpha1", "LLMDeployment"));
    Api::namespaced_with(c.client.clone(), ns, &ar)
}

fn model_path(c: &Cluster) -> String {
    c.repo.join("models/SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string()
}

/// An LLMDeployment of the test model, on the agent's node.
fn smollm2(c: &Cluster, name: &str, spec: Value) -> Value {
    let mut llm = json!({"apiVersion": "kandle.dev/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name},
        "spec": {"model": {"hostPath": {"path": model_path(c)}, "servedModelNames": ["smollm2"], "maxModelLen": 1024},
            "server": {"args": ["--kv-cache-memory", "64MiB"]},
            "scheduling": {"nodeSelector": {"kandle.dev/node-agent": "true"}}}});
    merge(&mut llm["spec"], &spec);
    llm
}

fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

async fn apply(c: &Cluster, ns: &str, llm: &Value) -> anyhow::Result<()> {
    let name = llm["metadata"]["name"].as_str().context("name")?;
    llm_api(c, ns).patch(name, &PatchParams::apply("kandle-e2e").force(), &Patch::Apply(llm)).await?;
    Ok(())
}

async fn get_llm(c: &Cluster, ns: &str, name: &str) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(llm_api(c, ns).get(name).await?)?)
}

fn condition<'a>(llm: &'a Value, type_: &str) -> Option<&'a Value> {
    llm["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

/// Waits for `Ready=True` with `ready` ready replicas; returns the resource.
async fn wait_ready(c: &Cluster, ns: &str, name: &str, ready: i64, limit: Duration) -> anyhow::Result<Value> {
    until(&format!("{ns}/{name} Ready with {ready} ready replicas"), limit, || async {
        let llm = get_llm(c, ns, name).await?;
        let ok = condition(&llm, "Ready").is_some_and(|c| c["status"] == "True") && llm["status"]["readyReplicas"] == ready;
        Ok(ok.then_some(llm))
    }).await
}

fn http() -> reqwest::Client {
    // A new connection per request, so each one goes through the Service to some ready pod.
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(120)).build().expect("client")
}

async fn chat(client: &reqwest::Client, base: &str, content: &str, max_tokens: u32) -> anyhow::Result<Value> {
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0});
    let r = client.post(format!("{base}/chat/completions")).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    ensure!(status.is_success(), "HTTP {status}: {v}");
    Ok(v)
}

/// Counts of a load run.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: AtomicUsize,
    retried: AtomicUsize,
    stop: AtomicBool,
    errors: std::sync::Mutex<Vec<String>>,
}

/// `clients` loops of chat requests until stopped. A request whose connection is refused or
/// closed before an answer is retried (up to 2 times, as the official openai client does by
/// default); anything else, or a third failure, counts as failed.
fn start_load(base: String, clients: usize, max_tokens: u32) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..clients).map(|i| {
        let (load, base) = (load.clone(), base.clone());
        tokio::spawn(async move {
            let client = http();
            while !load.stop.load(Ordering::Relaxed) {
                let mut attempt = 0;
                loop {
                    match chat(&client, &base, &format!("Count to {}.", i + 3), max_tokens).await {
                        Ok(v) if v["choices"][0]["message"]["content"].is_string() => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if attempt < 2 && e.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect() || e.is_request()) => {
                            attempt += 1;
                            load.retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            load.errors.lock().expect("errors").push(format!("{other:?}"));
                            break;
                        }
                    }
                }
            }
        })
    }).collect();
    (load, tasks)
}

async fn stop_load(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>) -> anyhow::Result<(usize, usize)> {
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let (ok, failed, retried) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed), load.retried.load(Ordering::Relaxed));
    println!("    load: {ok} requests succeeded, {failed} failed, {retried} retried");
    ensure!(failed == 0, "{failed} requests failed: {:?}", load.errors.lock().expect("errors"));
    ensure!(ok > 0, "no request succeeded");
    Ok((ok, retried))
}

async fn count<K>(c: &Cluster, ns: &str) -> anyhow::Result<usize>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(c.client.clone(), ns).list(&ListParams::default()).await?.items.len())
}

/// Pods not being deleted.
async fn live_pods(c: &Cluster, ns: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(c.client.clone(), ns).list(&ListParams::default()).await?.items.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

// ---------------------------------------------------------------------------------------

/// Apply → Ready; the Service behind `status.endpoint` answers chat completions.
async fn serve(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    let start = Instant::now();
    apply(c, ns, &smollm2(c, "smollm2", json!({}))).await?;
    let llm = wait_ready(c, ns, "smollm2", 1, Duration::from_secs(180)).await?;
    results.insert("serve.apply_to_ready_s".into(), start.elapsed().as_secs_f64());
    let endpoint = llm["status"]["endpoint"].as_str().context("status.endpoint")?;
    ensure!(endpoint == format!("http://smollm2.{ns}.svc:8000/v1"), "endpoint {endpoint}");
    let (base, _proxy) = c.endpoint_url(endpoint).await?;
    let client = http();
    let models: Value = client.get(format!("{base}/models")).send().await?.json().await?;
    ensure!(models["data"][0]["id"] == "smollm2", "models: {models}");
    let v = chat(&client, &base, "What is the capital of France?", 16).await?;
    results.insert("serve.apply_to_first_completion_s".into(), start.elapsed().as_secs_f64());
    let text = v["choices"][0]["message"]["content"].as_str().context("content")?;
    ensure!(!text.is_empty() && v["usage"]["completion_tokens"].as_i64() > Some(0), "answer: {v}");
    println!("    answer: {text:?}");
    // The pod as a kubelet reports it: own address, ready, no restarts, metrics served.
    let pods = live_pods(c, ns).await?;
    ensure!(pods.len() == 1, "{} pods", pods.len());
    let status = pods[0].status.clone().unwrap_or_default();
    let ip = status.pod_ip.clone().unwrap_or_default();
    ensure!(ip.starts_with("127."), "podIP {ip}");
    let cs = &status.container_statuses.unwrap_or_default()[0];
    ensure!(cs.ready && cs.restart_count == 0, "container status {cs:?}");
    let metrics = client.get(format!("http://{ip}:8000/metrics")).send().await?.text().await?;
    ensure!(metrics.contains("vllm:num_requests_running"), "metrics lack vLLM names");
    Ok(())
}

/// Invalid specs: rejected by the API server (schema and CEL), or reported by the operator.
async fn invalid(c: &Cluster, ns: &str, _: &mut Results) -> anyhow::Result<()> {
    let api = llm_api(c, ns);
    let cases = [
        ("two-sources", json!({"model": {"url": "https://example.com/m.gguf"}}), "exactly one model source"),
        ("bounds", json!({"autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 1}}), "minReplicas must not exceed maxReplicas"),
        ("keda", json!({"autoscaling": {"enabled": true, "mode": "KEDA"}}), "KEDA mode needs prometheusAddress"),
        ("replicas-type", json!({"replicas": "two"}), "spec.replicas"),
        ("dtype-enum", json!({"model": {"dtype": "float8"}}), "spec.model.dtype"),
    ];
    for (name, spec, expect) in cases {
        let obj: DynamicObject = serde_json::from_value(smollm2(c, name, spec))?;
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(expect) => {}
            Err(e) => bail!("{name}: expected a 422 mentioning {expect:?}, got {e}"),
            Ok(_) => bail!("{name}: accepted an invalid spec"),
        }
    }
    let mut bad_url = smollm2(c, "url-scheme", json!({"model": {"url": "ftp://example.com/m.gguf"}}));
    bad_url["spec"]["model"].as_object_mut().context("model")?.remove("hostPath");
    let obj: DynamicObject = serde_json::from_value(bad_url)?;
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("url must be http(s)") => {}
        other => bail!("url-scheme: expected 422, got {other:?}"),
    }
    // Valid for the schema, wrong for the cluster: a chat template ConfigMap that is missing.
    apply(c, ns, &smollm2(c, "missing-template", json!({"model": {"chatTemplate": {"configMapKeyRef": {"name": "nope", "key": "t.jinja"}}}}))).await?;
    until("ChatTemplateResolved=False/ConfigMapNotFound", Duration::from_secs(30), || async {
        let llm = get_llm(c, ns, "missing-template").await?;
        Ok(condition(&llm, "ChatTemplateResolved").filter(|c| c["status"] == "False" && c["reason"] == "ConfigMapNotFound").map(|_| ()))
    }).await
}

const TEMPLATE_V1: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";
const TEMPLATE_V2: &str = "<|im_start|>system\nYou are a helpful assistant who answers in one short sentence.<|im_end|>\n{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";

/// A chat template change rolls 2 replicas one by one with no failed request.
async fn rolling_update(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    let spec = |t: &str| json!({"replicas": 2, "model": {"chatTemplate": {"inline": t}}});
    apply(c, ns, &smollm2(c, "chat", spec(TEMPLATE_V1))).await?;
    let llm = wait_ready(c, ns, "chat", 2, Duration::from_secs(240)).await?;
    let (base, _proxy) = c.endpoint_url(llm["status"]["endpoint"].as_str().context("endpoint")?).await?;
    let prompt_tokens = |v: Value| v["usage"]["prompt_tokens"].as_i64().unwrap_or(-1);
    let before = prompt_tokens(chat(&http(), &base, "Hi", 1).await?);
    let (load, tasks) = start_load(base.clone(), 2, 8);
    until("some requests before the change", Duration::from_secs(60), || async { Ok((load.ok.load(Ordering::Relaxed) >= 2).then_some(())) }).await?;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    let template_of = |d: &Deployment| d.spec.as_ref().map(|s| s.template.clone());
    let old_template = template_of(&deployments.get("chat").await?);
    let start = Instant::now();
    apply(c, ns, &smollm2(c, "chat", spec(TEMPLATE_V2))).await?;
    until("the rollout to finish (new template, 2 updated, ready, old pods gone)", Duration::from_secs(300), || async {
        let d = deployments.get("chat").await?;
        let s = d.status.clone().unwrap_or_default();
        let done = template_of(&d) != old_template && s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(2) && s.ready_replicas == Some(2) && s.replicas == Some(2);
        let pods = Api::<Pod>::namespaced(c.client.clone(), ns).list(&ListParams::default()).await?.items.len();
        Ok((done && pods == 2).then_some(()))
    }).await?;
    results.insert("rolling_update.rollout_s".into(), start.elapsed().as_secs_f64());
    // Keep the load on a little after the last old pod went.
    let settled = load.ok.load(Ordering::Relaxed) + 2;
    until("requests after the rollout", Duration::from_secs(60), || async { Ok((load.ok.load(Ordering::Relaxed) >= settled).then_some(())) }).await?;
    let (ok, _) = stop_load(&load, tasks).await?;
    results.insert("rolling_update.requests_during_rollout".into(), ok as f64);
    // Every pod now renders the new template.
    for _ in 0..4 {
        let after = prompt_tokens(chat(&http(), &base, "Hi", 1).await?);
        ensure!(after > before, "prompt tokens {after} after the change, {before} before: old template still served");
    }
    ensure!(count::<ReplicaSet>(c, ns).await? == 2, "expected the old and the new ReplicaSet");
    Ok(())
}

/// Serves the test model over HTTP, as a model URL source would be.
async fn model_url(c: &Cluster) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let bytes = axum::body::Bytes::from(tokio::fs::read(model_path(c)).await?);
    let app = axum::Router::new().route("/models/smollm2.gguf", axum::routing::get(move || {
        let b = bytes.clone();
        async move { b }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/models/smollm2.gguf", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// Switching the model source (hostPath → URL) rolls the pod: the new one downloads the
/// model in its init container, then serves it.
async fn model_change(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    apply(c, ns, &smollm2(c, "switch", json!({}))).await?;
    wait_ready(c, ns, "switch", 1, Duration::from_secs(180)).await?;
    let (url, server) = model_url(c).await?;
    let mut llm = smollm2(c, "switch", json!({"model": {"url": url}}));
    // Dropped from the applied configuration, so server-side apply removes it.
    llm["spec"]["model"].as_object_mut().context("model")?.remove("hostPath");
    let start = Instant::now();
    apply(c, ns, &llm).await?;
    let llm = until("the URL-sourced pod to serve", Duration::from_secs(240), || async {
        let llm = get_llm(c, ns, "switch").await?;
        let pods = live_pods(c, ns).await?;
        let init_done = pods.iter().any(|p| p.status.as_ref().and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten()
            .any(|s| s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0)));
        let ready = llm["status"]["readyReplicas"] == 1 && llm["status"]["observedGeneration"] == llm["metadata"]["generation"];
        Ok((init_done && ready && pods.len() == 1).then_some(llm))
    }).await?;
    results.insert("model_change.rollout_with_download_s".into(), start.elapsed().as_secs_f64());
    ensure!(llm["spec"]["model"].get("hostPath").is_none(), "hostPath still set: {}", llm["spec"]["model"]);
    ensure!(llm["status"]["model"].as_str().is_some_and(|m| m.starts_with("http://")), "status.model {}", llm["status"]["model"]);
    let (base, _proxy) = c.endpoint_url(llm["status"]["endpoint"].as_str().context("endpoint")?).await?;
    let v = chat(&http(), &base, "Hello", 4).await?;
    ensure!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    server.abort();
    Ok(())
}

/// Load above target → replicas grow while requests succeed; load stops → back down after
/// the delay.
async fn autoscale(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    let spec = json!({"server": {"maxNumSeqs": 2}, "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 2,
        "targetRequestsPerReplica": 2, "pollSeconds": 1, "scaleUpStabilizationSeconds": 0, "scaleDownDelaySeconds": 5}});
    apply(c, ns, &smollm2(c, "auto", spec)).await?;
    let llm = wait_ready(c, ns, "auto", 1, Duration::from_secs(180)).await?;
    let (base, _proxy) = c.endpoint_url(llm["status"]["endpoint"].as_str().context("endpoint")?).await?;
    let start = Instant::now();
    let (load, tasks) = start_load(base, 6, 48);
    until("the autoscaler to ask for 2 replicas", Duration::from_secs(60), || async {
        Ok((get_llm(c, ns, "auto").await?["status"]["desiredReplicas"] == 2).then_some(()))
    }).await?;
    results.insert("autoscale.load_to_scale_up_decision_s".into(), start.elapsed().as_secs_f64());
    wait_ready(c, ns, "auto", 2, Duration::from_secs(180)).await?;
    results.insert("autoscale.load_to_second_replica_ready_s".into(), start.elapsed().as_secs_f64());
    let served = load.ok.load(Ordering::Relaxed) + 4;
    until("requests served with 2 replicas", Duration::from_secs(120), || async { Ok((load.ok.load(Ordering::Relaxed) >= served).then_some(())) }).await?;
    // The operator's below-target window opens while the last requests drain, so the delay
    // is measured from the stop signal, not from the moment they have all finished.
    let idle = Instant::now();
    stop_load(&load, tasks).await?;
    until("scale-down to 1 replica", Duration::from_secs(120), || async {
        let llm = get_llm(c, ns, "auto").await?;
        let pods = live_pods(c, ns).await?.len();
        Ok((llm["status"]["desiredReplicas"] == 1 && pods == 1).then_some(()))
    }).await?;
    let down = idle.elapsed().as_secs_f64();
    results.insert("autoscale.idle_to_scale_down_s".into(), down);
    ensure!(down >= 5.0, "scaled down after {down:.1}s, before the 5 s delay");
    Ok(())
}

/// The operator dies while a resource is created and while it changes: after a restart there
/// are no duplicates and the state converges.
async fn operator_restart(c: &Cluster, ns: &str, _: &mut Results) -> anyhow::Result<()> {
    apply(c, ns, &smollm2(c, "restart", json!({"replicas": 1}))).await?;
    // Die as soon as the operator has started to act on it.
    until("the operator to create the Deployment", Duration::from_secs(30), || async {
        Ok(Api::<Deployment>::namespaced(c.client.clone(), ns).get_opt("restart").await?.map(|_| ()))
    }).await?;
    c.kill_operator();
    apply(c, ns, &smollm2(c, "restart", json!({"replicas": 2}))).await?;
    c.start_operator()?;
    c.operator_ready().await?;
    wait_ready(c, ns, "restart", 2, Duration::from_secs(240)).await?;
    // Kill it again mid-way through a scale-down and restart it.
    apply(c, ns, &smollm2(c, "restart", json!({"replicas": 1}))).await?;
    c.kill_operator();
    c.start_operator()?;
    c.operator_ready().await?;
    until("one replica after the second restart", Duration::from_secs(120), || async {
        let llm = get_llm(c, ns, "restart").await?;
        let converged = llm["status"]["readyReplicas"] == 1 && llm["status"]["observedGeneration"] == llm["metadata"]["generation"];
        Ok((converged && live_pods(c, ns).await?.len() == 1).then_some(()))
    }).await?;
    let counts = (count::<Deployment>(c, ns).await?, count::<Service>(c, ns).await?, count::<ReplicaSet>(c, ns).await?,
        count::<PodDisruptionBudget>(c, ns).await?);
    ensure!(counts == (1, 1, 1, 0), "Deployments, Services, ReplicaSets, PDBs = {counts:?}, want (1, 1, 1, 0)");
    Ok(())
}

/// A server process that dies is restarted by the node agent: exit code and restart count
/// in the pod status, Ready again, serving again.
async fn crash_restart(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    let agent = c.agent.as_ref().context("needs the node agent")?;
    apply(c, ns, &smollm2(c, "crash", json!({}))).await?;
    let llm = wait_ready(c, ns, "crash", 1, Duration::from_secs(180)).await?;
    let pid = agent.processes().iter().find(|p| p.namespace == ns).map(|p| p.pid).context("no process")?;
    let start = Instant::now();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    until("the container to restart and be ready again", Duration::from_secs(120), || async {
        let pod = live_pods(c, ns).await?.pop().context("pod")?;
        let cs = pod.status.and_then(|s| s.container_statuses).unwrap_or_default().pop().context("container status")?;
        let last = cs.last_state.and_then(|s| s.terminated).map(|t| t.exit_code);
        Ok((cs.restart_count == 1 && last == Some(137) && cs.ready).then_some(()))
    }).await?;
    results.insert("crash_restart.kill_to_ready_s".into(), start.elapsed().as_secs_f64());
    ensure!(pods.list(&ListParams::default()).await?.items.len() == 1, "the pod was replaced, not restarted");
    let (base, _proxy) = c.endpoint_url(llm["status"]["endpoint"].as_str().context("endpoint")?).await?;
    chat(&http(), &base, "Hello again", 4).await?;
    Ok(())
}

/// Deleting the LLMDeployment removes every child and stops the processes.
async fn delete(c: &Cluster, ns: &str, results: &mut Results) -> anyhow::Result<()> {
    apply(c, ns, &smollm2(c, "gone", json!({"model": {"chatTemplate": {"inline": TEMPLATE_V1}}}))).await?;
    wait_ready(c, ns, "gone", 1, Duration::from_secs(180)).await?;
    let pod = live_pods(c, ns).await?.pop().context("pod")?;
    let ip = pod.status.and_then(|s| s.pod_ip).context("podIP")?;
    ensure!(count::<ConfigMap>(c, ns).await? == 1, "the inline template's ConfigMap");
    let start = Instant::now();
    llm_api(c, ns).delete("gone", &DeleteParams::default()).await?;
    until("every child and process to go", Duration::from_secs(120), || async {
        let left = count::<Deployment>(c, ns).await? + count::<ReplicaSet>(c, ns).await? + count::<Pod>(c, ns).await?
            + count::<Service>(c, ns).await? + count::<ConfigMap>(c, ns).await?;
        let procs = c.agent.as_ref().map_or(0, |a| a.processes().iter().filter(|p| p.namespace == ns).count());
        Ok((left == 0 && procs == 0).then_some(()))
    }).await?;
    results.insert("delete.delete_to_gone_s".into(), start.elapsed().as_secs_f64());
    if c.agent.is_some() {
        ensure!(tokio::net::TcpStream::connect((ip.as_str(), 8000)).await.is_err(), "the server at {ip}:8000 still accepts connections");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

type Scenario = for<'a> fn(&'a Cluster, &'a str, &'a mut Results) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;

macro_rules! scenario {
    ($f:ident) => {
        (stringify!($f), (|c, ns, r| Box::pin($f(c, ns, r))) as Scenario)
    };
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let scenarios = [scenario!(serve), scenario!(invalid), scenario!(crash_restart), scenario!(delete), scenario!(operator_restart),
        scenario!(rolling_update), scenario!(model_change), scenario!(autoscale)];
    let selected: Vec<_> = scenarios.iter().filter(|(n, _)| wanted.is_empty() || wanted.iter().any(|w| n.contains(w.as_str()))).collect();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_env("E2E_LOG").unwrap_or_else(|_| "warn".into())).init();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let failed = runtime.block_on(async {
        let started = Instant::now();
        let cluster = match Cluster::start().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("e2e: setting up the cluster failed: {e:#}");
                return 1;
            }
        };
        println!("e2e: {} against {}", selected.len(), if cluster.apiserver.is_some() { "the API stand-in" } else { "KUBECONFIG" });
        if let Err(e) = cluster.operator_ready().await {
            eprintln!("{e:#}\n{}", cluster.logs(60));
            cluster.shutdown().await;
            return 1;
        }
        let mut results = Results::new();
        let mut failed = 0;
        for (name, run) in &selected {
            let t = Instant::now();
            let outcome = match cluster.namespace(&name.replace('_', "-")).await {
                Ok(ns) => {
                    let r = tokio::time::timeout(Duration::from_secs(600), run(&cluster, &ns, &mut results)).await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario deadline (600 s) passed")));
                    // The namespace goes either way; its removal is part of the check.
                    let cleanup = cluster.delete_namespace(&ns).await;
                    r.and(cleanup)
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => println!("e2e: {name} ... ok ({:.1}s)", t.elapsed().as_secs_f64()),
                Err(e) => {
                    failed += 1;
                    println!("e2e: {name} ... FAILED ({:.1}s): {e:#}\n{}", t.elapsed().as_secs_f64(), cluster.logs(40));
                }
            }
        }
        for (k, v) in &results {
            println!("e2e: {k} = {v:.2}");
        }
        let out = cluster.work_dir.parent().map(|p| p.join("results.json"));
        if let Some(out) = out {
            let _ = std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap_or_default());
        }
        println!("e2e: {} passed, {failed} failed in {:.0}s", selected.len() - failed, started.elapsed().as_secs_f64());
        // Logs stay for a failed run only.
        let work_dir = cluster.work_dir.clone();
        cluster.shutdown().await;
        if failed == 0 {
            let _ = std::fs::remove_dir_all(work_dir);
        }
        failed
    });
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
