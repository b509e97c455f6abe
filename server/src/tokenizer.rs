//! Tokenizer, special tokens and chat template of a model, plus the incremental decoder the
//! engine streams text with. Built from `tokenizer.json` + `tokenizer_config.json`, or from
//! the `tokenizer.*` metadata of a GGUF file.

use crate::model::ModelError;
use candle_core::quantized::gguf_file;
use serde_json::{json, Value};
use std::path::Path;
use tokenizers::Tokenizer;

#[derive(Clone)]
pub struct TokenizerInfo {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Ids that end generation unless `ignore_eos` (eos of the tokenizer and generation config).
    pub eos_token_ids: Vec<u32>,
    /// `truncation_side` of tokenizer_config.json (happy_vllm reports it in /v1/info).
    pub truncation_side: Option<String>,
}

impl std::fmt::Debug for TokenizerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizerInfo")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` as tokenizer_config.json writes special tokens.
fn token_text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string))
}

/// `chat_template` is a string, or a list of `{name, template}` where "default" wins.
fn chat_template_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let named = |n: &str| items.iter().find(|t| t["name"] == n).and_then(|t| t["template"].as_str());
            named("default").or_else(|| items.first()?["template"].as_str()).map(str::to_string)
        }
        _ => None,
    }
}

impl TokenizerInfo {
    pub fn from_hf_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile(path));
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ModelError::InvalidConfig(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => Value::Null,
        };
        // Newer transformers versions keep the template in its own file.
        let jinja = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        let chat_template = jinja.or_else(|| chat_template_of(&cfg["chat_template"]));
        let bos_token = token_text(&cfg["bos_token"]);
        let eos_token = token_text(&cfg["eos_token"]);
        let eos_token_ids = eos_token.iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        let truncation_side = cfg["truncation_side"].as_str().map(str::to_string);
        Ok(Self { tokenizer, chat_template, bos_token, eos_token, eos_token_ids, truncation_side })
    }

    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, ModelError> {
        let md = &ct.metadata;
        let missing = |k: &str| ModelError::Tokenizer(format!("GGUF metadata {k} missing"));
        let model = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported yet (only byte-level BPE \"gpt2\"); \
                 serve the Hugging Face folder with its tokenizer.json instead"
            )));
        }
        let strings = |k: &str| -> Result<Vec<String>, ModelError> {
            md.get(k)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| missing(k))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| ModelError::Tokenizer(format!("{k}: {e}"))))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_i32().map(i64::from).unwrap_or(1)).collect())
            .unwrap_or_default();
        let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str).unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
        // The pre-tokenizers llama.cpp names in `tokenizer.ggml.pre` (llama-vocab.cpp), as
        // the models' own tokenizer.json files spell them.
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
            _ => byte_level(true),
        };
        // token_type 3 = control (special), 4 = user-defined: both must never be split by BPE.
        let added: Vec<Value> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(id, t)| json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *t == 3}))
            .collect();
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let tokenizer: Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e| ModelError::Tokenizer(format!("building tokenizer from GGUF: {e}")))?;
        let id_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let text_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let eos_id = id_of("tokenizer.ggml.eos_token_id");
        let mut eos_token_ids: Vec<u32> = eos_id.into_iter().collect();
        // Chat models end turns with their own token (<|im_end|>, <|eot_id|>): llama.cpp
        // records it as eot_token_id.
        eos_token_ids.extend(id_of("tokenizer.ggml.eot_token_id"));
        eos_token_ids.dedup();
        Ok(Self {
            tokenizer,
            chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
            bos_token: text_of(id_of("tokenizer.ggml.bos_token_id")),
            eos_token: text_of(eos_id),
            eos_token_ids,
            truncation_side: None,
        })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text, add_special_tokens).map(|e| e.get_ids().to_vec()).map_err(|e| e.to_string())
    }

    /// Each token of `text` (no special tokens added) with the exact slice of `text` it
    /// stands for. The slices are contiguous and concatenate back to `text`: whitespace the
    /// tokenizer trims from offsets goes to the next token, the rest of the text to the last
    /// (happy_vllm's "non-vanilla" view of tokens).
    pub fn token_pieces<'a>(&self, text: &'a str) -> Result<Vec<(u32, &'a str)>, String> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| e.to_string())?;
        let n = enc.get_ids().len();
        let mut pieces = Vec::with_capacity(n);
        let mut prev = 0;
        for (i, (&id, &(_, end))) in enc.get_ids().iter().zip(enc.get_offsets()).enumerate() {
            let mut end = if i + 1 == n { text.len() } else { end.clamp(prev, text.len()) };
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push((id, &text[prev..end]));
            prev = end;
        }
        Ok(pieces)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| e.to_string())
    }

    /// Renders the chat template the way transformers' `apply_chat_template` does.
    pub fn apply_chat_template(&self, messages: &Value, add_generation_prompt: bool, extra: &Value)
        -> Result<String, String> {
        let template = self.chat_template.as_deref().ok_or("the model has no chat template; pass --chat-template")?;
        render_chat_template(template, messages, add_generation_prompt, self.bos_token.as_deref(), self.eos_token.as_deref(), extra)
    }
}

pub fn render_chat_template(template: &str, messages: &Value, add_generation_prompt: bool, bos: Option<&str>,
    eos: Option<&str>, extra: &Value) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    // Templates call Python string methods (.strip(), .startswith(), ...).
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| format!("invalid chat template: {e}"))?;
    let mut ctx = json!({
        "messages": messages,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos.unwrap_or(""),
        "eos_token": eos.unwrap_or(""),
    });
    if let (Some(ctx), Some(extra)) = (ctx.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
    }
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    tmpl.render(minijinja::Value::from_serialize(&ctx)).map_err(|e| format!("chat template error: {e}"))
}

/// Turns a growing list of token ids into text deltas that are always valid UTF-8 and whose
/// concatenation is the decode of the whole list (vLLM's prefix/read offset scheme: a
/// window of earlier tokens is re-decoded so merges across token boundaries come out right).
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder for output that follows `prompt` (the last few prompt tokens give context,
    /// e.g. so a leading space is decoded as it would be mid-text).
    pub fn new(prompt: &[u32]) -> Self {
        let start = prompt.len().saturating_sub(5);
        Self { prefix_offset: start, read_offset: prompt.len() }
    }

    /// New text for `all` (prompt + output so far); empty while a character is incomplete.
    pub fn step(&mut self, tok: &TokenizerInfo, all: &[u32], skip_special: bool) -> String {
        let prefix = tok.decode(&all[self.prefix_offset..self.read_offset], skip_special).unwrap_or_default();
        let full = tok.decode(&all[self.prefix_offset..], skip_special).unwrap_or_default();
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = all.len();
            delta
        } else {
            String::new()
        }
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn flush(&mut self, tok: &TokenizerInfo, all: &[u32], skip_special: bool) -> String {
        let prefix = tok.decode(&all[self.prefix_offset..self.read_offset], skip_special).unwrap_or_default();
        let full = tok.decode(&all[self.prefix_offset..], skip_special).unwrap_or_default();
        self.prefix_offset = self.read_offset;
        self.read_offset = all.len();
        full.strip_prefix(prefix.as_str()).map(str::to_string).unwrap_or_default()
    }
}
