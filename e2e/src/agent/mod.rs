//! A node agent: the part of a kubelet the suite needs, against any Kubernetes API server.
//! It registers a Node (and renews its Lease), binds unscheduled pods that fit it, and runs
//! each pod's containers as local processes ([`pod`]).
//!
//! The stand-ins for what a container runtime gives a pod: the image is mapped to a local
//! binary (`--image PATTERN=BINARY`); each pod gets its own loopback address (127.0.0.2,
//! 127.0.0.3, …) as `podIP`, and a container argument `0.0.0.0` (listen everywhere, in its own
//! network namespace) becomes that address; volume mounts become local paths (emptyDir and
//! configMap/secret volumes under the pod's directory, hostPath as is, PVCs under
//! `--pvc-root/CLAIM`), and arguments and env values under a mount path are rewritten to them.
//! Not emulated: isolation of any kind (users, capabilities, seccomp, cgroups, resource
//! limits), image pulls, `exec`/`tcpSocket`/`grpc` probes (httpGet only), `kubectl logs`/`exec`
//! (logs are files under the work directory), ephemeral and sidecar containers.

pub mod pod;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// (substring of the image reference, local binary), first match wins.
    pub images: Vec<(String, PathBuf)>,
    /// Pod directories (volumes) and container logs.
    pub work_dir: PathBuf,
    /// Where a PersistentVolumeClaim's contents are: `pvc_root/CLAIM_NAME`.
    pub pvc_root: Option<PathBuf>,
    /// The first pod address; later pods count up from it.
    pub first_ip: Ipv4Addr,
}

impl AgentConfig {
    pub fn log_path(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        self.work_dir.join("logs").join(format!("{ns}_{pod}_{container}.log"))
    }
}

/// A process the agent runs, for callers that check what is running.
#[derive(Debug, Clone)]
pub struct Running {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: u32,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub processes: HashMap<(String, String, String), u32>,
    next_ip: u32,
    free_ips: Vec<Ipv4Addr>,
}

/// A running agent; the pods' processes are killed when it is shut down (or when this
/// process dies: they are started with a parent-death signal).
pub struct Agent {
    pub config: Arc<AgentConfig>,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<BTreeMap<(String, String), pod::Handle>>>,
}

impl Agent {
    pub async fn start(client: Client, config: AgentConfig) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(config.work_dir.join("logs")).context("work dir")?;
        let config = Arc::new(config);
        register_node(&client, &config).await?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let pods = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(run(client, config.clone(), shared.clone(), pods.clone()));
        Ok(Agent { config, shared, task, pods })
    }

    /// The processes running now.
    pub fn processes(&self) -> Vec<Running> {
        self.shared.lock().expect("agent").processes.iter()
            .map(|((ns, p, c), pid)| Running { namespace: ns.clone(), pod: p.clone(), container: c.clone(), pid: *pid })
            .collect()
    }

    /// Stops watching and kills every pod's processes (no API calls: the pods stay).
    pub async fn shutdown(self) {
        self.task.abort();
        let handles: Vec<pod::Handle> = std::mem::take(&mut *self.pods.lock().expect("agent")).into_values().collect();
        for h in handles {
            h.kill().await;
        }
    }
}

pub(crate) fn allocate_ip(shared: &Mutex<Shared>, first: Ipv4Addr) -> Ipv4Addr {
    let mut s = shared.lock().expect("agent");
    if let Some(ip) = s.free_ips.pop() {
        return ip;
    }
    let ip = Ipv4Addr::from(u32::from(first) + s.next_ip);
    s.next_ip += 1;
    ip
}

pub(crate) fn release_ip(shared: &Mutex<Shared>, ip: Ipv4Addr) {
    // Reused last-in-last-out, so a restarted pod rarely gets an address a client still uses.
    shared.lock().expect("agent").free_ips.insert(0, ip);
}

async fn register_node(client: &Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.node_name, "labels": {
        "kubernetes.io/hostname": cfg.node_name, "kubernetes.io/os": "linux", "kubernetes.io/arch": std::env::consts::ARCH,
        "kandle.dev/node-agent": "true"}}});
    nodes.patch(&cfg.node_name, &PatchParams::apply("kandle-node-agent").force(), &Patch::Apply(&node)).await
        .context("registering the Node")?;
    heartbeat(client, cfg).await
}

