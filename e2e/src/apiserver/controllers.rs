//! The part of kube-controller-manager the operator relies on: Deployments own ReplicaSets
//! (one per pod template, named by the template's hash, rolled by `maxSurge` /
//! `maxUnavailable`), ReplicaSets own Pods. Both run against the store after every change
//! until nothing more changes, and write only when something differs (so they converge).
//!
//! Not emulated: `Recreate` strategy, `minReadySeconds`, `progressDeadlineSeconds`, pause,
//! rollback, revision history pruning, EndpointSlices (the suite finds a Service's endpoints
//! from its selector and the pods' readiness, like kube-proxy would).

use super::store::{Key, Part, Store};
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};

const MANAGER: &str = "kube-controller-manager";

/// One pass over every Deployment and ReplicaSet.
pub fn reconcile_all(store: &mut Store) {
    let (Some(deployments), Some(replicasets)) = (store.type_of("apps", "deployments"), store.type_of("apps", "replicasets")) else {
        return;
    };
    for d in store.list(&deployments, "") {
        if d["metadata"]["deletionTimestamp"].is_null() {
            deployment(store, &d);
        }
    }
    for rs in store.list(&replicasets, "") {
        if rs["metadata"]["deletionTimestamp"].is_null() {
            replicaset(store, &rs);
        }
    }
    // Deployment status reads its ReplicaSets' status, which the pass above just updated.
    for d in store.list(&deployments, "") {
        deployment_status(store, &d);
    }
}

fn controlled_by<'a>(items: &'a [Value], owner: &Value) -> impl Iterator<Item = &'a Value> {
    let uid = owner["metadata"]["uid"].clone();
    items.iter().filter(move |o| {
        o["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| r["uid"] == uid && r["controller"] == true)
    })
}

