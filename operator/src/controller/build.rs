//! Pure functions from an `LLMDeployment` to the objects that serve it: a Deployment running
//! kandle-server, its Service, a ConfigMap for an inline chat template and a
//! PodDisruptionBudget when more than one replica runs. No API calls here: the reconciler
//! server-side-applies what these return.

use crate::crd::{LLMDeployment, LLMDeploymentSpec, Task};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, ImageVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Operator-wide settings the builders need.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// kandle-server image used when a resource does not name one.
    pub server_image: String,
}

/// A spec the operator cannot build (reported as `Ready=False, reason=InvalidSpec`).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the resource has no name or namespace")]
    Unnamed,
    #[error("exactly one model source must be set (huggingFace, pvc, hostPath, image or url), found {0}")]
    ModelSource(usize),
    #[error("chatTemplate needs exactly one of inline and configMapKeyRef")]
    ChatTemplate,
    #[error("autoscaling: minReplicas ({0}) exceeds maxReplicas ({1})")]
    ReplicaBounds(i32, i32),
    #[error("url {0:?} is not http(s)")]
    Url(String),
    #[error("autoscaling mode KEDA needs prometheusAddress")]
    KedaPrometheus,
}

/// Everything one LLMDeployment owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub deployment: Deployment,
    pub service: Service,
    pub chat_template: Option<ConfigMap>,
    pub pdb: Option<PodDisruptionBudget>,
}

pub const MANAGER: &str = "kandle-operator";
/// The label that ties every child (and pod) to its LLMDeployment.
pub const INSTANCE_LABEL: &str = "kandle.dev/llmdeployment";
const MODEL_DIR: &str = "/models";
const CACHE_DIR: &str = "/model-cache";
const TEMPLATE_DIR: &str = "/etc/kandle/chat-template";
const TEMPLATE_KEY: &str = "chat_template.jinja";

pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(INSTANCE_LABEL.to_string(), name.to_string())])
}

pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/name".into(), "kandle-server".into());
    l.insert("app.kubernetes.io/instance".into(), name.into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// Metadata of an object `llm` owns: same namespace and labels, a controller reference.
pub fn child_meta(llm: &LLMDeployment, object_name: String) -> Result<ObjectMeta, SpecError> {
    let name = llm.meta().name.clone().ok_or(SpecError::Unnamed)?;
    Ok(ObjectMeta {
        name: Some(object_name),
        namespace: Some(llm.meta().namespace.clone().ok_or(SpecError::Unnamed)?),
        labels: Some(labels(&name)),
        owner_references: Some(vec![llm.controller_owner_ref(&()).ok_or(SpecError::Unnamed)?]),
        ..Default::default()
    })
}

/// The label selector string of the pods (status.selector, for the scale subresource).
pub fn selector_string(name: &str) -> String {
    format!("{INSTANCE_LABEL}={name}")
}

pub fn service_name(llm: &LLMDeployment) -> String {
    llm.name_any()
}

pub fn endpoint(llm: &LLMDeployment) -> String {
    format!("http://{}.{}.svc:{}/v1", service_name(llm), llm.namespace().unwrap_or_default(), llm.spec.port())
}

/// Checks what the schema's CEL rules also check, for resources that bypassed them (older
/// API servers, direct edits of stored objects).
pub fn validate(spec: &LLMDeploymentSpec) -> Result<(), SpecError> {
    let m = &spec.model;
    let sources = [m.hugging_face.is_some(), m.pvc.is_some(), m.host_path.is_some(), m.image.is_some(), m.url.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        return Err(SpecError::ModelSource(sources));
    }
    if let Some(url) = &m.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SpecError::Url(url.clone()));
        }
    }
    if let Some(t) = &m.chat_template {
        if t.inline.is_some() == t.config_map_key_ref.is_some() {
            return Err(SpecError::ChatTemplate);
        }
    }
    if let Some(a) = &spec.autoscaling {
        if let (Some(min), Some(max)) = (a.min_replicas, a.max_replicas) {
            if min > max {
                return Err(SpecError::ReplicaBounds(min, max));
            }
        }
        if a.mode == Some(crate::crd::AutoscalingMode::Keda) && a.prometheus_address.as_deref().is_none_or(str::is_empty) {
            return Err(SpecError::KedaPrometheus);
        }
    }
    Ok(())
}

