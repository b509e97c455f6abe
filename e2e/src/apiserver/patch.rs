//! Writes other than create: JSON merge patch and server-side apply with field managers.
//!
//! Server-side apply here tracks, per object and field manager, the set of fields the manager
//! applied: every map it set and every leaf in it. A field it stops applying goes, unless
//! another manager owns it (so a dropped struct goes whole, and a struct another manager also
//! set keeps that manager's part). Maps are merged key by key; lists are atomic (one field, replaced whole),
//! which is what the real API does for lists without merge keys and is indistinguishable for
//! a manager that always applies whole lists (the operator does). Not emulated: merging
//! keyed lists (`containers` by name) from different managers, and `managedFields` in the
//! returned metadata (ownership is kept on the side).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A field: the keys from the object's root (joined, never split on dots in keys).
pub type FieldPath = Vec<String>;

/// manager → fields it owns.
pub type Ownership = BTreeMap<String, BTreeSet<FieldPath>>;

/// RFC 7386: maps merge, `null` removes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The fields a configuration sets: each map and, recursively, its keys (lists and scalars
/// are leaves).
pub fn fields(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone());
                }
                for (k, child) in m {
                    if child.is_null() {
                        continue;
                    }
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut vec![], &mut out);
    // Identity is not owned by anyone.
    for f in [&["apiVersion"][..], &["kind"], &["metadata"], &["metadata", "name"], &["metadata", "namespace"]] {
        out.remove(&f.iter().map(|s| s.to_string()).collect::<FieldPath>());
    }
    out
}

pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Deep merge where lists and scalars replace (what apply does with the applied config).
fn overlay(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                if v.is_null() {
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) => overlay(existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// A conflict: another manager owns a field the applied config sets to a different value.
#[derive(Debug)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Applies `config` as `manager` to `current` (Null when the object does not exist yet),
/// updating `owners`. Fields the manager applied before and no longer applies are removed
/// unless another manager also owns them.
pub fn apply(current: &Value, config: &Value, manager: &str, force: bool, owners: &mut Ownership) -> Result<Value, Vec<Conflict>> {
    let applied = fields(config);
    let mut conflicts = vec![];
    // Values conflict at leaves; maps are shared by whoever sets keys in them.
    for f in applied.iter().filter(|f| !get(config, f).is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))) {
        let differs = get(current, f) != get(config, f);
        for (other, owned) in owners.iter().filter(|(m, _)| m.as_str() != manager) {
            if differs && owned.contains(f) {
                conflicts.push(Conflict { manager: other.clone(), field: format!(".{}", f.join(".")) });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut out = if current.is_null() { Value::Object(Map::new()) } else { current.clone() };
    let previous = owners.remove(manager).unwrap_or_default();
    // Shortest first: a dropped map goes whole.
    let mut dropped: Vec<&FieldPath> = previous.difference(&applied).collect();
    dropped.sort_by_key(|f| f.len());
    for f in dropped {
        if !owners.values().any(|o| o.contains(f)) {
            remove(&mut out, f);
        }
    }
    overlay(&mut out, config);
    // A forced apply takes the fields it changed away from their previous owners.
    for f in &applied {
        if get(current, f) != get(config, f) {
            for owned in owners.values_mut() {
                owned.remove(f);
            }
        }
    }
    owners.insert(manager.to_string(), applied);
    owners.retain(|_, f| !f.is_empty());
    Ok(out)
}

/// An update (create, replace, merge patch) by `manager`: it now owns the fields it set, and
/// nobody else owns a field whose value it changed.
pub fn record_update(before: &Value, after: &Value, manager: &str, owners: &mut Ownership) {
    let set = fields(after);
    let changed: BTreeSet<FieldPath> = set.iter().filter(|f| get(before, f) != get(after, f)).cloned().collect();
    for (m, owned) in owners.iter_mut() {
        if m != manager {
            owned.retain(|f| !changed.contains(f));
        }
    }
    owners.entry(manager.to_string()).or_default().extend(changed);
    // Fields that no longer exist are owned by no one.
    for owned in owners.values_mut() {
        owned.retain(|f| get(after, f).is_some());
    }
    owners.retain(|_, f| !f.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_removes_fields_the_manager_stops_applying() {
        let mut owners = Ownership::new();
        let a = apply(&Value::Null, &json!({"spec": {"a": 1, "b": {"c": 2}}}), "op", false, &mut owners).unwrap();
        let b = apply(&a, &json!({"spec": {"a": 1}}), "op", false, &mut owners).unwrap();
        assert_eq!(b, json!({"spec": {"a": 1}}), "a dropped struct goes whole");
        // Unless another manager set part of it.
        let c = apply(&b, &json!({"spec": {"a": 1, "b": {"c": 2}}}), "op", false, &mut owners).unwrap();
        let mut d = c.clone();
        d["spec"]["b"]["e"] = json!(5);
        record_update(&c, &d, "other", &mut owners);
        let e = apply(&d, &json!({"spec": {"a": 1}}), "op", false, &mut owners).unwrap();
        assert_eq!(e, json!({"spec": {"a": 1, "b": {"e": 5}}}));
    }

    #[test]
    fn other_managers_fields_survive_and_conflict() {
        let mut owners = Ownership::new();
        let a = apply(&Value::Null, &json!({"spec": {"replicas": 1, "x": 1}}), "op", false, &mut owners).unwrap();
        let mut scaled = a.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(&a, &scaled, "hpa", &mut owners);
        let err = apply(&scaled, &json!({"spec": {"replicas": 2, "x": 1}}), "op", false, &mut owners).unwrap_err();
        assert_eq!(err[0].field, ".spec.replicas");
        let forced = apply(&scaled, &json!({"spec": {"x": 1}}), "op", true, &mut owners).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3, "owned by hpa now, not removed");
    }

    #[test]
    fn merge_patch_removes_nulls() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": [1]}}));
        assert_eq!(v, json!({"a": {"c": 2, "d": [1]}}));
    }
}