fn owner_ref(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

fn template_hash(template: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.to_string().hash(&mut h);
    crate::name_suffix(h.finish(), 10)
}

fn int(v: &Value, default: i64) -> i64 {
    v.as_i64().unwrap_or(default)
}

/// `maxSurge` / `maxUnavailable`: an int or a percentage of `replicas`.
fn int_or_percent(v: &Value, replicas: i64, default: &str, round_up: bool) -> i64 {
    let v = if v.is_null() { json!(default) } else { v.clone() };
    match v.as_str().and_then(|s| s.strip_suffix('%')).and_then(|p| p.parse::<f64>().ok()) {
        Some(p) => {
            let x = p * replicas as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i64
        }
        None => v.as_i64().unwrap_or(0),
    }
}

fn set(store: &mut Store, kind: (&str, &str), old: &Value, new: Value, part: Part) {
    let Some(t) = store.type_of(kind.0, kind.1) else { return };
    let key = Store::key_of(&t, old["metadata"]["namespace"].as_str().unwrap_or_default(), old["metadata"]["name"].as_str().unwrap_or_default());
    if store.objects.get(&key) == Some(old) && *old != new {
        let _ = store.write(&t, &key, Some(old), new, part, MANAGER, None);
    }
}

fn deployment(store: &mut Store, d: &Value) {
    let rst = store.type_of("apps", "replicasets").expect("builtin");
    let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    let desired = int(&d["spec"]["replicas"], 1);
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let all = store.list(&rst, &ns);
    let owned: Vec<Value> = controlled_by(&all, d).cloned().collect();
    let (new, old): (Vec<Value>, Vec<Value>) = owned.into_iter().partition(|rs| rs["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
    let old_total: i64 = old.iter().map(|rs| int(&rs["spec"]["replicas"], 0)).sum();
    let Some(new_rs) = new.into_iter().next() else {
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let mut tpl = template.clone();
        tpl["metadata"]["labels"] = labels.clone();
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let name = format!("{}-{hash}", d["metadata"]["name"].as_str().unwrap_or_default());
        let replicas = if old_total == 0 { desired } else { 0 };
        let rs = json!({"metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(d)],
            "annotations": {"deployment.kubernetes.io/desired-replicas": desired.to_string()}},
            "spec": {"replicas": replicas, "selector": selector, "template": tpl}});
        let _ = store.create(&rst, &ns, rs, MANAGER);
        return;
    };
    let rolling = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&rolling["maxSurge"], desired, "25%", true);
    let mut unavailable = int_or_percent(&rolling["maxUnavailable"], desired, "25%", false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let mut new_replicas = int(&new_rs["spec"]["replicas"], 0);
    let mut old_replicas: Vec<i64> = old.iter().map(|rs| int(&rs["spec"]["replicas"], 0)).collect();
    if old_total == 0 {
        new_replicas = desired;
    } else {
        // Scale the new ReplicaSet up within the surge...
        let total = new_replicas + old_total;
        if new_replicas < desired && total < desired + surge {
            new_replicas += (desired + surge - total).min(desired - new_replicas);
        }
        // ...and the old ones down as far as availability allows (counting what exists now).
        let new_unavailable = (int(&new_rs["spec"]["replicas"], 0) - int(&new_rs["status"]["availableReplicas"], 0)).max(0);
        let all_pods = int(&new_rs["spec"]["replicas"], 0) + old_total;
        let mut removable = (all_pods - (desired - unavailable) - new_unavailable).max(0);
        // Old pods that are not available can always go first.
        for (i, rs) in old.iter().enumerate() {
            let unhealthy = (old_replicas[i] - int(&rs["status"]["availableReplicas"], 0)).max(0);
            let cut = unhealthy.min(old_replicas[i]);
            old_replicas[i] -= cut;
            removable -= cut.min(removable);
        }
        for r in old_replicas.iter_mut() {
            let cut = removable.min(*r);
            *r -= cut;
            removable -= cut;
        }
    }
    let mut n = new_rs.clone();
    n["spec"]["replicas"] = json!(new_replicas);
    n["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] = json!(desired.to_string());
    set(store, ("apps", "replicasets"), &new_rs, n, Part::Main);
    for (rs, r) in old.iter().zip(old_replicas) {
        let mut o = rs.clone();
        o["spec"]["replicas"] = json!(r);
        set(store, ("apps", "replicasets"), rs, o, Part::Main);
    }
}

fn deployment_status(store: &mut Store, d: &Value) {
    let Some(rst) = store.type_of("apps", "replicasets") else { return };
    let key = Key { kind: "apps/deployments".into(), ns: d["metadata"]["namespace"].as_str().unwrap_or_default().into(),
        name: d["metadata"]["name"].as_str().unwrap_or_default().into() };
    let Some(d) = store.objects.get(&key).cloned() else { return };
    let all = store.list(&rst, &key.ns);
    let owned: Vec<&Value> = controlled_by(&all, &d).collect();
    let hash = template_hash(&d["spec"]["template"]);
    let sum = |f: &str| -> i64 { owned.iter().map(|rs| int(&rs["status"][f], 0)).sum() };
    let desired = int(&d["spec"]["replicas"], 1);
    let updated: i64 = owned.iter().filter(|rs| rs["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .map(|rs| int(&rs["status"]["replicas"], 0)).sum();
    let (replicas, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
    let unavailable_allowed = int_or_percent(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], desired, "25%", false);
    let is_available = available >= desired - unavailable_allowed;
    let complete = updated == desired && replicas == desired && available == desired;
    let condition = |type_: &str, ok: bool, reason: &str, old: &Value| -> Value {
        let status = if ok { "True" } else { "False" };
        let prev = old["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == type_);
        let since = prev.filter(|c| c["status"] == status && c["reason"] == reason).map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(super::store::now()));
        json!({"type": type_, "status": status, "reason": reason, "lastTransitionTime": since, "lastUpdateTime": since})
    };
    let mut n = d.clone();
    n["status"] = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [
            condition("Available", is_available, if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }, &d),
            condition("Progressing", true, if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }, &d),
        ],
    });
    set(store, ("apps", "deployments"), &d, n, Part::Status);
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn replicaset(store: &mut Store, rs: &Value) {
    let pt = store.type_of("", "pods").expect("builtin");
    let ns = rs["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
    let all = store.list(&pt, &ns);
    let mut active: Vec<Value> = controlled_by(&all, rs)
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .cloned().collect();
    let want = int(&rs["spec"]["replicas"], 1);
    let have = active.len() as i64;
    if have < want {
        let tpl = &rs["spec"]["template"];
        for _ in have..want {
            let pod = json!({"metadata": {"generateName": format!("{}-", rs["metadata"]["name"].as_str().unwrap_or_default()),
                "namespace": ns, "labels": tpl["metadata"]["labels"], "annotations": tpl["metadata"]["annotations"],
                "ownerReferences": [owner_ref(rs)]}, "spec": tpl["spec"]});
            let _ = store.create(&pt, &ns, pod, MANAGER);
        }
    } else if have > want {
        // Delete unscheduled, then not-ready, then the newest pods first (as the real one does).
        active.sort_by_key(|p| (!p["spec"]["nodeName"].is_null(), is_ready(p),
            std::cmp::Reverse(p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string()),
            std::cmp::Reverse(p["metadata"]["name"].as_str().unwrap_or_default().to_string())));
        for p in active.iter().take((have - want) as usize) {
            let _ = store.delete(&pt, &ns, p["metadata"]["name"].as_str().unwrap_or_default(), None, false);
        }
    }
    let all = store.list(&pt, &ns);
    let live: Vec<&Value> = controlled_by(&all, rs).filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).collect();
    let ready = live.iter().filter(|p| is_ready(p) && p["metadata"]["deletionTimestamp"].is_null()).count();
    let mut n = rs.clone();
    n["status"] = json!({"replicas": live.len(), "fullyLabeledReplicas": live.len(), "readyReplicas": ready,
        "availableReplicas": ready, "observedGeneration": rs["metadata"]["generation"]});
    let key = Key { kind: "apps/replicasets".into(), ns: ns.clone(), name: rs["metadata"]["name"].as_str().unwrap_or_default().into() };
    if let Some(current) = store.objects.get(&key).cloned() {
        let mut n2 = current.clone();
        n2["status"] = n["status"].clone();
        set(store, ("apps", "replicasets"), &current, n2, Part::Status);
    }
}