/// The source in one line, for `kubectl get` (status.model).
pub fn model_summary(spec: &LLMDeploymentSpec) -> String {
    let m = &spec.model;
    if let Some(hf) = &m.hugging_face {
        return format!("hf://{}{}", hf.repo, hf.revision.as_ref().map(|r| format!("@{r}")).unwrap_or_default());
    }
    if let Some(p) = &m.pvc {
        return format!("pvc://{}/{}", p.claim_name, p.path.as_deref().unwrap_or("").trim_start_matches('/'));
    }
    if let Some(h) = &m.host_path {
        return format!("file://{}", h.path);
    }
    if let Some(i) = &m.image {
        return format!("oci://{}", i.reference);
    }
    m.url.clone().unwrap_or_default()
}

/// `desired_replicas` is what the autoscaler decided (None: use spec.replicas).
pub fn build(llm: &LLMDeployment, cfg: &BuildConfig, desired_replicas: Option<i32>) -> Result<Children, SpecError> {
    validate(&llm.spec)?;
    let name = llm.meta().name.clone().ok_or(SpecError::Unnamed)?;
    let base = child_meta(llm, name.clone())?;
    let meta = |object_name: String| ObjectMeta { name: Some(object_name), ..base.clone() };
    let spec = &llm.spec;
    let replicas = desired_replicas.or(spec.replicas).unwrap_or(1);
    let chat_template = spec.model.chat_template.as_ref().and_then(|t| t.inline.as_ref()).map(|text| ConfigMap {
        metadata: meta(format!("{name}-chat-template")),
        data: Some(BTreeMap::from([(TEMPLATE_KEY.to_string(), text.clone())])),
        ..Default::default()
    });
    let port = spec.port();
    let service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pdb = (replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(&name)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(&name)), ..Default::default() },
            // Model servers are big: bring one new pod up before taking an old one down.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(llm, &name, cfg),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Children { deployment, service, chat_template, pdb })
}

