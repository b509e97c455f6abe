//! One pod on the node agent: its volumes as local directories, init containers run to
//! completion in order, then the containers as supervised processes (restarts with
//! back-off, startup/readiness/liveness httpGet probes at their configured periods), and the
//! pod's status written back as the kubelet would. On deletion: SIGTERM, the grace period,
//! SIGKILL, then the pod object is removed.

use super::{allocate_ip, release_ip, AgentConfig, Shared};
use crate::now;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Run,
    /// Pod deleted: SIGTERM, then SIGKILL after this many seconds.
    Terminate(i64),
    /// Agent shutting down: kill, no API calls.
    Kill,
}

pub struct Handle {
    pub uid: String,
    stop: watch::Sender<Stop>,
    done: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn terminate(&self, grace: i64) {
        self.stop.send_if_modified(|s| {
            let first = *s == Stop::Run;
            if first {
                *s = Stop::Terminate(grace);
            }
            first
        });
    }

    pub async fn kill(self) {
        self.stop.send_replace(Stop::Kill);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

pub(crate) fn start(client: Client, cfg: Arc<AgentConfig>, shared: Arc<Mutex<Shared>>, pod: Pod) -> Option<Handle> {
    let uid = pod.metadata.uid.clone()?;
    let (stop, rx) = watch::channel(Stop::Run);
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let task = tokio::spawn(async move {
        let ip = allocate_ip(&shared, cfg.first_ip);
        let mut runner = Runner::new(client, cfg, shared.clone(), pod, ip);
        runner.run(rx).await;
        runner.stop_all(Duration::ZERO);
        release_ip(&shared, ip);
        d.store(true, Ordering::Relaxed);
    });
    Some(Handle { uid, stop, done, task })
}

/// A container's `terminated` state, stamped once when it exits.
fn terminated(code: i32, started_at: &str) -> Value {
    json!({"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": started_at, "finishedAt": now()})
}


/// One container's process and what the kubelet reports about it.
struct ContainerState {
    spec: Container,
    child: Option<Child>,
    started_at: String,
    restarts: i32,
    last_exit: Option<Value>,
    waiting: Option<(String, String)>,
    next_start: Instant,
    backoff: Duration,
    started: bool,
    ready: bool,
    /// Probe name → (next time, consecutive failures).
    probes: BTreeMap<&'static str, (Instant, i32)>,
    exited: Option<i32>,
}

impl ContainerState {
    fn new(spec: Container) -> Self {
        ContainerState { spec, child: None, started_at: String::new(), restarts: 0, last_exit: None,
            waiting: Some(("ContainerCreating".into(), String::new())), next_start: Instant::now(), backoff: Duration::from_secs(1),
            started: false, ready: false, probes: BTreeMap::new(), exited: None }
    }

    fn status(&self, init: bool) -> Value {
        let state = match (&self.child, &self.waiting, self.exited) {
            (Some(_), _, _) => json!({"running": {"startedAt": self.started_at}}),
            (None, _, Some(_)) if init || self.waiting.is_none() => json!({"terminated": self.last_exit}),
            (None, Some((reason, message)), _) => json!({"waiting": {"reason": reason, "message": message}}),
            (None, None, _) => json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let mut s = json!({"name": self.spec.name, "image": self.spec.image, "imageID": "", "ready": self.ready,
            "started": self.started, "restartCount": self.restarts, "state": state});
        if let Some(c) = &self.child {
            s["containerID"] = json!(format!("local://{}", c.id()));
        }
        // The previous run, while the container runs again or waits to.
        if let (Some(last), false) = (&self.last_exit, s["state"].get("terminated").is_some()) {
            s["lastState"] = json!({"terminated": last});
        }
        s
    }
}

struct Runner {
    client: Client,
    cfg: Arc<AgentConfig>,
    shared: Arc<Mutex<Shared>>,
    pod: Pod,
    ns: String,
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    init: Vec<ContainerState>,
    init_count: usize,
    containers: Vec<ContainerState>,
    conditions: BTreeMap<&'static str, (bool, String)>,
    start_time: String,
    last_status: Value,
    mounts: Option<BTreeMap<String, PathBuf>>,
}

impl Runner {
    fn new(client: Client, cfg: Arc<AgentConfig>, shared: Arc<Mutex<Shared>>, pod: Pod, ip: Ipv4Addr) -> Self {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = cfg.work_dir.join("pods").join(&ns).join(&name);
        Runner {
            client, shared, ip, dir,
            init_count: spec.init_containers.as_ref().map_or(0, Vec::len),
            init: spec.init_containers.unwrap_or_default().into_iter().map(ContainerState::new).collect(),
            containers: spec.containers.into_iter().map(ContainerState::new).collect(),
            conditions: BTreeMap::new(), start_time: now(), last_status: Value::Null, mounts: None,
            cfg, pod, ns, name,
        }
    }

    fn restart_policy(&self) -> String {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
    }

    async fn run(&mut self, mut stop: watch::Receiver<Stop>) {
        self.set_condition("PodScheduled", true);
        loop {
            let now = *stop.borrow();
            match now {
                Stop::Run => {}
                Stop::Kill => return,
                Stop::Terminate(grace) => {
                    self.terminate(grace).await;
                    return;
                }
            }
            self.step().await;
            self.push_status().await;
            let _ = tokio::time::timeout(Duration::from_millis(250), stop.changed()).await;
        }
    }

    /// One pass of the state machine: volumes, init containers, containers, probes.
    async fn step(&mut self) {
        if self.mounts.is_none() {
            match self.prepare_volumes().await {
                Ok(m) => self.mounts = Some(m),
                Err(e) => {
                    for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
                        c.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                    }
                    return;
                }
            }
        }
        // Init containers, one at a time, each to success.
        if let Some(i) = self.init.iter().position(|c| c.exited != Some(0)) {
            self.supervise(true, i);
            self.set_condition("Initialized", false);
            return;
        }
        self.set_condition("Initialized", true);
        for i in 0..self.containers.len() {
            self.supervise(false, i);
            self.probe(i).await;
        }
        let all_ready = self.containers.iter().all(|c| c.ready);
        self.set_condition("ContainersReady", all_ready);
        self.set_condition("Ready", all_ready);
    }

    /// Starts, reaps and restarts one container's process.
    fn supervise(&mut self, init: bool, i: usize) {
        let policy = self.restart_policy();
        let c = if init { &mut self.init[i] } else { &mut self.containers[i] };
        if let Some(child) = c.child.as_mut() {
            let Ok(Some(exit)) = child.try_wait() else { return };
            let code = exit.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&exit).unwrap_or(9));
            let pid = child.id();
            c.child = None;
            c.exited = Some(code);
            c.started = false;
            c.ready = false;
            c.probes.clear();
            self.shared.lock().expect("agent").processes.remove(&(self.ns.clone(), self.name.clone(), c.spec.name.clone()));
            tracing::info!(pod = %self.name, container = %c.spec.name, pid, code, "container exited");
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => !(init && code == 0),
            };
            c.last_exit = Some(terminated(code, &c.started_at));
            if init && code == 0 {
                c.waiting = None;
                return;
            }
            if restart {
                // The kubelet's CrashLoopBackOff, scaled down (1 s doubling to 10 s, not 10 s to 5 min).
                c.waiting = Some(("CrashLoopBackOff".into(), format!("back-off {:?} restarting failed container", c.backoff)));
                c.next_start = Instant::now() + c.backoff;
                c.backoff = (c.backoff * 2).min(Duration::from_secs(10));
            } else {
                c.waiting = None;
            }
            return;
        }
        let finished = c.exited.is_some() && c.waiting.is_none();
        if finished || Instant::now() < c.next_start {
            return;
        }
        if c.exited.is_some() {
            c.restarts += 1;
        }
        let spec = c.spec.clone();
        match self.spawn(&spec) {
            Ok(child) => {
                let c = if init { &mut self.init[i] } else { &mut self.containers[i] };
                self.shared.lock().expect("agent").processes.insert((self.ns.clone(), self.name.clone(), spec.name.clone()), child.id());
                tracing::info!(pod = %self.name, container = %spec.name, pid = child.id(), "container started");
                c.child = Some(child);
                c.started_at = now();
                c.waiting = None;
                c.exited = None;
                c.started = c.spec.startup_probe.is_none();
            }
            Err(e) => {
                let c = if init { &mut self.init[i] } else { &mut self.containers[i] };
                c.waiting = Some(("CreateContainerError".into(), e));
                c.next_start = Instant::now() + Duration::from_secs(2);
            }
        }
    }

    async fn probe(&mut self, i: usize) {
        let ip = self.ip;
        let c = &mut self.containers[i];
        if c.child.is_none() {
            return;
        }
        let mut kinds: Vec<(&'static str, Probe)> = vec![];
        match (&c.spec.startup_probe, c.started) {
            (Some(p), false) => kinds.push(("startup", p.clone())),
            _ => {
                c.started = true;
                match &c.spec.readiness_probe {
                    Some(p) => kinds.push(("readiness", p.clone())),
                    None => c.ready = true,
                }
                if let Some(p) = &c.spec.liveness_probe {
                    kinds.push(("liveness", p.clone()));
                }
            }
        }
        for (kind, p) in kinds {
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            let first = Instant::now() + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
            let (next, failures) = *c.probes.entry(kind).or_insert((first, 0));
            if Instant::now() < next {
                continue;
            }
            let ok = http_probe(&p, &c.spec, ip).await;
            let failures = if ok { 0 } else { failures + 1 };
            c.probes.insert(kind, (Instant::now() + period, failures));
            let threshold = p.failure_threshold.unwrap_or(3);
            match kind {
                "startup" if ok => c.started = true,
                "readiness" => {
                    if ok {
                        c.ready = true;
                    } else if failures >= threshold {
                        c.ready = false;
                    }
                }
                "startup" | "liveness" if failures >= threshold => {
                    tracing::warn!(pod = %self.name, container = %c.spec.name, "{kind} probe failed {failures} times: restarting");
                    if let Some(child) = c.child.as_ref() {
                        signal(child.id(), libc::SIGKILL);
                    }
                }
                _ => {}
            }
        }
    }

    fn set_condition(&mut self, type_: &'static str, ok: bool) {
        match self.conditions.get(type_) {
            Some((v, _)) if *v == ok => {}
            _ => {
                self.conditions.insert(type_, (ok, now()));
            }
        }
    }

    fn status(&self) -> Value {
        let running = self.containers.iter().any(|c| c.child.is_some());
        let all_done = !self.containers.is_empty() && self.containers.iter().all(|c| c.exited.is_some() && c.waiting.is_none() && c.child.is_none());
        let phase = if all_done {
            if self.containers.iter().all(|c| c.exited == Some(0)) { "Succeeded" } else { "Failed" }
        } else if running || self.containers.iter().any(|c| c.restarts > 0) {
            "Running"
        } else {
            "Pending"
        };
        let conditions: Vec<Value> = self.conditions.iter().map(|(t, (ok, since))| {
            json!({"type": t, "status": if *ok { "True" } else { "False" }, "lastTransitionTime": since, "lastProbeTime": null})
        }).collect();
        let ip = self.ip.to_string();
        json!({"status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time, "conditions": conditions,
            "initContainerStatuses": self.init.iter().map(|c| c.status(true)).collect::<Vec<_>>(),
            "containerStatuses": self.containers.iter().map(|c| c.status(false)).collect::<Vec<_>>()}})
    }

    async fn push_status(&mut self) {
        let status = self.status();
        if status == self.last_status {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        match api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status)).await {
            Ok(_) => self.last_status = status,
            Err(e) => tracing::debug!(pod = %self.name, "status: {e}"),
        }
    }

    fn stop_all(&mut self, grace: Duration) {
        let key = (self.ns.clone(), self.name.clone());
        stop_containers(&mut self.init, grace, &self.shared, &key);
        stop_containers(&mut self.containers, grace, &self.shared, &key);
    }

    /// Graceful deletion: not ready at once (endpoints drop it), SIGTERM, wait, SIGKILL,
    /// final status, then the pod object goes.
    async fn terminate(&mut self, grace: i64) {
        for c in self.containers.iter_mut() {
            c.ready = false;
        }
        self.set_condition("Ready", false);
        self.set_condition("ContainersReady", false);
        self.push_status().await;
        let grace = Duration::from_secs(grace.max(0) as u64);
        let name = self.name.clone();
        // Waiting for processes blocks: do it off the runtime's workers.
        let mut all: Vec<ContainerState> = self.init.drain(..).chain(self.containers.drain(..)).collect();
        let n_init = self.init_count;
        let (shared, key) = (self.shared.clone(), (self.ns.clone(), self.name.clone()));
        let all = tokio::task::spawn_blocking(move || {
            stop_containers(&mut all, grace, &shared, &key);
            all
        }).await.unwrap_or_default();
        let mut all = all.into_iter();
        self.init = all.by_ref().take(n_init).collect();
        self.containers = all.collect();
        self.push_status().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        if let Err(e) = api.delete(&name, &DeleteParams::default().grace_period(0)).await {
            tracing::warn!(pod = %name, "removing the pod: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Volume name → local path.
    async fn prepare_volumes(&self) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut out = BTreeMap::new();
        let volumes = self.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
        for v in volumes {
            let local = self.dir.join("volumes").join(&v.name);
            let path = if let Some(h) = &v.host_path {
                PathBuf::from(&h.path)
            } else if let Some(p) = &v.persistent_volume_claim {
                let root = self.cfg.pvc_root.as_ref().ok_or("PersistentVolumeClaim volumes need the agent's --pvc-root")?;
                root.join(&p.claim_name)
            } else if let Some(cm) = &v.config_map {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
                let data = match api.get_opt(&cm.name).await.map_err(|e| e.to_string())? {
                    Some(c) => c.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
                    None if cm.optional == Some(true) => BTreeMap::new(),
                    None => return Err(format!("configmap \"{}\" not found", cm.name)),
                };
                write_items(&local, data, cm.items.as_deref())?;
                local
            } else if let Some(sec) = &v.secret {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
                let name = sec.secret_name.clone().unwrap_or_default();
                let data = match api.get_opt(&name).await.map_err(|e| e.to_string())? {
                    Some(s) => s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect(),
                    None if sec.optional == Some(true) => BTreeMap::new(),
                    None => return Err(format!("secret \"{name}\" not found")),
                };
                write_items(&local, data, sec.items.as_deref())?;
                local
            } else if v.image.is_some() {
                return Err(format!("volume {:?}: image volumes are not supported by the node agent", v.name));
            } else {
                // emptyDir, and projected/downwardAPI volumes (left empty).
                std::fs::create_dir_all(&local).map_err(|e| format!("{}: {e}", local.display()))?;
                local
            };
            out.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    /// Container path → local path, longest mount first.
    fn container_mounts(&self, c: &Container) -> Vec<(String, PathBuf)> {
        let mounts = self.mounts.clone().unwrap_or_default();
        let mut m: Vec<(String, PathBuf)> = c.volume_mounts.iter().flatten().filter_map(|vm| {
            let base = mounts.get(&vm.name)?;
            let local = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            Some((vm.mount_path.trim_end_matches('/').to_string(), local))
        }).collect();
        m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        m
    }

    fn map_value(&self, mounts: &[(String, PathBuf)], s: &str) -> String {
        if let Some((flag, value)) = s.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            return format!("{flag}={}", self.map_value(mounts, value));
        }
        if s == "0.0.0.0" || s == "::" {
            return self.ip.to_string();
        }
        for (mp, local) in mounts {
            if s == mp {
                return local.display().to_string();
            }
            if let Some(rest) = s.strip_prefix(&format!("{mp}/")) {
                return local.join(rest).display().to_string();
            }
        }
        s.to_string()
    }

    fn env(&self, c: &Container, mounts: &[(String, PathBuf)]) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            ("HOME".to_string(), self.dir.display().to_string()),
            ("HOSTNAME".to_string(), self.name.clone()),
        ];
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                self.map_value(mounts, v)
            } else if let Some(from) = &e.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => self.name.clone(),
                        "metadata.namespace" => self.ns.clone(),
                        "metadata.uid" => self.pod.metadata.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => self.cfg.node_name.clone(),
                        "status.podIP" => self.ip.to_string(),
                        "status.hostIP" => "127.0.0.1".into(),
                        other => return Err(format!("env {}: fieldRef {other} is not supported", e.name)),
                    }
                } else {
                    // secretKeyRef / configMapKeyRef are resolved when the container starts
                    // (the kubelet does the same); not supported here yet.
                    return Err(format!("env {}: only value and fieldRef are supported by the node agent", e.name));
                }
            } else {
                String::new()
            };
            env.push((e.name.clone(), value));
        }
        Ok(env)
    }

    fn spawn(&self, c: &Container) -> Result<Child, String> {
        let image = c.image.clone().unwrap_or_default();
        let binary = self.cfg.images.iter().find(|(pat, _)| image.contains(pat.as_str())).map(|(_, b)| b.clone())
            .ok_or_else(|| format!("no local binary for image {image:?} (agent --image PATTERN=BINARY)"))?;
        let mounts = self.container_mounts(c);
        let mut args: Vec<String> = match &c.command {
            Some(cmd) if !cmd.is_empty() => cmd[1..].to_vec(),
            _ => vec![],
        };
        args.extend(c.args.iter().flatten().cloned());
        let args: Vec<String> = args.iter().map(|a| self.map_value(&mounts, a)).collect();
        let env = self.env(c, &mounts)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let log_path = self.cfg.log_path(&self.ns, &self.name, &c.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        use std::io::Write;
        let _ = writeln!(&log, "--- {} {} {}", now(), binary.display(), args.join(" "));
        let mut cmd = Command::new(&binary);
        cmd.args(&args).env_clear().envs(env).current_dir(&self.dir)
            .stdin(Stdio::null()).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        if let Some(wd) = c.working_dir.as_deref() {
            cmd.current_dir(self.map_value(&mounts, wd));
        }
        // Own process group (so signals reach its children), and die with the agent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| format!("starting {}: {e}", binary.display()))
    }
}

