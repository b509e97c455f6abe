//! The kinds the stand-in serves: the built-in ones the operator, the node agent and the
//! suite use, plus whatever CustomResourceDefinitions are created (with their schema and
//! subresources), and the discovery documents describing them.

use serde_json::{json, Value};

/// Where a CRD's scale subresource reads and writes (JSON paths like `.spec.replicas`).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// The CRD's `openAPIV3Schema` (built-in kinds are not schema-checked).
    pub schema: Option<Value>,
    pub short_names: Vec<String>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool, scale: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
            scale: scale.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            }),
            schema: None,
            short_names: vec![],
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `group/plural`, the key objects are stored under (core kinds: `/plural`).
    pub fn key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// A CRD's served storage version as a resource type.
    pub fn from_crd(crd: &Value) -> Option<Self> {
        let spec = &crd["spec"];
        let version = spec["versions"].as_array()?.iter().find(|v| v["storage"] == true || v["served"] == true)?;
        let scale = &version["subresources"]["scale"];
        Some(ResourceType {
            group: spec["group"].as_str()?.into(),
            version: version["name"].as_str()?.into(),
            plural: spec["names"]["plural"].as_str()?.into(),
            kind: spec["names"]["kind"].as_str()?.into(),
            namespaced: spec["scope"] == "Namespaced",
            status: version["subresources"].get("status").is_some(),
            scale: scale.is_object().then(|| ScalePaths {
                spec_replicas: scale["specReplicasPath"].as_str().unwrap_or(".spec.replicas").into(),
                status_replicas: scale["statusReplicasPath"].as_str().unwrap_or(".status.replicas").into(),
                label_selector: scale["labelSelectorPath"].as_str().map(String::from),
            }),
            schema: Some(version["schema"]["openAPIV3Schema"].clone()),
            short_names: spec["names"]["shortNames"].as_array().into_iter().flatten()
                .filter_map(|s| s.as_str().map(String::from)).collect(),
        })
    }
}

pub fn builtin_types() -> Vec<ResourceType> {
    let b = ResourceType::builtin;
    let mut types = vec![
        b("", "v1", "namespaces", "Namespace", false, true, false),
        b("", "v1", "nodes", "Node", false, true, false),
        b("", "v1", "pods", "Pod", true, true, false),
        b("", "v1", "services", "Service", true, true, false),
        b("", "v1", "configmaps", "ConfigMap", true, false, false),
        b("", "v1", "secrets", "Secret", true, false, false),
        b("", "v1", "events", "Event", true, false, false),
        b("", "v1", "serviceaccounts", "ServiceAccount", true, false, false),
        b("apps", "v1", "deployments", "Deployment", true, true, true),
        b("apps", "v1", "replicasets", "ReplicaSet", true, true, true),
        b("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true, false),
        b("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, true, false),
        b("coordination.k8s.io", "v1", "leases", "Lease", true, false, false),
        b("events.k8s.io", "v1", "events", "Event", true, false, false),
        b("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, true, false),
    ];
    // kubectl's short names.
    for (plural, short) in [("namespaces", "ns"), ("nodes", "no"), ("pods", "po"), ("services", "svc"), ("configmaps", "cm"),
        ("events", "ev"), ("serviceaccounts", "sa"), ("deployments", "deploy"), ("replicasets", "rs"),
        ("poddisruptionbudgets", "pdb"), ("horizontalpodautoscalers", "hpa"), ("customresourcedefinitions", "crd")] {
        if let Some(t) = types.iter_mut().find(|t| t.plural == plural && t.group != "events.k8s.io") {
            t.short_names.push(short.into());
        }
    }
    types
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut resources = vec![];
    for t in types.iter().filter(|t| t.group == group && t.version == version) {
        let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        resources.push(json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs, "shortNames": t.short_names}));
        if t.status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.scale.is_some() {
            resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    (!resources.is_empty()).then(|| {
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    })
}

/// `/apis`: every group and its versions.
pub fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = vec![];
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
            Some(_) => {}
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups.into_iter().map(|(name, versions)| {
        let vs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
        json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
    }).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}