fn pod_template(llm: &LLMDeployment, name: &str, cfg: &BuildConfig) -> PodTemplateSpec {
    let spec = &llm.spec;
    let port = spec.port();
    let gpus = spec.server.resources.gpus.unwrap_or(0);
    let mut volumes = vec![
        Volume { name: "dshm".into(), empty_dir: Some(EmptyDirVolumeSource { medium: Some("Memory".into()), ..Default::default() }),
            ..Default::default() },
        Volume { name: "cuda-cache".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    let mut mounts = vec![
        VolumeMount { name: "dshm".into(), mount_path: "/dev/shm".into(), ..Default::default() },
        VolumeMount { name: "cuda-cache".into(), mount_path: "/var/cache/cuda".into(), ..Default::default() },
    ];
    let mut init_containers = vec![];
    let image = spec.server.image.clone().unwrap_or_else(|| cfg.server_image.clone());
    let model_path = model_volume(llm, &image, &mut volumes, &mut mounts, &mut init_containers);

    let mut args = vec!["serve".to_string(), "--model".into(), model_path, "--host".into(), "0.0.0.0".into(),
        "--port".into(), port.to_string()];
    let served = spec.model.served_model_names.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| vec![name.to_string()]);
    for n in served {
        args.extend(["--served-model-name".into(), n]);
    }
    if gpus > 0 {
        args.extend(["--device".into(), "cuda".into()]);
    }
    let flag = |args: &mut Vec<String>, f: &str, v: Option<String>| {
        if let Some(v) = v {
            args.extend([f.to_string(), v]);
        }
    };
    flag(&mut args, "--dtype", spec.model.dtype.map(|d| serde_json::to_value(d).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()));
    flag(&mut args, "--max-model-len", spec.model.max_model_len.map(|v| v.to_string()));
    flag(&mut args, "--task", spec.model.task.map(|t| match t { Task::Generate => "generate".into(), Task::Embed => "embed".into() }));
    flag(&mut args, "--max-num-seqs", spec.server.max_num_seqs.map(|v| v.to_string()));
    flag(&mut args, "--gpu-memory-utilization", spec.server.gpu_memory_utilization.map(|v| v.to_string()));
    flag(&mut args, "--block-size", spec.server.block_size.map(|v| v.to_string()));
    if let Some(t) = &spec.model.chat_template {
        let (cm, key) = match (&t.inline, &t.config_map_key_ref) {
            (Some(_), _) => (format!("{name}-chat-template"), TEMPLATE_KEY.to_string()),
            (None, Some(r)) => (r.name.clone(), r.key.clone()),
            (None, None) => unreachable!("validated"),
        };
        volumes.push(Volume {
            name: "chat-template".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm,
                items: Some(vec![KeyToPath { key: key.clone(), path: key.clone(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount { name: "chat-template".into(), mount_path: TEMPLATE_DIR.into(), read_only: Some(true),
            ..Default::default() });
        args.extend(["--chat-template".into(), format!("{TEMPLATE_DIR}/{key}")]);
    }
    args.extend(spec.server.args.iter().cloned());

    let mut env = vec![EnvVar { name: "CUDA_CACHE_PATH".into(), value: Some("/var/cache/cuda".into()), ..Default::default() }];
    if let Some(secret) = &spec.server.api_key_secret_ref {
        env.push(EnvVar { name: "API_KEY".into(), value_from: Some(EnvVarSource { secret_key_ref: Some(secret.clone()),
            ..Default::default() }), ..Default::default() });
    }
    env.extend(spec.server.env.iter().cloned());

    let gpu_resource = spec.server.resources.gpu_resource_name.clone().unwrap_or_else(|| "nvidia.com/gpu".into());
    let mut limits = BTreeMap::new();
    let mut requests = BTreeMap::new();
    if gpus > 0 {
        limits.insert(gpu_resource.clone(), Quantity(gpus.to_string()));
    }
    if let Some(cpu) = &spec.server.resources.cpu {
        requests.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(mem) = &spec.server.resources.memory {
        requests.insert("memory".to_string(), mem.clone());
        limits.insert("memory".to_string(), mem.clone());
    }
    let http_get = |path: &str| Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String("http".into()),
        ..Default::default() });
    let container = Container {
        name: "kandle-server".into(),
        image: Some(image),
        image_pull_policy: spec.server.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: port, protocol: Some("TCP".into()),
            ..Default::default() }]),
        resources: Some(ResourceRequirements {
            limits: (!limits.is_empty()).then_some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        readiness_probe: Some(Probe { http_get: http_get("/readiness"), period_seconds: Some(5), failure_threshold: Some(3),
            ..Default::default() }),
        liveness_probe: Some(Probe { http_get: http_get("/liveness"), period_seconds: Some(10), failure_threshold: Some(6),
            ..Default::default() }),
        // Loading (and on a fresh GPU node the driver's kernel compilation) can take many
        // minutes for a large model: up to 30 before liveness takes over.
        // Checked every 2 s so a small model is ready within seconds of loading.
        startup_probe: Some(Probe { http_get: http_get("/readiness"), period_seconds: Some(2), failure_threshold: Some(900),
            ..Default::default() }),
        volume_mounts: Some(mounts),
        security_context: Some(container_security()),
        ..Default::default()
    };

    let overrides = spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = labels(name);
    pod_labels.extend(overrides.labels);
    let mut annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]);
    // The template's text is in a ConfigMap the pods only read at start: a hash of it in the
    // pod template makes an edit roll the pods, like any other spec change.
    if let Some(text) = spec.model.chat_template.as_ref().and_then(|t| t.inline.as_ref()) {
        annotations.insert("kandle.dev/chat-template-hash".to_string(), format!("{:016x}", fnv1a(text.as_bytes())));
    }
    annotations.extend(overrides.annotations);
    let scheduling = spec.scheduling.clone().unwrap_or_default();
    let mut tolerations = scheduling.tolerations;
    if gpus > 0 && !tolerations.iter().any(|t| t.key.as_deref() == Some(gpu_resource.as_str())) {
        tolerations.push(Toleration { key: Some(gpu_resource), operator: Some("Exists".into()), effect: Some("NoSchedule".into()),
            ..Default::default() });
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(pod_labels), annotations: Some(annotations), ..Default::default() }),
        spec: Some(PodSpec {
            containers: vec![container],
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            volumes: Some(volumes),
            node_selector: (!scheduling.node_selector.is_empty()).then_some(scheduling.node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            affinity: scheduling.affinity,
            priority_class_name: scheduling.priority_class_name,
            runtime_class_name: scheduling.runtime_class_name,
            service_account_name: overrides.service_account_name,
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                fs_group: Some(1000),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            }),
            // In-flight requests get the server's own drain time (--shutdown-timeout, 30 s).
            termination_grace_period_seconds: Some(45),
            ..Default::default()
        }),
    }
}

