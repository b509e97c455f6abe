//! Function calling on /v1/chat/completions: `tools` reach the model through the chat
//! template; `tool_choice: "required"` or a named function is enforced by constrained
//! decoding against the tool-call JSON schema; `"auto"` reads calls out of the model's text
//! with the parser chosen by `--tool-call-parser`.

use super::error::ApiError;
use super::extract::random_id;
use crate::config::{ServerArgs, ToolCallParser};
use crate::engine::constraint::Constraint;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct ToolFields {
    /// `[{"type": "function", "function": {"name", "description"?, "parameters"?}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `"none" | "auto" | "required" | {"type": "function", "function": {"name"}}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// With `required`: whether several calls may come back (default true).
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// No tool calls: the text is the answer.
    Text,
    Auto(ToolCallParser),
    Required,
    Named(String),
}

/// What a request's tool fields mean for rendering, decoding and reading the output.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    mode: Mode,
    /// The `tools` template variable (absent with `tool_choice: "none"`, as vLLM does).
    pub template_tools: Option<Value>,
    /// What the output must match (required / named function).
    pub constraint: Option<Constraint>,
}

/// One call as the response reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

impl ToolCall {
    fn from_json(v: &Value, args_key: &[&str]) -> Option<Self> {
        let name = v.get("name")?.as_str()?.to_string();
        let args = args_key.iter().find_map(|k| v.get(*k)).cloned().unwrap_or(json!({}));
        let arguments = match args {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Some(Self { name, arguments })
    }

    /// The OpenAI `tool_calls[i]` object (`index` is for streaming deltas).
    pub fn to_json(&self, index: Option<usize>) -> Value {
        let mut v = json!({"id": format!("chatcmpl-tool-{}", random_id()), "type": "function",
            "function": {"name": self.name, "arguments": self.arguments}});
        if let Some(i) = index {
            v["index"] = json!(i);
        }
        v
    }
}

fn function_name(v: &Value) -> Option<&str> {
    v.get("function")?.get("name")?.as_str()
}

impl ToolFields {
    pub fn plan(&self, server: &ServerArgs) -> Result<ToolPlan, ApiError> {
        let tools = self.tools.clone().unwrap_or_default();
        let mut functions: Vec<(String, Value)> = vec![];
        for (i, t) in tools.iter().enumerate() {
            let param = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::bad_request(param, "Only tools of type \"function\" are supported."));
            }
            let name = function_name(t).filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request(&param, "A tool needs `function.name`."))?;
            let parameters = t["function"].get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}));
            if !parameters.is_object() {
                return Err(ApiError::bad_request(param, "`function.parameters` must be a JSON schema object."));
            }
            functions.push((name.to_string(), parameters));
        }
        let choice = match &self.tool_choice {
            None if tools.is_empty() => json!("none"),
            None => json!("auto"),
            Some(c) => c.clone(),
        };
        if tools.is_empty() && choice != "none" {
            return Err(ApiError::bad_request("tool_choice", "When using `tool_choice`, `tools` must be set."));
        }
        let template_tools = (!tools.is_empty() && choice != "none").then(|| Value::Array(tools.clone()));
        let (mode, constraint) = match choice.as_str() {
            Some("none") => (Mode::Text, None),
            Some("auto") => match (server.enable_auto_tool_choice, server.tool_call_parser) {
                (true, Some(parser)) => (Mode::Auto(parser), None),
                _ => return Err(ApiError::bad_request("tool_choice", "\"auto\" tool choice requires \
                    --enable-auto-tool-choice and --tool-call-parser to be set (or pass tool_choice \"required\", \
                    \"none\" or a named function).")),
            },
            Some("required") => {
                let one_of: Vec<Value> = functions.iter().map(|(name, params)| json!({
                    "type": "object",
                    "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                    "required": ["name", "parameters"],
                    "additionalProperties": false,
                })).collect();
                let mut schema = json!({"type": "array", "minItems": 1, "items": {"anyOf": one_of}});
                if self.parallel_tool_calls == Some(false) {
                    schema["maxItems"] = json!(1);
                }
                (Mode::Required, Some(Constraint::JsonSchema(schema)))
            }
            Some(other) => return Err(ApiError::bad_request("tool_choice", format!(
                "tool_choice must be \"none\", \"auto\", \"required\" or a named function, got {other:?}."))),
            None => {
                let name = (choice.get("type").and_then(Value::as_str) == Some("function"))
                    .then(|| function_name(&choice)).flatten()
                    .ok_or_else(|| ApiError::bad_request("tool_choice",
                        "A named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}."))?;
                let (_, params) = functions.iter().find(|(n, _)| n == name).ok_or_else(|| ApiError::bad_request(
                    "tool_choice", format!("tool_choice names {name:?}, which is not among the tools.")))?;
                (Mode::Named(name.to_string()), Some(Constraint::JsonSchema(params.clone())))
            }
        };
        Ok(ToolPlan { mode, template_tools, constraint })
    }
}

