//! Structured outputs: a constraint (JSON schema, regex, choice, grammar) becomes a logits
//! processor that masks every token the grammar cannot accept next. The masks come from
//! llguidance over a token trie built once per tokenizer; compiled grammars are cached by
//! their text, and each sequence runs its own copy of the compiled parser.

use super::params::{LogitsProcessor, LogitsProcessorFactory};
use crate::tokenizer::TokenizerInfo;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    JsonSchema(Value),
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (which also reads GBNF-style `::=` rules).
    Grammar(String),
}

impl Constraint {
    fn cache_key(&self) -> String {
        match self {
            Self::JsonSchema(s) => format!("json:{s}"),
            Self::JsonObject => "json_object".into(),
            Self::Regex(r) => format!("regex:{r}"),
            Self::Choice(c) => format!("choice:{}", json!(c)),
            Self::Grammar(g) => format!("grammar:{g}"),
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar, String> {
        Ok(match self {
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_json_layout(schema)?),
            Self::JsonObject => TopLevelGrammar::from_json_schema(with_json_layout(&json!({"type": "object"}))?),
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Self::Choice(options) => {
                if options.is_empty() {
                    return Err("the list of choices is empty".into());
                }
                let alternatives: Vec<String> = options.iter().map(|o| regex_syntax::escape(o)).collect();
                TopLevelGrammar::from_regex(&alternatives.join("|"))
            }
            Self::Grammar(g) => TopLevelGrammar::from_lark_or_grammar_list(g).map_err(|e| e.to_string())?,
        })
    }
}

/// JSON is generated compactly with `", "` / `": "` separators and no free whitespace: a
/// small model allowed arbitrary whitespace between tokens can pad forever. A schema that
/// sets its own `x-guidance` layout keeps it.
fn with_json_layout(schema: &Value) -> Result<Value, String> {
    let mut schema = schema.clone();
    match &mut schema {
        Value::Object(map) => {
            map.entry("x-guidance").or_insert_with(|| {
                json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
            });
        }
        Value::Bool(_) => {}
        other => return Err(format!("a JSON schema must be an object or a boolean, got {other}")),
    }
    Ok(schema)
}

/// Compiles constraints for one tokenizer and hands out per-sequence processors.
pub struct Guidance {
    factory: ParserFactory,
    cache: Mutex<GrammarCache>,
}

/// Compiled parsers by constraint text, oldest evicted first.
#[derive(Default)]
struct GrammarCache {
    parsers: HashMap<String, Arc<Mutex<TokenParser>>>,
    order: VecDeque<String>,
}

const GRAMMAR_CACHE_SIZE: usize = 128;

impl Guidance {
    /// Builds the token trie (`vocab_size` is the model's logits width, which may exceed
    /// the tokenizer's vocabulary).
    pub fn new(tok: &TokenizerInfo, vocab_size: usize) -> Result<Self, String> {
        let env = TrieEnv::new(tok, vocab_size)?;
        let env: TokEnv = Arc::new(env);
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self { factory, cache: Mutex::default() })
    }

    /// A processor factory for `c`: compiled now (errors name the problem), copied per sequence.
    pub fn processor(&self, c: &Constraint) -> Result<LogitsProcessorFactory, String> {
        let key = c.cache_key();
        let cached = self.cache.lock().expect("grammar cache").parsers.get(&key).cloned();
        let parser = match cached {
            Some(p) => p,
            None => {
                let parser = self.factory.create_parser(c.grammar()?).map_err(|e| e.to_string())?;
                let parser = Arc::new(Mutex::new(parser));
                let mut cache = self.cache.lock().expect("grammar cache");
                if cache.order.len() >= GRAMMAR_CACHE_SIZE {
                    if let Some(old) = cache.order.pop_front() {
                        cache.parsers.remove(&old);
                    }
                }
                cache.order.push_back(key.clone());
                cache.parsers.insert(key, parser.clone());
                parser
            }
        };
        // Compile-time problems some grammars only report on the first mask.
        let mut probe = Matcher::new(Ok(parser.lock().expect("parser").deep_clone()));
        probe.compute_mask().map_err(|e| e.to_string())?;
        Ok(Arc::new(move || {
            let copy = parser.lock().expect("parser").deep_clone();
            Box::new(GuidedProcessor { matcher: Matcher::new(Ok(copy)), consumed: 0 }) as Box<dyn LogitsProcessor>
        }))
    }
}

/// One sequence's constraint state. It catches up on the tokens sampled since its last
/// call, so forks and recomputed (preempted) sequences need no extra bookkeeping.
struct GuidedProcessor {
    matcher: Matcher,
    consumed: usize,
}