/// FNV-1a, 64 bit: a hash that stays the same across builds and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// Adds the model's volume (or the init container that downloads it) and returns the path
/// the server loads the model from.
fn model_volume(llm: &LLMDeployment, image: &str, volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>,
    init: &mut Vec<Container>) -> String {
    let m = &llm.spec.model;
    let under = |root: &str, path: Option<&str>| match path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        Some(p) => format!("{root}/{p}"),
        None => root.to_string(),
    };
    let mut mount_model = |volume: Volume| {
        mounts.push(VolumeMount { name: "model".into(), mount_path: MODEL_DIR.into(), read_only: Some(true), ..Default::default() });
        volumes.push(volume);
    };
    if let Some(p) = &m.pvc {
        mount_model(Volume { name: "model".into(), persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: p.claim_name.clone(), read_only: Some(true) }), ..Default::default() });
        return under(MODEL_DIR, p.path.as_deref());
    }
    if let Some(h) = &m.host_path {
        mount_model(Volume { name: "model".into(), host_path: Some(HostPathVolumeSource { path: h.path.clone(),
            type_: Some(String::new()) }), ..Default::default() });
        return MODEL_DIR.to_string();
    }
    if let Some(i) = &m.image {
        mount_model(Volume { name: "model".into(), image: Some(ImageVolumeSource { reference: Some(i.reference.clone()),
            pull_policy: i.pull_policy.clone() }), ..Default::default() });
        return under(MODEL_DIR, i.path.as_deref());
    }
    // Hugging Face and URL sources: an init container downloads into a cache volume.
    volumes.push(Volume { name: "model-cache".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() });
    let cache_mount = VolumeMount { name: "model-cache".into(), mount_path: CACHE_DIR.into(), ..Default::default() };
    mounts.push(VolumeMount { read_only: Some(true), ..cache_mount.clone() });
    // The hub's mirror and proxy settings the user gives the server apply to the download.
    let mut env: Vec<EnvVar> = llm.spec.server.env.iter()
        .filter(|e| e.name.starts_with("HF_") || e.name.to_ascii_uppercase().ends_with("_PROXY"))
        .cloned().collect();
    let (args, path) = if let Some(hf) = &m.hugging_face {
        let dest = format!("{CACHE_DIR}/{}", hf.repo.replace('/', "--"));
        let mut args = vec!["download".to_string(), "--repo".into(), hf.repo.clone(), "--dest".into(), dest.clone()];
        if let Some(r) = &hf.revision {
            args.extend(["--revision".into(), r.clone()]);
        }
        if let Some(s) = &hf.token_secret_ref {
            env.retain(|e| e.name != "HF_TOKEN");
            env.push(EnvVar { name: "HF_TOKEN".into(),
                value_from: Some(EnvVarSource { secret_key_ref: Some(s.clone()), ..Default::default() }), ..Default::default() });
        }
        (args, dest)
    } else {
        let url = m.url.clone().unwrap_or_default();
        let file = url_file_name(&url);
        let args = vec!["download".to_string(), "--url".into(), url, "--dest".into(), CACHE_DIR.into(), "--filename".into(), file.clone()];
        (args, format!("{CACHE_DIR}/{file}"))
    };
    let env = (!env.is_empty()).then_some(env);
    init.push(Container {
        name: "download-model".into(),
        image: Some(image.to_string()),
        args: Some(args),
        env,
        volume_mounts: Some(vec![cache_mount]),
        security_context: Some(container_security()),
        ..Default::default()
    });
    path
}

/// The file a URL source is saved as: its last path segment, without query or fragment.
fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    path.rsplit('/').next().filter(|f| !f.is_empty() && !f.starts_with('.')).unwrap_or("model.gguf").to_string()
}