impl ToolPlan {
    /// Whether the output's special tokens must be kept to find the calls (mistral's
    /// `[TOOL_CALLS]` is one).
    pub fn needs_special_tokens(&self) -> bool {
        self.mode == Mode::Auto(ToolCallParser::Mistral)
    }

    /// A finished output read as (content, tool calls).
    pub fn extract(&self, text: &str) -> (Option<String>, Vec<ToolCall>) {
        match &self.mode {
            Mode::Text => (Some(text.to_string()), vec![]),
            Mode::Named(name) => (None, vec![ToolCall { name: name.clone(), arguments: text.to_string() }]),
            Mode::Required => match serde_json::from_str::<Vec<Value>>(text) {
                Ok(items) => (None, items.iter().filter_map(|v| ToolCall::from_json(v, &["parameters"])).collect()),
                Err(_) => (Some(text.to_string()), vec![]),
            },
            Mode::Auto(parser) => parse_auto(*parser, text),
        }
    }

    pub fn streamer(&self) -> ToolStream {
        ToolStream { plan: self.clone(), text: String::new(), sent: 0, started: false, held: false }
    }
}

/// Where a parser's tool calls begin in `text`, if they do.
fn calls_start(parser: ToolCallParser, text: &str) -> Option<usize> {
    match parser {
        ToolCallParser::Hermes => text.find("<tool_call>"),
        ToolCallParser::Mistral => text.find("[TOOL_CALLS]"),
        ToolCallParser::Llama3Json => {
            let start = text.len() - text.trim_start().len();
            let rest = &text[start..];
            (rest.starts_with('{') || rest.starts_with("<|python_tag|>")).then_some(start)
        }
    }
}

/// The longest end of `text` that could still grow into the parser's start marker.
fn undecided_tail(parser: ToolCallParser, text: &str) -> usize {
    let marker = match parser {
        ToolCallParser::Hermes => "<tool_call>",
        ToolCallParser::Mistral => "[TOOL_CALLS]",
        // Calls only count at the very start: undecided while nothing but whitespace came.
        ToolCallParser::Llama3Json => return if text.trim().is_empty() { text.len() } else { 0 },
    };
    (1..marker.len()).rev().find(|&k| text.ends_with(&marker[..k]) && text.is_char_boundary(text.len() - k)).unwrap_or(0)
}

