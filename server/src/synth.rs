//! Model synthesiser for benchmarks: writes a Hugging Face folder with a real architecture's
//! exact shapes and random weights (and a byte-level BPE tokenizer of the right vocabulary
//! size), loadable by the normal loader. Real 8B checkpoints cannot be brought onto the
//! machines we benchmark on; the speed of a forward pass does not depend on the values.

use anyhow::Context;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    #[value(name = "llama-3.1-8b")]
    Llama31_8b,
    #[value(name = "llama-3.2-1b")]
    Llama32_1b,
    #[value(name = "qwen2.5-0.5b")]
    Qwen25_05b,
    /// A few MB, for tests.
    #[value(name = "tiny-llama")]
    TinyLlama,
}

/// The config.json of each preset, as the published checkpoints have it.
pub fn config(preset: Preset) -> Value {
    let llama3_rope = |factor: f32| json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let mut c = match preset {
        Preset::Llama31_8b => json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": llama3_rope(8.0), "rms_norm_eps": 1e-5, "tie_word_embeddings": false}),
        Preset::Llama32_1b => json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": llama3_rope(32.0), "rms_norm_eps": 1e-5, "tie_word_embeddings": true}),
        Preset::Qwen25_05b => json!({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "vocab_size": 151936, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": true}),
        Preset::TinyLlama => json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 1024, "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false}),
    };
    let vocab = c["vocab_size"].as_u64().expect("set above") as u32;
    let m = c.as_object_mut().expect("an object");
    m.insert("model_type".into(), json!(if preset == Preset::Qwen25_05b { "qwen2" } else { "llama" }));
    m.insert("torch_dtype".into(), json!("bfloat16"));
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("bos_token_id".into(), json!(vocab - SPECIALS.len() as u32));
    m.insert("eos_token_id".into(), json!([vocab - 1, vocab - 4]));
    c
}

/// Special tokens, placed at the end of the vocabulary (Llama 3's names).
const SPECIALS: [&str; 5] = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];
const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n\
{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// GPT-2's byte → printable character map that byte-level BPE vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("valid")
            }
        })
        .collect()
}

/// A byte-level BPE with exactly `vocab` ids: the 256 bytes, then merges of existing tokens
/// with single bytes (each merge's parts exist before it), then the special tokens.
pub fn tokenizer_json(vocab: usize) -> Value {
    let bytes: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let regular = vocab - SPECIALS.len();
    let mut tokens = bytes.clone();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = vec![];
    let mut left = 0;
    'outer: while tokens.len() < regular {
        let a = tokens[left].clone();
        left += 1;
        // Printable bytes first so common text becomes multi-byte tokens.
        for b in bytes.iter().skip(32).chain(bytes.iter().take(32)) {
            if tokens.len() == regular {
                break 'outer;
            }
            let t = format!("{a}{b}");
            if seen.insert(t.clone()) {
                merges.push(format!("{a} {b}"));
                tokens.push(t);
            }
        }
    }
    let vocab_map: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Value> = SPECIALS.iter().enumerate().map(|(i, s)| json!({"id": regular + i, "content": s,
        "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})).collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merges},
    })
}

