//! The stand-in's storage: objects by (kind, namespace, name), one resourceVersion counter
//! for everything (like etcd's revision), and the full event history watches replay from.
//! Every write goes through [`Store::write`], which does what the API server does around a
//! write: metadata (uid, creationTimestamp, generation, resourceVersion), status-subresource
//! separation, schema admission of custom resources, no-op detection, and the watch event.

use super::patch::{self, Ownership};
use super::resources::{builtin_types, ResourceType};
use super::schema;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// `group/plural`.
    pub kind: String,
    pub ns: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub kind: String,
    pub ns: String,
    pub type_: &'static str,
    pub object: Value,
    /// The object before a MODIFIED event (so a selector watch can turn it into ADDED/DELETED).
    pub prev: Option<Value>,
}

/// An API error, returned to clients as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub causes: Vec<schema::FieldError>,
    pub kind: Option<(String, String, String)>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), causes: vec![], kind: None }
    }

    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        let gr = if t.group.is_empty() { t.plural.clone() } else { format!("{}.{}", t.plural, t.group) };
        ApiError { kind: Some((t.group.clone(), t.plural.clone(), name.into())), ..Self::new(404, "NotFound", format!("{gr} \"{name}\" not found")) }
    }

    pub fn to_status(&self) -> Value {
        let causes: Vec<Value> = self.causes.iter().map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field})).collect();
        let mut details = json!({"causes": causes});
        if let Some((group, kind, name)) = &self.kind {
            details["group"] = json!(group);
            details["kind"] = json!(kind);
            details["name"] = json!(name);
        }
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
            "reason": self.reason, "details": details, "code": self.code})
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    /// The object without its status (for kinds with a status subresource).
    Main,
    Status,
}

pub struct Store {
    pub types: Vec<ResourceType>,
    pub objects: BTreeMap<Key, Value>,
    owners: HashMap<Key, Ownership>,
    pub events: Vec<Event>,
    pub rv: u64,
    serial: u64,
}