/// SIGTERM (SIGKILL when `grace` is zero), wait up to `grace`, then SIGKILL.
fn stop_containers(containers: &mut [ContainerState], grace: Duration, shared: &Mutex<Shared>, pod: &(String, String)) {
    let deadline = Instant::now() + grace;
    for c in containers.iter().filter_map(|c| c.child.as_ref()) {
        signal(c.id(), if grace.is_zero() { libc::SIGKILL } else { libc::SIGTERM });
    }
    for c in containers.iter_mut() {
        if let Some(mut child) = c.child.take() {
            let code = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break s.code().unwrap_or(137),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        signal(child.id(), libc::SIGKILL);
                        break child.wait().ok().and_then(|s| s.code()).unwrap_or(137);
                    }
                }
            };
            c.exited = Some(code);
            c.last_exit = Some(terminated(code, &c.started_at));
            c.waiting = None;
            c.ready = false;
        }
        shared.lock().expect("agent").processes.remove(&(pod.0.clone(), pod.1.clone(), c.spec.name.clone()));
    }
}

fn write_items(dir: &Path, data: BTreeMap<String, Vec<u8>>, items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files: Vec<(String, String)> = match items {
        Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in files {
        let bytes = data.get(&key).ok_or_else(|| format!("key {key:?} not found"))?;
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&target, bytes).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    // The container is its own process group (setsid): signal the whole group.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

async fn http_probe(p: &Probe, c: &Container, ip: Ipv4Addr) -> bool {
    let Some(get) = &p.http_get else { return true };
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
            match c.ports.iter().flatten().find(|cp| cp.name.as_deref() == Some(name.as_str())) {
                Some(cp) => cp.container_port,
                None => return false,
            }
        }
    };
    let host = get.host.clone().unwrap_or_else(|| ip.to_string());
    let url = format!("http://{host}:{port}{}", get.path.as_deref().unwrap_or("/"));
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let Ok(client) = reqwest::Client::builder().timeout(timeout).build() else { return false };
    matches!(client.get(url).send().await, Ok(r) if (200..400).contains(&r.status().as_u16()))
}
