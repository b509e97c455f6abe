//! The environment the scenarios run in: an API server (the stand-in, or the real one of
//! `KUBECONFIG`), the CRD, the operator as a real process (so it can be restarted), the node
//! agent running the pods, and a kube-proxy stand-in that makes Services reachable.

use crate::agent::{Agent, AgentConfig};
use crate::apiserver::ApiServer;
use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NODE_NAME: &str = "kandle-e2e-node";

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// None when running against the API server of `KUBECONFIG`.
    pub apiserver: Option<ApiServer>,
    pub agent: Option<Agent>,
    pub work_dir: PathBuf,
    pub repo: PathBuf,
    pub bin_dir: PathBuf,
    operator: Mutex<Option<Child>>,
    operator_probe: SocketAddr,
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `limit` saying what
/// it waited for and what it saw last.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "not yet".into(),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("repo root")?.to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo.join("target"));
        let bin_dir = target.join("debug");
        if std::env::var_os("KANDLE_E2E_SKIP_BUILD").is_none() {
            // The binaries under test. `--workspace` keeps the features the same as
            // `cargo build --workspace`. Run from inside `cargo test` it was seen to rebuild
            // ring and its dependents (cause not pinned down), so scripts/test.sh, which has
            // just built the binaries, skips it.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo).args(["build", "--workspace", "--bins"])
                .current_dir(&repo).status().context("cargo build")?;
            if !status.success() {
                bail!("building kandle-server and kandle-operator failed");
            }
        }
        let model = repo.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model.exists() {
            bail!("{} is missing: run ./scripts/fetch-models.sh", model.display());
        }
        let work_dir = target.join("e2e").join(format!("run-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir)?;
        let (client, kubeconfig, apiserver) = match std::env::var_os("KUBECONFIG") {
            Some(path) => (Client::try_default().await.context("KUBECONFIG")?, PathBuf::from(path), None),
            None => {
                let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
                let path = work_dir.join("kubeconfig");
                std::fs::write(&path, server.kubeconfig())?;
                (server.client(), path, Some(server))
            }
        };
        let mut cluster = Cluster { client: client.clone(), kubeconfig, apiserver, agent: None, work_dir: work_dir.clone(), repo,
            bin_dir, operator: Mutex::new(None), operator_probe: free_port()? };
        cluster.install_crd().await?;
        if std::env::var_os("KANDLE_E2E_NO_AGENT").is_none() {
            let config = AgentConfig {
                node_name: NODE_NAME.into(),
                images: vec![("kandle-server".into(), cluster.bin_dir.join("kandle-server"))],
                work_dir: work_dir.join("node"),
                pvc_root: None,
                first_ip: Ipv4Addr::new(127, 0, 0, 2),
            };
            cluster.agent = Some(Agent::start(client, config).await?);
        }
        cluster.start_operator()?;
        Ok(cluster)
    }

    async fn install_crd(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.repo.join("crds/llmdeployment.yaml"))?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("kandle-e2e").force(), &Patch::Apply(&crd)).await.context("applying the CRD")?;
        until("the CRD to be established", Duration::from_secs(30), || async {
            let c = api.get(&name).await?;
            Ok(c.status.and_then(|s| s.conditions).unwrap_or_default().iter()
                .any(|c| c.type_ == "Established" && c.status == "True").then_some(()))
        }).await
    }

    pub fn operator_log(&self) -> PathBuf {
        self.work_dir.join("operator.log")
    }

    /// Starts `kandle-operator run` against this cluster.
    pub fn start_operator(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.operator_log())?;
        let child = Command::new(self.bin_dir.join("kandle-operator"))
            .args(["run", "--probe-addr", &self.operator_probe.to_string()])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KANDLE_SERVER_IMAGE", "ghcr.io/kandle/kandle-server:e2e")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log)
            .spawn().context("starting kandle-operator")?;
        *self.operator.lock().expect("operator") = Some(child);
        Ok(())
    }

    /// Kills the operator (SIGKILL: a crash, not a graceful stop).
    pub fn kill_operator(&self) {
        if let Some(mut c) = self.operator.lock().expect("operator").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the operator's `/readyz`.
    pub async fn operator_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.operator_probe);
        until("the operator to be ready", Duration::from_secs(60), || async {
            Ok(reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()))
        }).await
    }

    /// A fresh namespace for one scenario.
    pub async fn namespace(&self, scenario: &str) -> anyhow::Result<String> {
        let name = format!("e2e-{scenario}-{}", std::process::id() % 100_000);
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Deletes a namespace and waits until it (with everything in it) is gone.
    pub async fn delete_namespace(&self, ns: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.delete(ns, &DeleteParams::default()).await?;
        until(&format!("namespace {ns} to go"), Duration::from_secs(120), || async { Ok(api.get_opt(ns).await?.is_none().then_some(())) }).await
    }

    /// The Service behind an LLMDeployment `status.endpoint` (`http://NAME.NS.svc:PORT/v1`)
    /// as a local URL (through [`ServiceProxy`]).
    pub async fn endpoint_url(&self, endpoint: &str) -> anyhow::Result<(String, ServiceProxy)> {
        let rest = endpoint.strip_prefix("http://").context("endpoint is not http://")?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = host.split_once(':').unwrap_or((host, "80"));
        let mut parts = host.split('.');
        let (svc, ns) = (parts.next().context("service")?, parts.next().context("namespace")?);
        let proxy = ServiceProxy::start(self.client.clone(), ns, svc, port.parse()?).await?;
        Ok((format!("http://{}/{path}", proxy.addr), proxy))
    }

    /// The last lines of the operator's and each pod's logs, for a failure report.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut files = vec![self.operator_log()];
        if let Ok(dir) = std::fs::read_dir(self.work_dir.join("node").join("logs")) {
            let mut logs: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            logs.sort();
            files.extend(logs);
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("----- {} (last {lines} lines)\n", f.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub async fn shutdown(mut self) {
        self.kill_operator();
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
    }
}

/// kube-proxy's job for one Service: each TCP connection goes to one of the ready,
/// not-terminating pods its selector picks (round robin), at the target port. No ready pod:
/// the connection is closed, as a Service without endpoints rejects it.
pub struct ServiceProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServiceProxy {
    pub async fn start(client: Client, ns: &str, service: &str, port: i32) -> anyhow::Result<ServiceProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (ns, service) = (ns.to_string(), service.to_string());
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (client, ns, service, next) = (client.clone(), ns.clone(), service.clone(), next.clone());
                tokio::spawn(async move {
                    let Ok(endpoints) = endpoints(&client, &ns, &service, port).await else { return };
                    if endpoints.is_empty() {
                        return;
                    }
                    let target = endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(ServiceProxy { addr, task })
    }
}

/// Ready, not-terminating pods of a Service, at its target port (as EndpointSlices list).
pub async fn endpoints(client: &Client, ns: &str, service: &str, port: i32) -> anyhow::Result<Vec<SocketAddr>> {
    let svc = Api::<Service>::namespaced(client.clone(), ns).get(service).await?;
    let spec = svc.spec.unwrap_or_default();
    let selector: Vec<String> = spec.selector.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let sp = spec.ports.unwrap_or_default().into_iter().find(|p| p.port == port).context("no such service port")?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels(&selector.join(","))).await?;
    let mut out = vec![];
    for p in pods.items {
        let ready = p.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let (Some(ip), true, None) = (ip, ready, p.metadata.deletion_timestamp.as_ref()) else { continue };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let target = match &sp.target_port {
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => p.spec.as_ref().into_iter().flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten()).find(|cp| cp.name.as_deref() == Some(name.as_str())).map(|cp| cp.container_port),
            None => Some(sp.port),
        };
        if let Some(t) = target {
            out.push(SocketAddr::new(ip, t as u16));
        }
    }
    Ok(out)
}
