//! The request fields that ask for structured outputs — OpenAI `response_format`, vLLM
//! `structured_outputs` and the older `guided_*` fields — read into one engine constraint.
//! (happy_vllm's `response_pool` / `json_format` live with its generate route.)

use super::error::ApiError;
use super::state::Serving;
use crate::engine::constraint::Constraint;
use crate::engine::{LogitsProcessorFactory, SamplingParams};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct StructuredFields {
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {name, schema, strict}}`.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// vLLM: `{json | regex | choice | grammar | json_object, whitespace_pattern?}`.
    #[schema(value_type = Option<Object>)]
    pub structured_outputs: Option<Value>,
    /// A JSON schema, as an object or as a JSON string.
    #[schema(value_type = Option<Object>)]
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    /// Accepted and ignored: llguidance is the only backend.
    pub guided_decoding_backend: Option<String>,
    /// Whitespace allowed between JSON tokens (default: none beyond `", "` and `": "`).
    pub guided_whitespace_pattern: Option<String>,
}

fn schema_value(param: &str, v: &Value) -> Result<Value, ApiError> {
    match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::bad_request(param, format!("{param} is not valid JSON: {e}"))),
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        _ => Err(ApiError::bad_request(param, format!("{param} must be a JSON schema (an object)."))),
    }
}

fn string_list(param: &str, v: &Value) -> Result<Vec<String>, ApiError> {
    serde_json::from_value(v.clone()).map_err(|_| ApiError::bad_request(param, format!("{param} must be a list of strings.")))
}

fn string(param: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| ApiError::bad_request(param, format!("{param} must be a string.")))
}

impl StructuredFields {
    /// The one constraint the request asks for (with the field that asked), if any; asking
    /// for several kinds is a 400.
    pub fn constraint(&self) -> Result<Option<(&'static str, Constraint)>, ApiError> {
        let mut found: Vec<(&str, Constraint)> = vec![];
        let mut whitespace = self.guided_whitespace_pattern.clone();
        let mut closed = false;
        if let Some(rf) = &self.response_format {
            match rf.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("json_object") => found.push(("response_format", Constraint::JsonObject)),
                Some("json_schema") => {
                    let schema = rf.get("json_schema").and_then(|j| j.get("schema")).ok_or_else(|| {
                        ApiError::bad_request("response_format", "response_format of type json_schema needs \
                            `json_schema.schema`.")
                    })?;
                    let schema = schema_value("response_format.json_schema.schema", schema)?;
                    found.push(("response_format", Constraint::JsonSchema(schema)));
                }
                other => return Err(ApiError::bad_request("response_format", format!(
                    "response_format type must be one of text, json_object, json_schema; got {}.",
                    other.map_or("nothing".to_string(), |t| format!("{t:?}"))))),
            }
        }
        if let Some(so) = &self.structured_outputs {
            let Some(map) = so.as_object() else {
                return Err(ApiError::bad_request("structured_outputs", "structured_outputs must be an object."));
            };
            for (key, v) in map {
                let param = format!("structured_outputs.{key}");
                match key.as_str() {
                    _ if v.is_null() => {}
                    "json" => found.push(("structured_outputs.json", Constraint::JsonSchema(schema_value(&param, v)?))),
                    "regex" => found.push(("structured_outputs.regex", Constraint::Regex(string(&param, v)?))),
                    "choice" => found.push(("structured_outputs.choice", Constraint::Choice(string_list(&param, v)?))),
                    "grammar" => found.push(("structured_outputs.grammar", Constraint::Grammar(string(&param, v)?))),
                    "json_object" if v == &Value::Bool(true) => {
                        found.push(("structured_outputs.json_object", Constraint::JsonObject))
                    }
                    "whitespace_pattern" => whitespace = Some(string(&param, v)?),
                    "disable_additional_properties" => closed = v == &Value::Bool(true),
                    // Free whitespace is already off, and there is no other backend to fall back to.
                    "json_object" | "disable_any_whitespace" | "disable_fallback" => {}
                    _ => return Err(ApiError::bad_request(param, format!(
                        "structured_outputs.{key} is not supported; use json, regex, choice, grammar or json_object."))),
                }
            }
        }
        if let Some(v) = &self.guided_json {
            found.push(("guided_json", Constraint::JsonSchema(schema_value("guided_json", v)?)));
        }
        if let Some(r) = &self.guided_regex {
            found.push(("guided_regex", Constraint::Regex(r.clone())));
        }
        if let Some(c) = &self.guided_choice {
            found.push(("guided_choice", Constraint::Choice(c.clone())));
        }
        if let Some(g) = &self.guided_grammar {
            found.push(("guided_grammar", Constraint::Grammar(g.clone())));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::bad_request(names[1], format!(
                "Only one kind of structured output can be requested at a time, got {}.", names.join(", "))));
        }
        Ok(found.pop().map(|(name, c)| (name, match (c, whitespace) {
            (Constraint::JsonSchema(mut s), ws) if closed => {
                close_objects(&mut s);
                match ws {
                    Some(ws) => Constraint::JsonSchema(with_whitespace(s, &ws)),
                    None => Constraint::JsonSchema(s),
                }
            }
            (Constraint::JsonSchema(s), Some(ws)) => Constraint::JsonSchema(with_whitespace(s, &ws)),
            (Constraint::JsonObject, Some(ws)) => Constraint::JsonSchema(with_whitespace(json!({"type": "object"}), &ws)),
            (c, _) => c,
        })))
    }
}

/// vLLM's `disable_additional_properties`: objects that do not say otherwise get
/// `additionalProperties: false`.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_object = map.get("type") == Some(&json!("object")) || map.contains_key("properties");
            if is_object && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

fn with_whitespace(mut schema: Value, pattern: &str) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("x-guidance".into(), json!({"whitespace_flexible": true, "whitespace_pattern": pattern}));
    }
    schema
}

/// The logits processors of a request: its constraint compiled, if it has one.
pub async fn processors(serving: &Serving, requested: Option<(&str, Constraint)>, params: &SamplingParams)
    -> Result<Vec<LogitsProcessorFactory>, ApiError> {
    let Some((param, c)) = requested else { return Ok(vec![]) };
    if params.beam.is_some() {
        return Err(ApiError::bad_request(param, "Structured outputs cannot be combined with beam search."));
    }
    Ok(vec![compile(serving, param, c).await?])
}

/// Compiles `c` for the served model (off the async runtime: a large schema takes a while).
/// A schema, regex or grammar that does not compile is a 400 naming the problem.
pub async fn compile(serving: &Serving, param: &str, c: Constraint) -> Result<LogitsProcessorFactory, ApiError> {
    let guidance = serving.guidance.clone().map_err(|e| ApiError::bad_request(param, format!(
        "Structured outputs are not available for this model: {e}")))?;
    let param = param.to_string();
    tokio::task::spawn_blocking(move || guidance.processor(&c))
        .await
        .map_err(|e| ApiError::Internal(format!("grammar compilation task: {e}")))?
        .map_err(|e| ApiError::bad_request(param, format!("Invalid structured output constraint: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: Value) -> Result<Option<Constraint>, ApiError> {
        serde_json::from_value::<StructuredFields>(v).unwrap().constraint().map(|c| c.map(|(_, c)| c))
    }

    #[test]
    fn every_surface_maps_to_one_constraint() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let rf = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
        assert_eq!(read(rf).unwrap(), Some(Constraint::JsonSchema(schema.clone())));
        assert_eq!(read(json!({"response_format": {"type": "json_object"}})).unwrap(), Some(Constraint::JsonObject));
        assert_eq!(read(json!({"response_format": {"type": "text"}})).unwrap(), None);
        assert_eq!(read(json!({"guided_json": schema.to_string()})).unwrap(), Some(Constraint::JsonSchema(schema)));
        assert_eq!(read(json!({"structured_outputs": {"choice": ["a", "b"]}})).unwrap(),
            Some(Constraint::Choice(vec!["a".into(), "b".into()])));
        assert_eq!(read(json!({"guided_regex": "[0-9]+"})).unwrap(), Some(Constraint::Regex("[0-9]+".into())));
        assert_eq!(read(json!({})).unwrap(), None);
        let open = json!({"type": "object", "properties": {"p": {"type": "object", "properties": {}}}});
        let Some(Constraint::JsonSchema(closed)) =
            read(json!({"structured_outputs": {"json": open, "disable_additional_properties": true}})).unwrap() else {
            panic!("a schema")
        };
        assert_eq!(closed["additionalProperties"], false);
        assert_eq!(closed["properties"]["p"]["additionalProperties"], false);
    }

    #[test]
    fn conflicts_and_bad_shapes_are_400() {
        for bad in [
            json!({"guided_regex": "a", "guided_choice": ["a"]}),
            json!({"structured_outputs": {"regex": "a", "json": {}}}),
            json!({"response_format": {"type": "json_schema"}}),
            json!({"response_format": {"type": "yaml"}}),
            json!({"guided_json": "{not json"}),
            json!({"structured_outputs": {"choice": "a"}}),
            json!({"structured_outputs": {"structural_tag": "x"}}),
        ] {
            let err = read(bad.clone()).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