fn parse_auto(parser: ToolCallParser, text: &str) -> (Option<String>, Vec<ToolCall>) {
    let not_calls = || (Some(text.to_string()), vec![]);
    let Some(start) = calls_start(parser, text) else { return not_calls() };
    let content = Some(text[..start].to_string()).filter(|c| !c.trim().is_empty());
    let body = &text[start..];
    let calls: Option<Vec<ToolCall>> = match parser {
        ToolCallParser::Hermes => body
            .split("<tool_call>")
            .filter(|s| !s.trim().is_empty())
            .map(|block| {
                let json = block.split("</tool_call>").next().unwrap_or_default().trim();
                serde_json::from_str::<Value>(json).ok().and_then(|v| ToolCall::from_json(&v, &["arguments"]))
            })
            .collect(),
        ToolCallParser::Mistral => {
            let json = body.trim_start_matches("[TOOL_CALLS]").trim();
            serde_json::from_str::<Vec<Value>>(json)
                .ok()
                .map(|items| items.iter().filter_map(|v| ToolCall::from_json(v, &["arguments", "parameters"])).collect())
        }
        ToolCallParser::Llama3Json => {
            let json = body.trim_start().trim_start_matches("<|python_tag|>");
            let mut calls = vec![];
            let mut rest = json;
            // One or more objects separated by `;`.
            loop {
                rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
                if rest.is_empty() {
                    break Some(calls);
                }
                let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => match ToolCall::from_json(&v, &["parameters", "arguments"]) {
                        Some(c) => calls.push(c),
                        None => break None,
                    },
                    _ => break None,
                }
                rest = &rest[it.byte_offset()..];
            }
        }
    };
    match calls {
        Some(calls) if !calls.is_empty() => (content, calls),
        _ => not_calls(),
    }
}

/// One choice's streamed output: content deltas as they become certain, tool calls as
/// OpenAI-shaped `tool_calls` deltas.
pub struct ToolStream {
    plan: ToolPlan,
    text: String,
    /// Bytes of `text` already sent as content (or as arguments, for a named function).
    sent: usize,
    /// A named function's header (id, name) went out.
    started: bool,
    /// Auto mode found the start of tool calls: the rest waits for the end.
    held: bool,
}

#[derive(Debug, Default)]
pub struct StreamOut {
    pub content: Option<String>,
    pub tool_calls: Vec<Value>,
}

impl ToolStream {
    pub fn push(&mut self, delta: &str) -> StreamOut {
        self.text.push_str(delta);
        match self.plan.mode.clone() {
            Mode::Text => self.flush_content(self.text.len()),
            Mode::Required => StreamOut::default(),
            Mode::Named(name) => {
                let args = self.text[self.sent..].to_string();
                self.sent = self.text.len();
                if args.is_empty() && self.started {
                    return StreamOut::default();
                }
                let call = if self.started {
                    json!({"index": 0, "function": {"arguments": args}})
                } else {
                    self.started = true;
                    ToolCall { name, arguments: args }.to_json(Some(0))
                };
                StreamOut { content: None, tool_calls: vec![call] }
            }
            Mode::Auto(parser) => {
                if self.held {
                    return StreamOut::default();
                }
                if let Some(start) = calls_start(parser, &self.text) {
                    self.held = true;
                    return self.flush_content(start);
                }
                let safe = self.text.len() - undecided_tail(parser, &self.text);
                self.flush_content(safe)
            }
        }
    }

    /// The end of the output: whatever was held back, read as calls or as content.
    pub fn finish(&mut self) -> StreamOut {
        match &self.plan.mode {
            Mode::Text | Mode::Named(_) => self.flush_content_if_text(),
            Mode::Required | Mode::Auto(_) => {
                let (_, calls) = self.plan.extract(&self.text);
                if calls.is_empty() {
                    return self.flush_content(self.text.len());
                }
                let mut out = StreamOut::default();
                if let Mode::Auto(parser) = self.plan.mode {
                    // Content before the calls that the tail rule still held.
                    out = self.flush_content(calls_start(parser, &self.text).unwrap_or(self.sent).max(self.sent));
                }
                out.tool_calls = calls.iter().enumerate().map(|(i, c)| c.to_json(Some(i))).collect();
                out
            }
        }
    }

