//! What the API server does with a custom resource against its CRD's structural schema:
//! prune unknown fields, apply `default`s, validate, and evaluate the CEL rules of
//! `x-kubernetes-validations` (with the `cel` crate, the same CEL language the API server
//! uses).
//!
//! Checked: `type` (with `nullable`, `x-kubernetes-int-or-string`), `required`, `enum`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`, `properties`,
//! `additionalProperties`, `items`, `x-kubernetes-preserve-unknown-fields`, CEL rules with
//! `self` (and their `message`). Not checked: `pattern` and `format`, CEL transition rules
//! (`oldSelf`), CEL cost limits, Kubernetes' CEL extension libraries beyond the standard ones,
//! `x-kubernetes-list-type` uniqueness.

use serde_json::Value;

/// One `field: message` error, formatted like the API server's `Invalid` causes.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Prunes and defaults `obj` in place, then validates it. Metadata, apiVersion and kind
/// are left alone (the server checks those itself).
pub fn admit(schema: &Value, obj: &mut Value) -> Vec<FieldError> {
    let mut errors = vec![];
    let Some(props) = schema["properties"].as_object() else { return errors };
    let Some(root) = obj.as_object_mut() else {
        return vec![FieldError { field: "<root>".into(), message: "must be an object".into() }];
    };
    for (key, value) in root.iter_mut() {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = props.get(key) {
            default_and_prune(s, value);
            validate(s, value, key, &mut errors);
        }
    }
    root.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || props.contains_key(k));
    for (key, s) in props {
        if let (Some(d), false) = (s.get("default"), root.contains_key(key)) {
            let mut d = d.clone();
            default_and_prune(s, &mut d);
            root.insert(key.clone(), d);
        }
    }
    errors
}

fn default_and_prune(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                if schema["x-kubernetes-preserve-unknown-fields"] != true {
                    m.retain(|k, _| props.contains_key(k));
                }
                for (k, s) in props {
                    if let (Some(d), false) = (s.get("default"), m.contains_key(k)) {
                        m.insert(k.clone(), d.clone());
                    }
                }
                for (k, child) in m.iter_mut() {
                    if let Some(s) = props.get(k) {
                        default_and_prune(s, child);
                    }
                }
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                m.values_mut().for_each(|child| default_and_prune(s, child));
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                items.iter_mut().for_each(|child| default_and_prune(s, child));
            }
        }
        _ => {}
    }
}

fn type_ok(schema: &Value, v: &Value) -> bool {
    if schema["x-kubernetes-int-or-string"] == true {
        return v.is_i64() || v.is_u64() || v.is_string();
    }
    match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    }
}

fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let mut err = |message: String| errors.push(FieldError { field: path.to_string(), message });
    if v.is_null() {
        if schema["nullable"] != true && schema["x-kubernetes-preserve-unknown-fields"] != true {
            err(format!("Invalid value: \"null\": {path} in body must be of type {}", schema["type"].as_str().unwrap_or("object")));
        }
        return;
    }
    if !type_ok(schema, v) {
        let want = schema["type"].as_str().unwrap_or("integer or string");
        err(format!("Invalid value: \"{}\": {path} in body must be of type {want}: {v}", json_type(v)));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            err(format!("Unsupported value: {v}: supported values: {}", list.join(", ")));
        }
    }
    if let Some(n) = v.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            err(format!("Invalid value: {v}: {path} in body should be greater than or equal to {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            err(format!("Invalid value: {v}: {path} in body should be less than or equal to {}", schema["maximum"]));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| len < min) {
            err(format!("Invalid value: {v}: {path} in body should be at least {} chars long", schema["minLength"]));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
            err(format!("Too long: may not be longer than {}", schema["maxLength"]));
        }
    }
    match v {
        Value::Object(m) => {
            for req in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !m.contains_key(req) {
                    errors.push(FieldError { field: format!("{path}.{req}"), message: "Required value".into() });
                }
            }
            let props = schema["properties"].as_object();
            for (k, child) in m {
                let sub = props.and_then(|p| p.get(k)).or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
                if let Some(sub) = sub {
                    validate(sub, child, &format!("{path}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if schema["minItems"].as_u64().is_some_and(|min| (items.len() as u64) < min) {
                errors.push(FieldError { field: path.into(), message: format!("Invalid value: {}: must have at least {} items", items.len(), schema["minItems"]) });
            }
            if schema["maxItems"].as_u64().is_some_and(|max| items.len() as u64 > max) {
                errors.push(FieldError { field: path.into(), message: format!("Too many: {}: must have at most {} items", items.len(), schema["maxItems"]) });
            }
            if let Some(s) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    validate(s, child, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        if let Some(e) = cel_rule(rule, v, path) {
            errors.push(e);
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Evaluates one `x-kubernetes-validations` rule with `self` bound to `v`. Rules that do not
/// compile or evaluate are errors, as in the API server.
fn cel_rule(rule: &Value, v: &Value, path: &str) -> Option<FieldError> {
    let source = rule["rule"].as_str()?;
    if source.contains("oldSelf") {
        return None; // transition rules: not evaluated (documented above)
    }
    let fail = |message: String| Some(FieldError { field: path.to_string(), message });
    let program = match cel::Program::compile(source) {
        Ok(p) => p,
        Err(e) => return fail(format!("Invalid value: compilation failed: {e}")),
    };
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("self", cel_value(v));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(true)) => None,
        Ok(cel::Value::Bool(false)) => {
            let message = rule["message"].as_str().map(String::from).unwrap_or_else(|| format!("failed rule: {source}"));
            fail(format!("Invalid value: \"{}\": {message}", json_type(v)))
        }
        Ok(other) => fail(format!("Invalid value: rule {source} returned {other:?}, not a bool")),
        Err(e) => fail(format!("Invalid value: rule {source} failed: {e}")),
    }
}

/// JSON integers become CEL `int` (as in Kubernetes), not `uint`.
fn cel_value(v: &Value) -> cel::Value {
    use std::sync::Arc;
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => n.as_i64().map(cel::Value::Int).unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(cel_value).collect())),
        Value::Object(m) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> =
                m.iter().map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), cel_value(v))).collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["model"],
            "x-kubernetes-validations": [{"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min > max"}],
            "properties": {
                "model": {"type": "string", "x-kubernetes-validations": [{"rule": "self.startsWith('http')", "message": "url"}]},
                "min": {"type": "integer"}, "max": {"type": "integer", "maximum": 10.0},
                "mode": {"type": "string", "enum": ["A", "B"]},
                "server": {"type": "object", "default": {"port": 8000}, "properties": {"port": {"type": "integer"}}}}}}})
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "junk": 1,
            "spec": {"model": "http://m", "extra": true}});
        assert_eq!(admit(&schema(), &mut o), vec![]);
        assert_eq!(o["spec"], json!({"model": "http://m", "server": {"port": 8000}}));
        assert!(o.get("junk").is_none());
    }

    #[test]
    fn reports_type_enum_range_required_and_cel() {
        let mut o = json!({"spec": {"model": "ftp://m", "min": 5, "max": 3, "mode": "C"}});
        let fields: Vec<String> = admit(&schema(), &mut o).into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        assert!(fields.iter().any(|f| f.starts_with("spec.model:") && f.contains("url")), "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with("spec:") && f.contains("min > max")), "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with("spec.mode:") && f.contains("Unsupported")), "{fields:?}");
        let mut o = json!({"spec": {"max": "x"}});
        let errs = admit(&schema(), &mut o);
        assert!(errs.iter().any(|e| e.field == "spec.model" && e.message == "Required value"), "{errs:?}");
        assert!(errs.iter().any(|e| e.field == "spec.max" && e.message.contains("must be of type integer")), "{errs:?}");
    }
}