/// Node status (Ready) and the node Lease, renewed so a real control plane keeps the node.
async fn heartbeat(client: &Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    let now = crate::now();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kandle node agent is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": cfg.node_name}],
        "capacity": {"cpu": cpus.to_string(), "memory": "64Gi", "pods": "110"},
        "allocatable": {"cpu": cpus.to_string(), "memory": "64Gi", "pods": "110"},
        "nodeInfo": {"kubeletVersion": "v1.33.0-kandle-node-agent", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
            "containerRuntimeVersion": "local-process://1", "kernelVersion": "", "osImage": "", "machineID": "", "systemUUID": "",
            "bootID": "", "kubeProxyVersion": ""}}});
    Api::<Node>::all(client.clone()).patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&status)).await
        .context("node status")?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let micro = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": cfg.node_name},
        "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40, "renewTime": micro}});
    // The node lease is best effort: a namespace without it only loses the heartbeat.
    let _ = leases.patch(&cfg.node_name, &PatchParams::apply("kandle-node-agent").force(), &Patch::Apply(&lease)).await;
    Ok(())
}

/// Does the pod fit this node (nodeSelector on our labels; no other scheduling rules)?
fn fits(pod: &Pod, cfg: &AgentConfig) -> bool {
    let spec = pod.spec.as_ref();
    let sched = spec.and_then(|s| s.scheduler_name.as_deref()).unwrap_or("default-scheduler");
    let selector = spec.and_then(|s| s.node_selector.clone()).unwrap_or_default();
    sched == "default-scheduler" && selector.iter().all(|(k, v)| match k.as_str() {
        "kubernetes.io/hostname" => *v == cfg.node_name,
        "kubernetes.io/os" => v == "linux",
        "kubernetes.io/arch" => v == std::env::consts::ARCH,
        "kandle.dev/node-agent" => v == "true",
        _ => false,
    })
}

async fn run(client: Client, cfg: Arc<AgentConfig>, shared: Arc<Mutex<Shared>>, pods: Arc<Mutex<BTreeMap<(String, String), pod::Handle>>>) {
    let api: Api<Pod> = Api::all(client.clone());
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
    let watch_api = api.clone();
    tokio::spawn(async move {
        let mut events = watcher(watch_api, watcher::Config::default()).boxed();
        while let Some(e) = events.next().await {
            if e.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = wake_tx.try_send(());
        }
    });
    let mut last_heartbeat = tokio::time::Instant::now();
    loop {
        if last_heartbeat.elapsed() > Duration::from_secs(10) {
            if let Err(e) = heartbeat(&client, &cfg).await {
                tracing::warn!("node heartbeat: {e:#}");
            }
            last_heartbeat = tokio::time::Instant::now();
        }
        match api.list(&ListParams::default()).await {
            Ok(list) => sync(&client, &cfg, &shared, &pods, list.items).await,
            Err(e) => tracing::warn!("listing pods: {e}"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), wake.recv()).await;
    }
}

async fn sync(client: &Client, cfg: &Arc<AgentConfig>, shared: &Arc<Mutex<Shared>>,
    pods: &Arc<Mutex<BTreeMap<(String, String), pod::Handle>>>, items: Vec<Pod>) {
    let mut seen = std::collections::HashSet::new();
    for p in items {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        if node.is_none() && p.metadata.deletion_timestamp.is_none() && fits(&p, cfg) {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": cfg.node_name}});
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if let Err(e) = api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await {
                tracing::warn!("binding {ns}/{name}: {e}");
            }
            continue;
        }
        if node.as_deref() != Some(cfg.node_name.as_str()) {
            continue;
        }
        let key = (ns.clone(), name.clone());
        seen.insert(key.clone());
        let existing = pods.lock().expect("agent").get(&key).map(|h| h.uid.clone());
        match existing {
            // A new pod with the same name as one we still run: the old one is gone.
            Some(uid) if Some(&uid) != p.metadata.uid.as_ref() => {
                let old = pods.lock().expect("agent").remove(&key);
                if let Some(h) = old {
                    h.kill().await;
                }
            }
            Some(_) => {
                if p.metadata.deletion_timestamp.is_some() {
                    if let Some(h) = pods.lock().expect("agent").get(&key) {
                        h.terminate(p.metadata.deletion_grace_period_seconds.unwrap_or(30));
                    }
                }
                continue;
            }
            None => {}
        }
        if p.metadata.deletion_timestamp.is_some() {
            // Not running here (never started, or started by an agent before this one).
            let _ = Api::<Pod>::namespaced(client.clone(), &ns).delete(&name, &DeleteParams::default().grace_period(0)).await;
            continue;
        }
        let handle = pod::start(client.clone(), cfg.clone(), shared.clone(), p);
        if let Some(h) = handle {
            pods.lock().expect("agent").insert(key, h);
        }
    }
    // Pods deleted outright (force delete, namespace gone): kill what still runs.
    let gone: Vec<pod::Handle> = {
        let mut map = pods.lock().expect("agent");
        let keys: Vec<_> = map.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        keys.into_iter().filter_map(|k| map.remove(&k)).collect()
    };
    for h in gone {
        h.kill().await;
    }
    pods.lock().expect("agent").retain(|_, h| !h.finished());
}
