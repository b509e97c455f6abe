//! The `LLMDeployment` custom resource (`kandle.dev/v1alpha1`): one model served by
//! kandle-server pods behind a Service. The CRD in `crds/` is generated from these types
//! (`cargo run -p kandle-operator --bin crdgen`); the CEL rules below make `kubectl apply`
//! reject bad specs before the operator sees them.

use k8s_openapi::api::core::v1::{Affinity, ConfigMapKeySelector, EnvVar, SecretKeySelector, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "kandle.dev";

#[serde_with::skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kandle.dev",
    version = "v1alpha1",
    kind = "LLMDeployment",
    plural = "llmdeployments",
    shortname = "llm",
    namespaced,
    cel,
    status = "LLMDeploymentStatus",
    derive = "PartialEq",
    doc = "A model served by kandle-server pods behind an OpenAI-compatible Service.",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Model", type_ = "string", json_path = ".status.model"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct LLMDeploymentSpec {
    pub model: ModelSpec,
    #[serde(default)]
    pub server: ServerSpec,
    /// Pods to run while autoscaling is off (default 1); `kubectl scale` writes it.
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    pub autoscaling: Option<AutoscalingSpec>,
    pub scheduling: Option<SchedulingSpec>,
    pub pod_template: Option<PodTemplateOverrides>,
}

/// The model: exactly one source, plus how it is served.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = Rule::new(
    "[has(self.huggingFace), has(self.pvc), has(self.hostPath), has(self.image), has(self.url)].exists_one(x, x)")
    .message("exactly one model source must be set: huggingFace, pvc, hostPath, image or url"))]
pub struct ModelSpec {
    pub hugging_face: Option<HuggingFaceSource>,
    pub pvc: Option<PvcSource>,
    pub host_path: Option<HostPathSource>,
    pub image: Option<ImageSource>,
    /// An http(s) URL of a single `.gguf` file.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("url must be http(s)"))]
    pub url: Option<String>,
    /// Names clients use in `model` (default: the resource's name).
    pub served_model_names: Option<Vec<String>>,
    pub chat_template: Option<ChatTemplate>,
    pub dtype: Option<Dtype>,
    #[schemars(range(min = 1))]
    pub max_model_len: Option<i64>,
    pub task: Option<Task>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HuggingFaceSource {
    /// `org/name` on the hub.
    #[schemars(length(min = 1))]
    pub repo: String,
    /// Branch, tag or commit (default `main`).
    pub revision: Option<String>,
    /// A Secret key holding an access token for gated or private repos (`HF_TOKEN`).
    pub token_secret_ref: Option<SecretKeySelector>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// The model folder or `.gguf` file inside the volume (default: its root).
    pub path: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostPathSource {
    /// The model folder or `.gguf` file on the node.
    #[schemars(length(min = 1))]
    pub path: String,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// An OCI image (or artifact) holding the model, mounted as an image volume.
    #[schemars(length(min = 1))]
    pub reference: String,
    /// The model folder or file inside the image (default: its root).
    pub path: Option<String>,
    pub pull_policy: Option<String>,
}

/// A chat template: inline text, or a key of a ConfigMap.
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inline) != has(self.configMapKeyRef)")
    .message("chatTemplate needs exactly one of inline and configMapKeyRef"))]
pub struct ChatTemplate {
    pub inline: Option<String>,
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Auto,
    F32,
    F16,
    Bf16,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Generate,
    Embed,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// kandle-server image (default: the operator's `--server-image`).
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    /// Extra kandle-server flags, appended after the ones the operator sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// HTTP port of the server and its Service (default 8000).
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// A Secret key holding the API key clients must send (`--api-key`).
    pub api_key_secret_ref: Option<SecretKeySelector>,
    #[schemars(range(min = 1))]
    pub max_num_seqs: Option<i32>,
    #[schemars(range(min = 0.01, max = 1.0))]
    pub gpu_memory_utilization: Option<f64>,
    #[schemars(range(min = 1))]
    pub block_size: Option<i32>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs per pod; > 0 runs the server with `--device cuda`.
    #[schemars(range(min = 0))]
    pub gpus: Option<i32>,
    /// The extended resource to request GPUs as (default `nvidia.com/gpu`).
    pub gpu_resource_name: Option<String>,
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

/// Autoscaling from the pods' live metrics (waiting + running requests, KV-cache usage).
#[serde_with::skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'KEDA' || has(self.prometheusAddress)")
    .message("KEDA mode needs prometheusAddress"))]