pub(crate) use crate::now;

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let mut s = Store { types: builtin_types(), objects: BTreeMap::new(), owners: HashMap::new(), events: vec![], rv: 0, serial: 0 };
        let ns = s.type_of("", "namespaces").expect("builtin");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            s.create(&ns, "", json!({"metadata": {"name": name}}), "kube-apiserver").expect("namespace");
        }
        s
    }

    pub fn type_of(&self, group: &str, plural: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural).cloned()
    }

    pub fn type_by_key(&self, key: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.key() == key).cloned()
    }

    fn key(t: &ResourceType, ns: &str, name: &str) -> Key {
        Key { kind: t.key(), ns: if t.namespaced { ns.into() } else { String::new() }, name: name.into() }
    }

    pub fn get(&self, t: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects.get(&Self::key(t, ns, name)).cloned().ok_or_else(|| ApiError::not_found(t, name))
    }

    /// Objects of a kind (in one namespace, or all when `ns` is empty).
    pub fn list(&self, t: &ResourceType, ns: &str) -> Vec<Value> {
        let kind = t.key();
        self.objects.iter().filter(|(k, _)| k.kind == kind && (ns.is_empty() || k.ns == ns)).map(|(_, v)| v.clone()).collect()
    }

    fn uid(&mut self) -> String {
        self.serial += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.serial)
    }

    /// `generateName` suffix: five characters like the API server's.
    fn suffix(&mut self) -> String {
        self.serial += 1;
        crate::name_suffix(self.serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1e995, 5)
    }

    pub fn create(&mut self, t: &ResourceType, ns: &str, mut body: Value, manager: &str) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::new(400, "BadRequest", "the body is not an object"));
        }
        let meta = &mut body["metadata"];
        if meta["name"].as_str().is_none_or(str::is_empty) {
            let Some(prefix) = meta["generateName"].as_str().map(String::from) else {
                return Err(ApiError::new(422, "Invalid", format!("{} \"\" is invalid: metadata.name: Required value: name or generateName is required", t.kind)));
            };
            let name = format!("{prefix}{}", self.suffix());
            body["metadata"]["name"] = json!(name);
        }
        let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
        valid_name(t, &name)?;
        if t.namespaced {
            let body_ns = body["metadata"]["namespace"].as_str().unwrap_or(ns).to_string();
            if body_ns != ns {
                return Err(ApiError::new(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"));
            }
            let nst = self.type_of("", "namespaces").expect("builtin");
            match self.objects.get(&Self::key(&nst, "", ns)) {
                None => return Err(ApiError::not_found(&nst, ns)),
                Some(n) if !n["metadata"]["deletionTimestamp"].is_null() => {
                    return Err(ApiError::new(403, "Forbidden", format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", t.plural)));
                }
                _ => {}
            }
            body["metadata"]["namespace"] = json!(ns);
        }
        let key = Self::key(t, ns, &name);
        if self.objects.contains_key(&key) {
            let mut e = ApiError::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", t.plural));
            e.kind = Some((t.group.clone(), t.plural.clone(), name));
            return Err(e);
        }
        let uid = self.uid();
        let meta = &mut body["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
        }
        if t.status && t.plural != "namespaces" {
            body.as_object_mut().map(|m| m.remove("status"));
        }
        match t.plural.as_str() {
            "pods" => body["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
            "namespaces" => body["status"] = json!({"phase": "Active"}),
            _ => {}
        }
        body["apiVersion"] = json!(t.api_version());
        body["kind"] = json!(t.kind);
        let created = self.write(t, &key, None, body, Part::Main, manager, None)?;
        // Kubernetes' garbage collector also deletes an object created with owners that are
        // all gone already (e.g. a child a controller applied just after its parent was
        // deleted); the create itself succeeds.
        if orphaned(&created, &self.live_uids()) {
            let _ = self.delete(t, ns, &name, None, false);
        }
        Ok(created)
    }

    /// Stores `new` (a whole object) in place of `old`. `owners` is the new field ownership
    /// when the write was an apply; otherwise the manager is recorded as updating.
    #[allow(clippy::too_many_arguments)]
    pub fn write(&mut self, t: &ResourceType, key: &Key, old: Option<&Value>, mut new: Value, part: Part, manager: &str,
        owners: Option<Ownership>) -> Result<Value, ApiError> {
        if let Some(old) = old {
            // Identity and server-set metadata cannot change.
            for f in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                match old["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(f));
                    }
                }
            }
            new["apiVersion"] = json!(t.api_version());
            new["kind"] = json!(t.kind);
            if t.status {
                match part {
                    Part::Main => restore(&mut new, old, &["status"]),
                    Part::Status => {
                        let status = new.get("status").cloned();
                        new = old.clone();
                        match status {
                            Some(s) => new["status"] = s,
                            None => {
                                new.as_object_mut().map(|m| m.remove("status"));
                            }
                        }
                    }
                }
            }
            if part == Part::Main && spec_of(&new) != spec_of(old) {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                new["metadata"]["generation"] = json!(g);
            }
        }
        if let Some(schema) = &t.schema {
            let errors = schema::admit(schema, &mut new);
            if !errors.is_empty() {
                let list: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
                let name = &key.name;
                let mut e = ApiError::new(422, "Invalid", format!("{}.{} \"{name}\" is invalid: {}", t.kind, t.group, list.join(", ")));
                e.causes = errors;
                e.kind = Some((t.group.clone(), t.kind.clone(), name.clone()));
                return Err(e);
            }
        }
        if t.plural == "customresourcedefinitions" {
            self.register_crd(&new)?;
            let now = now();
            new["status"] = json!({"acceptedNames": new["spec"]["names"], "storedVersions": [new["spec"]["versions"][0]["name"]],
                "conditions": [{"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now}]});
            if let Some(old) = old {
                new["status"]["conditions"] = old["status"]["conditions"].clone();
            }
        }
        let mut compare = new.clone();
        compare["metadata"]["resourceVersion"] = old.map(|o| o["metadata"]["resourceVersion"].clone()).unwrap_or(Value::Null);
        if old == Some(&compare) {
            return Ok(compare); // a no-op write keeps the resourceVersion and sends no event
        }
        match owners {
            Some(o) => {
                self.owners.insert(key.clone(), o);
            }
            None => {
                let o = self.owners.entry(key.clone()).or_default();
                patch::record_update(old.unwrap_or(&Value::Null), &new, manager, o);
            }
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let finished = !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty)
            && !(t.plural == "pods" && !new["spec"]["nodeName"].is_null());
        self.objects.insert(key.clone(), new.clone());
        self.events.push(Event { rv: self.rv, kind: key.kind.clone(), ns: key.ns.clone(), type_: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: new.clone(), prev: old.cloned() });
        if finished {
            self.remove(t, key);
        }
        Ok(new)
    }

    /// The owners map of one object (for apply).
    pub fn ownership(&self, key: &Key) -> Ownership {
        self.owners.get(key).cloned().unwrap_or_default()
    }

    pub fn set_ownership(&mut self, key: &Key, owners: Ownership) {
        self.owners.insert(key.clone(), owners);
    }

    pub fn key_of(t: &ResourceType, ns: &str, name: &str) -> Key {
        Self::key(t, ns, name)
    }

    fn register_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let t = ResourceType::from_crd(crd).ok_or_else(|| ApiError::new(422, "Invalid", "CustomResourceDefinition: spec.group, spec.names and a served version are required"))?;
        self.types.retain(|x| !(x.group == t.group && x.plural == t.plural));
        self.types.push(t);
        Ok(())
    }

    /// DELETE: pods bound to a node and objects with finalizers are marked
    /// (`deletionTimestamp`) and removed later; everything else goes now, and its dependents
    /// with it (background cascading; `orphan` strips their ownerReferences instead).
    pub fn delete(&mut self, t: &ResourceType, ns: &str, name: &str, grace: Option<i64>, orphan: bool) -> Result<Value, ApiError> {
        let key = Self::key(t, ns, name);
        let obj = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(t, name))?;
        if orphan {
            self.orphan_dependents(&obj);
        }
        let bound_pod = t.plural == "pods" && !obj["spec"]["nodeName"].is_null();
        let finalizers = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if t.plural == "namespaces" || finalizers || (bound_pod && grace != Some(0)) {
            if !obj["metadata"]["deletionTimestamp"].is_null() {
                return Ok(obj);
            }
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            let grace = grace.or(obj["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(if bound_pod { grace } else { 0 });
            if t.plural == "namespaces" {
                marked["status"]["phase"] = json!("Terminating");
            }
            self.rv += 1;
            marked["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.objects.insert(key.clone(), marked.clone());
            self.events.push(Event { rv: self.rv, kind: key.kind.clone(), ns: key.ns.clone(), type_: "MODIFIED", object: marked.clone(), prev: Some(obj) });
            if t.plural == "namespaces" {
                let inside: Vec<Key> = self.objects.keys().filter(|k| k.ns == name).cloned().collect();
                for k in inside {
                    if let Some(kt) = self.type_by_key(&k.kind) {
                        let _ = self.delete(&kt, &k.ns, &k.name, None, false);
                    }
                }
                self.finish_namespace(name);
            }
            return Ok(marked);
        }
        Ok(self.remove(t, &key).unwrap_or(obj))
    }

    fn remove(&mut self, t: &ResourceType, key: &Key) -> Option<Value> {
        let obj = self.objects.remove(key)?;
        self.owners.remove(key);
        self.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.events.push(Event { rv: self.rv, kind: key.kind.clone(), ns: key.ns.clone(), type_: "DELETED", object: gone.clone(), prev: None });
        if t.plural == "customresourcedefinitions" {
            if let Some(ct) = ResourceType::from_crd(&obj) {
                self.types.retain(|x| !(x.group == ct.group && x.plural == ct.plural));
            }
        }
        self.collect_garbage(obj["metadata"]["uid"].as_str().unwrap_or_default());
        if !key.ns.is_empty() {
            self.finish_namespace(&key.ns.clone());
        }
        Some(gone)
    }

    /// A terminating namespace goes once nothing is left in it.
    fn finish_namespace(&mut self, ns: &str) {
        let nst = self.type_of("", "namespaces").expect("builtin");
        let nkey = Self::key(&nst, "", ns);
        let terminating = self.objects.get(&nkey).is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
        if terminating && !self.objects.keys().any(|k| k.ns == ns) {
            self.remove(&nst, &nkey);
        }
    }

    /// The garbage collector: dependents whose every owner is gone are deleted.
    fn collect_garbage(&mut self, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let live = self.live_uids();
        let dependents: Vec<Key> = self.objects.iter()
            .filter(|(_, o)| owner_uids(o).iter().any(|u| u == uid) && orphaned(o, &live))
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            if let Some(kt) = self.type_by_key(&k.kind) {
                let _ = self.delete(&kt, &k.ns, &k.name, None, false);
            }
        }
    }

    fn live_uids(&self) -> std::collections::HashSet<String> {
        self.objects.values().filter_map(|o| o["metadata"]["uid"].as_str().map(String::from)).collect()
    }

    fn orphan_dependents(&mut self, owner: &Value) {
        let uid = owner["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let dependents: Vec<(Key, Value)> = self.objects.iter()
            .filter(|(_, o)| owner_uids(o).contains(&uid))
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (k, o) in dependents {
            let mut n = o.clone();
            if let Some(refs) = n["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid.as_str());
            }
            if let Some(kt) = self.type_by_key(&k.kind) {
                let _ = self.write(&kt, &k, Some(&o), n, Part::Main, "kube-controller-manager", None);
            }
        }
    }
}

/// Whether `o` has owners and none of them is live: the garbage collector's target.
fn orphaned(o: &Value, live: &std::collections::HashSet<String>) -> bool {
    let owners = owner_uids(o);
    !owners.is_empty() && owners.iter().all(|u| !live.contains(u))
}

fn owner_uids(o: &Value) -> Vec<String> {
    o["metadata"]["ownerReferences"].as_array().into_iter().flatten()
        .filter_map(|r| r["uid"].as_str().map(String::from)).collect()
}

/// Everything but metadata and status: what bumps `metadata.generation`.
fn spec_of(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn restore(new: &mut Value, old: &Value, field: &[&str]) {
    let f = field[0];
    match old.get(f) {
        Some(v) => new[f] = v.clone(),
        None => {
            new.as_object_mut().map(|m| m.remove(f));
        }
    }
}

/// RFC 1123 subdomain names (what most kinds require).
fn valid_name(t: &ResourceType, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty() && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(422, "Invalid", format!("{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", t.kind)))
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
pub fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, ApiError> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let bad = || ApiError::new(400, "BadRequest", format!("unable to parse requirement: {s:?}"));
    let set = |v: &str| -> Vec<String> { v.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(|x| x.trim().to_string()).collect() };
    let mut out = vec![];
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = p.split_once("!=") {
            Requirement::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(v))
        } else if let Some((k, v)) = p.split_once(" in ") {
            Requirement::In(k.trim().into(), set(v))
        } else if let Some(k) = p.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else if p.contains([' ', '(', ')']) {
            return Err(bad());
        } else {
            Requirement::Exists(p.into())
        };
        out.push(r);
    }
    Ok(out)
}

pub fn labels_match(reqs: &[Requirement], labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v),
        Requirement::NotEq(k, v) => get(k) != Some(v),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
    })
}

/// A field selector (`spec.nodeName=x,status.phase!=Failed`) against an object.
pub fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|p| !p.is_empty()).all(|p| {
        let (path, want, equal) = match p.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match p.split_once("==").or_else(|| p.split_once('=')) {
                Some((k, v)) => (k, v, true),
                None => return true,
            },
        };
        let value = path.split('.').try_fold(obj, |o, k| o.get(k)).map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }).unwrap_or_default();
        (value == want) == equal
    })
}

