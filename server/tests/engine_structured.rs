//! Structured outputs inside the engine on the real SmolLM2 tokenizer and model: the token
//! trie spells every token exactly, constrained sequences obey their grammar while sharing
//! batches with free ones, and free ones are not disturbed by the company.

mod common;

use common::*;
use kandle_server::engine::constraint::{token_bytes, Constraint, Guidance};
use kandle_server::engine::{EngineConfig, GenerateRequest, SamplingParams};

fn core() -> kandle_server::engine::EngineCore {
    let cfg = EngineConfig { max_num_batched_tokens: 32, max_num_seqs: 16, kv_cache_memory: 256 << 20, ..EngineConfig::default() };
    engine(load(&kandle_server::model::ModelOptions { max_model_len: Some(2048), ..options(gguf_path()) }), cfg)
}

#[test]
fn token_bytes_spell_the_text_exactly() {
    let tok = load(&options(gguf_path())).tokenizer;
    let vocab = tok.tokenizer.get_vocab_size(true);
    let words = token_bytes(&tok.tokenizer, vocab + 7).unwrap();
    assert_eq!(words.len(), vocab + 7, "padded to the logits width");
    for text in ["Hello, world!", "  leading spaces\nand\ttabs", "naïve café — 東京 🎉", "{\"a\": [1, 2.5e-3]}"] {
        let ids = tok.encode(text, false).unwrap();
        let spelled: Vec<u8> = ids.iter().flat_map(|&i| words[i as usize].clone()).collect();
        assert_eq!(String::from_utf8(spelled).unwrap(), text);
    }
    let eos = tok.eos_token_ids[0] as usize;
    assert_eq!(words[eos][0], 0xff, "special tokens carry llguidance's marker");
}

#[test]
fn constrained_and_free_sequences_share_batches() {
    let loaded = load(&options(gguf_path()));
    let guidance = Guidance::new(&loaded.tokenizer, loaded.model.config().vocab_size).unwrap();
    let tok = loaded.tokenizer.clone();
    let encode = |t: &str| tok.encode(t, true).unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
        "year": {"type": "integer", "minimum": 1800, "maximum": 1900}}, "required": ["name", "year"],
        "additionalProperties": false});
    let json = guidance.processor(&Constraint::JsonSchema(schema)).unwrap();
    let digits = guidance.processor(&Constraint::Regex("[0-9]{4}-[0-9]{2}".into())).unwrap();
    let sampled = |seed, n| SamplingParams { temperature: 0.8, seed: Some(seed), n, max_tokens: Some(60), ..SamplingParams::default() };
    let free = || GenerateRequest::new("free", encode("The capital of France is"),
        SamplingParams { max_tokens: Some(16), ignore_eos: true, ..SamplingParams::greedy() });
    let alone = run_schedule(&mut core(), vec![(0, free())]);
    let mut a = GenerateRequest::new("json", encode("Ada Lovelace as JSON:"), sampled(1, 3));
    a.logits_processors = vec![json];
    let mut b = GenerateRequest::new("regex", encode("Today's date:"), sampled(2, 2));
    b.logits_processors = vec![digits];
    let out = run_schedule(&mut core(), vec![(0, a), (1, free()), (2, b)]);
    assert_eq!(out[1].tokens(0), alone[0].tokens(0), "a free sequence is unchanged by constrained company");
    for i in 0..3 {
        let v: serde_json::Value = serde_json::from_str(&out[0].text(i)).unwrap_or_else(|e| panic!("{e}: {}", out[0].text(i)));
        assert!(v["name"].is_string() && (1800..=1900).contains(&v["year"].as_i64().unwrap()), "{v}");
    }
    for i in 0..2 {
        let t = out[2].text(i);
        assert!(t.len() == 7 && t.as_bytes()[4] == b'-' && t.chars().filter(char::is_ascii_digit).count() == 6, "{t}");
    }
    // With ignore_eos a finished grammar keeps the sequence on end-of-sequence tokens until
    // max_tokens instead of failing it.
    let mut c = GenerateRequest::new("done", encode("Answer:"),
        SamplingParams { max_tokens: Some(6), ignore_eos: true, ..SamplingParams::greedy() });
    c.logits_processors = vec![guidance.processor(&Constraint::Choice(vec!["yes".into(), "no".into()])).unwrap()];
    let out = run_schedule(&mut core(), vec![(0, c)]);
    assert_eq!(out[0].tokens(0).len(), 6);
    assert!(["yes", "no"].contains(&out[0].text(0).as_str()), "{:?}", out[0].text(0));
    // Invalid constraints fail at compile time with a message.
    assert!(guidance.processor(&Constraint::Regex("(".into())).is_err());
    assert!(guidance.processor(&Constraint::Grammar("start: nowhere".into())).is_err());
}