pub struct AutoscalingSpec {
    #[serde(default)]
    pub enabled: bool,
    /// Builtin (default): the operator scrapes the pods itself. HPA: an autoscaling/v2 HPA on
    /// the Pods metric `vllm:num_requests_waiting` (needs a custom-metrics adapter). KEDA: a
    /// ScaledObject with a Prometheus trigger (needs KEDA and `prometheusAddress`).
    pub mode: Option<AutoscalingMode>,
    /// Prometheus the KEDA trigger queries, e.g. `http://prometheus.monitoring.svc:9090`.
    pub prometheus_address: Option<String>,
    #[schemars(range(min = 0))]
    pub min_replicas: Option<i32>,
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// Waiting + running requests one replica should carry.
    #[schemars(range(min = 0.1))]
    pub target_requests_per_replica: Option<f64>,
    /// KV-cache usage (0–1) one replica should run at.
    #[schemars(range(min = 0.01, max = 1.0))]
    pub target_kv_cache_usage: Option<f64>,
    /// How often the pods are scraped (default 5).
    #[schemars(range(min = 1))]
    pub poll_seconds: Option<i32>,
    /// How long load must stay above target before scaling up (default 0).
    #[schemars(range(min = 0))]
    pub scale_up_stabilization_seconds: Option<i32>,
    /// How long load must stay below target before each step down (default 300).
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i32>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AutoscalingMode {
    #[default]
    Builtin,
    #[serde(rename = "HPA")]
    Hpa,
    #[serde(rename = "KEDA")]
    Keda,
}

impl AutoscalingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "Builtin",
            Self::Hpa => "HPA",
            Self::Keda => "KEDA",
        }
    }
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    pub priority_class_name: Option<String>,
    pub runtime_class_name: Option<String>,
}

/// Additions to the pods the operator builds.
#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub service_account_name: Option<String>,
}

#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LLMDeploymentStatus {
    /// Ready, Progressing, Degraded, ModelSourceResolved, ChatTemplateResolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    pub observed_generation: Option<i64>,
    pub replicas: Option<i32>,
    pub ready_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    /// Label selector of the pods (for the scale subresource and HPAs).
    pub selector: Option<String>,
    /// `http://<service>.<namespace>.svc:<port>/v1`.
    pub endpoint: Option<String>,
    /// The model source in one line (printer column).
    pub model: Option<String>,
    pub last_scale_time: Option<Time>,
    /// What the builtin autoscaler saw at its last poll.
    pub metrics: Option<AutoscalingMetrics>,
}

/// The builtin autoscaler's last poll, per replica.
#[serde_with::skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingMetrics {
    pub scraped_pods: i32,
    /// Ready pods whose metrics could not be read (their load is unknown, not zero).
    pub unscraped_pods: i32,
    pub starting_pods: i32,
    pub waiting_per_replica: f64,
    pub running_per_replica: f64,
    /// Mean KV-cache usage (0–1) of the scraped pods.
    pub kv_cache_usage: f64,
    /// The last decision's reason (RequestLoad, KvCacheUsage, Stable, ScaleDownDelayed, …).
    pub reason: String,
}

impl LLMDeploymentSpec {
    pub fn port(&self) -> i32 {
        self.server.port.unwrap_or(8000)
    }
}

/// The CRD as committed in `crds/` (a test fails when the file is stale).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&LLMDeployment::crd())?;
    Ok(format!("# Generated by `cargo run -p kandle-operator --bin crdgen -- crds/llmdeployment.yaml charts/kandle-operator/crds/llmdeployment.yaml`; do not edit.\n{body}"))
}