/// Label selector (a parsed `labelSelector`) and field selector of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub labels: Vec<Requirement>,
    pub fields: String,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        labels_match(&self.labels, &obj["metadata"]["labels"]) && fields_match(&self.fields, obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let reqs = parse_label_selector("a=b,c in (d, e),!f,g notin (h)").unwrap();
        assert!(labels_match(&reqs, &json!({"a": "b", "c": "e"})));
        assert!(!labels_match(&reqs, &json!({"a": "b", "c": "e", "f": "1"})));
        assert!(!labels_match(&reqs, &json!({"a": "b", "c": "x"})));
        assert!(fields_match("spec.nodeName=n1,status.phase!=Failed", &json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})));
        assert!(fields_match("spec.nodeName=", &json!({"spec": {}})));
    }

    #[test]
    fn garbage_collection_and_graceful_pod_deletion() {
        let mut s = Store::new();
        let cm = s.type_of("", "configmaps").unwrap();
        let pods = s.type_of("", "pods").unwrap();
        let owner = s.create(&cm, "default", json!({"metadata": {"name": "owner"}}), "t").unwrap();
        let uid = owner["metadata"]["uid"].clone();
        let refs = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(&cm, "default", json!({"metadata": {"name": "dep", "ownerReferences": refs}}), "t").unwrap();
        s.create(&pods, "default", json!({"metadata": {"name": "p", "ownerReferences": refs}, "spec": {"nodeName": "n"}}), "t").unwrap();
        s.delete(&cm, "default", "owner", None, false).unwrap();
        assert!(s.get(&cm, "default", "dep").is_err());
        let p = s.get(&pods, "default", "p").unwrap();
        assert!(p["metadata"]["deletionTimestamp"].is_string(), "a bound pod waits for its kubelet");
        s.delete(&pods, "default", "p", Some(0), false).unwrap();
        assert!(s.get(&pods, "default", "p").is_err());
        // Created after its owner went: accepted, then collected.
        s.create(&cm, "default", json!({"metadata": {"name": "late", "ownerReferences": refs}}), "t").unwrap();
        assert!(s.get(&cm, "default", "late").is_err());
    }
}