impl LogitsProcessor for GuidedProcessor {
    fn process(&mut self, output_tokens: &[u32], logits: &mut [f32]) -> Result<(), String> {
        // A finished grammar takes no more tokens; what follows it (end-of-sequence tokens
        // generated under `ignore_eos`) is not fed to it.
        if self.consumed < output_tokens.len() && !self.matcher.is_stopped() {
            self.matcher
                .consume_tokens(&output_tokens[self.consumed..])
                .map_err(|e| format!("structured output: {e}"))?;
        }
        self.consumed = output_tokens.len();
        // Once the grammar is complete only end-of-sequence tokens remain allowed.
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| format!("structured output: {e}"))?;
        for (word, chunk) in mask.as_slice().iter().zip(logits.chunks_mut(32)) {
            if *word == u32::MAX {
                continue;
            }
            for (bit, l) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }
}

/// The tokenizer as llguidance sees it: the exact bytes of every token.
struct TrieEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TrieEnv {
    fn new(tok: &TokenizerInfo, vocab_size: usize) -> Result<Self, String> {
        let words = token_bytes(&tok.tokenizer, vocab_size)?;
        let eos = tok.eos_token_ids.first().copied().ok_or("structured outputs need an end-of-sequence token")?;
        let mut info = TokRxInfo::new(vocab_size as u32, eos);
        info.tok_bos = tok.bos_token.as_deref().and_then(|t| tok.tokenizer.token_to_id(t));
        let mut trie = TokTrie::from(&info, &words);
        if tok.eos_token_ids.len() > 1 {
            trie = trie.with_eos_tokens(&tok.eos_token_ids);
        }
        Ok(Self { trie, tokenizer: tok.tokenizer.clone() })
    }
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer.encode(s, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
        })
    }
}

/// The bytes each token id stands for, `vocab_size` entries: byte-level BPE pieces mapped
/// back through GPT-2's byte↔unicode table, SentencePiece pieces with `▁` as a space and
/// `<0xNN>` as that byte, special tokens as llguidance's marker byte + their text, and
/// unused ids (logits beyond the vocabulary) as special placeholders.
pub fn token_bytes(tokenizer: &tokenizers::Tokenizer, vocab_size: usize) -> Result<Vec<Vec<u8>>, String> {
    let decoder = tokenizer.get_decoder().map(|d| serde_json::to_string(d).unwrap_or_default()).unwrap_or_default();
    let byte_level = decoder.contains("\"ByteLevel\"");
    let unicode_to_byte: HashMap<char, u8> = gpt2_byte_chars().into_iter().map(|(b, c)| (c, b)).collect();
    let added = tokenizer.get_added_tokens_decoder();
    let mut words = vec![Vec::new(); vocab_size];
    let vocab = tokenizer.get_vocab(true);
    if vocab.len() > vocab_size {
        return Err(format!("the tokenizer has {} tokens but the model only {vocab_size} logits", vocab.len()));
    }
    for (piece, id) in vocab {
        let Some(slot) = words.get_mut(id as usize) else { continue };
        *slot = match added.get(&id) {
            Some(t) if t.special => [&[TokTrie::SPECIAL_TOKEN_MARKER], t.content.as_bytes()].concat(),
            Some(t) => t.content.as_bytes().to_vec(),
            None if byte_level => piece.chars().map(|c| unicode_to_byte.get(&c).copied().unwrap_or(b'?')).collect(),
            None => match byte_fallback(&piece) {
                Some(b) => vec![b],
                None => piece.replace('\u{2581}', " ").into_bytes(),
            },
        };
    }
    for (id, w) in words.iter_mut().enumerate() {
        if w.is_empty() {
            *w = [&[TokTrie::SPECIAL_TOKEN_MARKER], format!("<[{id}]>").as_bytes()].concat();
        }
    }
    Ok(words)
}

/// `<0x0A>` → 0x0A (SentencePiece byte-fallback tokens).
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// GPT-2's byte → printable-char table of byte-level BPE vocabularies.
fn gpt2_byte_chars() -> Vec<(u8, char)> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, b as char)
            } else {
                let c = char::from_u32(next).expect("valid code point");
                next += 1;
                (b, c)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_table_is_a_bijection() {
        let table = gpt2_byte_chars();
        let chars: std::collections::HashSet<char> = table.iter().map(|&(_, c)| c).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(table[b' ' as usize].1, 'Ġ');
        assert_eq!(table[b'\n' as usize].1, 'Ċ');
        assert_eq!(table[b'a' as usize].1, 'a');
    }

    #[test]
    fn byte_fallback_pieces() {
        assert_eq!(byte_fallback("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback("<0xZZ>"), None);
        assert_eq!(byte_fallback("hello"), None);
    }

    #[test]
    fn json_layout_is_added_unless_given() {
        let s = with_json_layout(&json!({"type": "object"})).unwrap();
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        let own = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(with_json_layout(&own).unwrap(), own);
        assert!(with_json_layout(&json!("nope")).is_err());
    }
}