    /// Whether the choice ended in tool calls (its finish_reason becomes "tool_calls").
    pub fn has_calls(&self) -> bool {
        match &self.plan.mode {
            Mode::Text => false,
            Mode::Named(_) => true,
            _ => !self.plan.extract(&self.text).1.is_empty(),
        }
    }

    fn flush_content_if_text(&mut self) -> StreamOut {
        match self.plan.mode {
            Mode::Text => self.flush_content(self.text.len()),
            _ => StreamOut::default(),
        }
    }

    fn flush_content(&mut self, upto: usize) -> StreamOut {
        if upto <= self.sent {
            return StreamOut::default();
        }
        let content = self.text[self.sent..upto].to_string();
        self.sent = upto;
        StreamOut { content: Some(content), tool_calls: vec![] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall { name: name.into(), arguments: args.into() }
    }

    #[test]
    fn hermes_calls_and_content() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let (content, calls) = parse_auto(ToolCallParser::Hermes, text);
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris"}"#)]);
        let (content, calls) = parse_auto(ToolCallParser::Hermes, "No tools needed.");
        assert_eq!((content.as_deref(), calls.len()), (Some("No tools needed."), 0));
        let (content, calls) = parse_auto(ToolCallParser::Hermes, "<tool_call>{broken</tool_call>");
        assert_eq!((content.as_deref(), calls.len()), (Some("<tool_call>{broken</tool_call>"), 0));
    }

    #[test]
    fn llama3_and_mistral_calls() {
        let text = "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}";
        let (content, calls) = parse_auto(ToolCallParser::Llama3Json, text);
        assert_eq!(content, None);
        assert_eq!(calls, vec![call("a", r#"{"x":1}"#), call("b", "{}")]);
        assert_eq!(parse_auto(ToolCallParser::Llama3Json, "Hello {\"name\": \"a\"}").1.len(), 0);
        let (content, calls) = parse_auto(ToolCallParser::Mistral, "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"q\": \"x\"}}]");
        assert_eq!((content, calls), (None, vec![call("f", r#"{"q":"x"}"#)]));
    }

    #[test]
    fn auto_stream_holds_back_marker_prefixes() {
        let plan = ToolPlan { mode: Mode::Auto(ToolCallParser::Hermes), template_tools: None, constraint: None };
        let mut s = plan.streamer();
        let mut content = String::new();
        for piece in ["Sure", ". <tool", "_call>{\"name\": \"f\", ", "\"arguments\": {}}</tool_call>"] {
            content.extend(s.push(piece).content);
        }
        let end = s.finish();
        content.extend(end.content);
        assert_eq!(content, "Sure. ");
        assert_eq!(end.tool_calls.len(), 1);
        assert_eq!(end.tool_calls[0]["function"]["name"], "f");
        assert!(s.has_calls());
    }

    #[test]
    fn plans_from_requests() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: crate::config::ServeArgs,
        }
        let server = <Cli as clap::Parser>::try_parse_from(["x", "--model", "m"]).unwrap().serve.server;
        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"q": {"type": "string"}}, "required": ["q"]}}});
        let fields = |choice: Value| ToolFields { tools: Some(vec![tool.clone()]), tool_choice: Some(choice), parallel_tool_calls: None };
        let named = fields(json!({"type": "function", "function": {"name": "f"}})).plan(&server).unwrap();
        assert_eq!(named.constraint, Some(Constraint::JsonSchema(tool["function"]["parameters"].clone())));
        assert!(fields(json!("required")).plan(&server).unwrap().constraint.is_some());
        assert!(fields(json!("none")).plan(&server).unwrap().template_tools.is_none());
        for bad in [json!("auto"), json!({"type": "function", "function": {"name": "g"}}), json!("sometimes")] {
            assert_eq!(fields(bad).plan(&server).unwrap_err().status(), axum::http::StatusCode::BAD_REQUEST);
        }
        let no_tools = ToolFields { tool_choice: Some(json!("required")), ..Default::default() };
        assert!(no_tools.plan(&server).is_err());
    }
}