/// Every tensor of the checkpoint with its shape, in Hugging Face names.
fn tensors(c: &Value) -> Vec<(String, Vec<usize>)> {
    let get = |k: &str| c[k].as_u64().expect("preset field") as usize;
    let (h, inter, vocab) = (get("hidden_size"), get("intermediate_size"), get("vocab_size"));
    let (nh, nkv) = (get("num_attention_heads"), get("num_key_value_heads"));
    let hd = c["head_dim"].as_u64().map_or(h / nh, |d| d as usize);
    let bias = c["architectures"][0] == "Qwen2ForCausalLM";
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for i in 0..get("num_hidden_layers") {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        for (name, rows) in [("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)] {
            out.push((format!("{p}.self_attn.{name}.weight"), vec![rows, h]));
            if bias {
                out.push((format!("{p}.self_attn.{name}.bias"), vec![rows]));
            }
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, nh * hd]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![inter, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, inter]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if c["tie_word_embeddings"] != true {
        out.push(("lm_head.weight".to_string(), vec![vocab, h]));
    }
    out
}

/// bf16 values of one tensor: norm weights 1, everything else uniform with std 0.02 (the
/// usual init), from a counter-based generator so shards fill in parallel, reproducibly.
fn fill(name: &str, seed: u64, out: &mut [u8]) {
    let ones = name.ends_with("norm.weight");
    let key = name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    out.par_chunks_mut(2 << 16).enumerate().for_each(|(chunk, bytes)| {
        let mut state = key ^ (chunk as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for v in bytes.chunks_exact_mut(2) {
            let x = if ones {
                1.0f32
            } else {
                // splitmix64 → uniform in [-a, a) with a = 0.02·√3 (std 0.02).
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.034_641
            };
            v.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
        }
    });
}

/// Writes the folder: config.json, generation_config.json, tokenizer.json,
/// tokenizer_config.json and bf16 safetensors shards of at most `shard_bytes` with an index.
pub fn write(preset: Preset, out: &Path, seed: u64, shard_bytes: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let c = config(preset);
    let vocab = c["vocab_size"].as_u64().expect("set") as usize;
    let put = |name: &str, v: &Value| -> anyhow::Result<()> {
        std::fs::write(out.join(name), serde_json::to_vec_pretty(v)?).with_context(|| format!("writing {name}"))
    };
    put("config.json", &c)?;
    put("generation_config.json", &json!({"bos_token_id": c["bos_token_id"], "eos_token_id": c["eos_token_id"]}))?;
    std::fs::write(out.join("tokenizer.json"), tokenizer_json(vocab).to_string()).context("writing tokenizer.json")?;
    put("tokenizer_config.json", &json!({"bos_token": SPECIALS[0], "eos_token": SPECIALS[4],
        "chat_template": CHAT_TEMPLATE, "model_max_length": c["max_position_embeddings"]}))?;

    // Group tensors into shards, then stream each shard: header, then every tensor's bytes.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut size = 0;
    for (name, shape) in tensors(&c) {
        let bytes = shape.iter().product::<usize>() * 2;
        if size > 0 && size + bytes > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard").push((name, shape));
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0;
        for (name, shape) in shard {
            let bytes = shape.iter().product::<usize>() * 2;
            header.insert(name.clone(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
            weight_map.insert(name.clone(), json!(file));
        }
        let mut header = serde_json::to_vec(&Value::Object(header))?;
        header.resize(header.len().next_multiple_of(8), b' ');
        let path = out.join(&file);
        let mut w = std::io::BufWriter::with_capacity(1 << 24, std::fs::File::create(&path)
            .with_context(|| format!("creating {}", path.display()))?);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut buf = vec![];
        for (name, shape) in shard {
            buf.resize(shape.iter().product::<usize>() * 2, 0);
            fill(name, seed, &mut buf);
            w.write_all(&buf)?;
        }
        w.flush()?;
        total += offset;
    }
    if n > 1 {
        put("model.safetensors.index.json", &json!({"metadata": {"total_size": total}, "weight_map": weight_map}))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_synthetic_tokenizer_has_the_vocab_size_and_round_trips_text() {
        let spec = tokenizer_json(1024).to_string();
        let tok: tokenizers::Tokenizer = spec.parse().unwrap();
        assert_eq!(tok.get_vocab_size(true), 1024);
        let text = "Hello, world! Ünïcödé ✓ <|eot_id|>";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert!(ids.contains(&1023));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn presets_have_the_published_parameter_counts() {
        let params = |p| tensors(&config(p)).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>();
        assert_eq!(params(Preset::Llama31_8b), 8_030_261_248);
        assert_eq!(params(Preset::Llama32_1b), 1_235_814_400);
        assert_eq!(params(Preset::Qwen25_05b), 494_032_768);
    }
}
