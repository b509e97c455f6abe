//! The Hugging Face folder loader on small random-weight models the test writes itself
//! (config.json, tokenizer.json from the GGUF tokenizer, safetensors, sharded or not),
//! checked token-for-token against candle-transformers' llama / qwen2 / qwen3.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;
use kandle_server::engine::{EngineConfig, GenerateRequest, SamplingParams};
use kandle_server::model::ModelError;
use std::collections::HashMap;
use std::path::Path;

const VOCAB: usize = 49152;
const H: usize = 64;
const I: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV: usize = 2;

fn config(arch: &str) -> serde_json::Value {
    let mut c = serde_json::json!({
        "architectures": [arch], "hidden_size": H, "intermediate_size": I, "vocab_size": VOCAB,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512,
        "tie_word_embeddings": arch != "LlamaForCausalLM", "eos_token_id": 2, "bos_token_id": 1,
        "hidden_act": "silu", "sliding_window": 512, "max_window_layers": LAYERS, "use_sliding_window": false,
    });
    if arch == "Qwen3ForCausalLM" {
        c["head_dim"] = serde_json::json!(H / HEADS);
        c["attention_bias"] = serde_json::json!(false);
    }
    c
}

fn random_weights(arch: &str) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let hd = H / HEADS;
    let mut w = HashMap::new();
    let mut mat = |name: String, shape: &[usize], std: f64| {
        w.insert(name, Tensor::randn(0f32, std as f32, shape, &dev).unwrap());
    };
    // Large weights so logits are well separated (greedy ties would test nothing).
    mat("model.embed_tokens.weight".into(), &[VOCAB, H], 1.0);
    mat("model.norm.weight".into(), &[H], 0.2);
    if arch == "LlamaForCausalLM" {
        mat("lm_head.weight".into(), &[VOCAB, H], 1.0);
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let s = 1.0 / (H as f64).sqrt();
        mat(format!("{p}.self_attn.q_proj.weight"), &[HEADS * hd, H], s * 2.0);
        mat(format!("{p}.self_attn.k_proj.weight"), &[KV * hd, H], s * 2.0);
        mat(format!("{p}.self_attn.v_proj.weight"), &[KV * hd, H], s);
        mat(format!("{p}.self_attn.o_proj.weight"), &[H, HEADS * hd], s);
        mat(format!("{p}.mlp.gate_proj.weight"), &[I, H], s);
        mat(format!("{p}.mlp.up_proj.weight"), &[I, H], s);
        mat(format!("{p}.mlp.down_proj.weight"), &[H, I], 1.0 / (I as f64).sqrt());
        mat(format!("{p}.input_layernorm.weight"), &[H], 0.2);
        mat(format!("{p}.post_attention_layernorm.weight"), &[H], 0.2);
        if arch == "Qwen2ForCausalLM" {
            for (n, d) in [("q_proj", HEADS * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)] {
                mat(format!("{p}.self_attn.{n}.bias"), &[d], 0.5);
            }
        }
        if arch == "Qwen3ForCausalLM" {
            mat(format!("{p}.self_attn.q_norm.weight"), &[hd], 0.2);
            mat(format!("{p}.self_attn.k_norm.weight"), &[hd], 0.2);
        }
    }
    // Norm weights around 1 like trained models.
    for (k, v) in w.iter_mut() {
        if k.ends_with("norm.weight") {
            *v = (v.clone() + 1.0).unwrap();
        }
    }
    w
}

/// Writes a model folder; `shards` > 1 writes a sharded checkpoint with its index.
fn write_folder(dir: &Path, arch: &str, shards: usize) -> HashMap<String, Tensor> {
    std::fs::write(dir.join("config.json"), config(arch).to_string()).unwrap();
    let tok = load(&options(gguf_path())).tokenizer;
    tok.tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::json!({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    }).to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [2, 0], "temperature": 0.7, "top_p": 0.9}"#).unwrap();
    let weights = random_weights(arch);
    if shards == 1 {
        candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    } else {
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        let mut map = serde_json::Map::new();
        for (s, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
            let part: HashMap<String, Tensor> = chunk.iter().map(|n| ((*n).clone(), weights[*n].clone())).collect();
            candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
            for n in chunk {
                map.insert((*n).clone(), serde_json::json!(file));
            }
        }
        std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string()).unwrap();
    }
    weights
}

fn reference(dir: &Path, arch: &str, prompt: &[u32], n: usize) -> Vec<u32> {
    let files = vec![dir.join("model.safetensors")];
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap() };
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    use candle_transformers::models::{llama, qwen2, qwen3};
    match arch {
        "LlamaForCausalLM" => {
            let cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
            let cfg = cfg.into_config(false);
            let model = llama::Llama::load(vb, &cfg).unwrap();
            let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
            greedy_loop(prompt, n, |ids, pos| model.forward(ids, pos, &mut cache))
        }
        "Qwen2ForCausalLM" => {
            let cfg: qwen2::Config = serde_json::from_str(&text).unwrap();
            let mut model = qwen2::ModelForCausalLM::new(&cfg, vb).unwrap();
            greedy_loop(prompt, n, |ids, pos| model.forward(ids, pos))
        }
        _ => {
            let cfg: qwen3::Config = serde_json::from_str(&text).unwrap();
            let mut model = qwen3::ModelForCausalLM::new(&cfg, vb).unwrap();
            greedy_loop(prompt, n, |ids, pos| model.forward(ids, pos))
        }
    }
}

fn check_arch(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), arch, 1);
    let loaded = load(&options(dir.path().to_path_buf()));
    assert_eq!(loaded.tokenizer.eos_token_ids, vec![2, 0], "eos from tokenizer_config + config + generation_config");
    assert_eq!(loaded.generation_defaults.temperature, Some(0.7));
    assert!(loaded.tokenizer.chat_template.is_some());
    let prompts: Vec<Vec<u32>> = ["Hello there, how are", "The quick brown fox jumps over the lazy dog because", "x"]
        .iter().map(|p| loaded.tokenizer.encode(p, false).unwrap()).collect();
    let mut core = engine(loaded, EngineConfig { max_num_batched_tokens: 8, ..EngineConfig::default() });
    let arrivals = prompts.iter().enumerate().map(|(i, p)| (i * 2, GenerateRequest::new(format!("{i}"), p.clone(),
        SamplingParams { max_tokens: Some(15), ignore_eos: true, ..SamplingParams::greedy() }))).collect();
    let out = run_schedule(&mut core, arrivals);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(out[i].tokens(0), reference(dir.path(), arch, p, 15), "{arch} prompt {i}");
    }
}

#[test]
fn llama_folder_matches_candle_transformers_llama() {
    check_arch("LlamaForCausalLM");
}

#[test]
fn qwen2_folder_with_qkv_bias_matches_reference() {
    check_arch("Qwen2ForCausalLM");
}

#[test]
fn qwen3_folder_with_qk_norm_matches_reference() {
    check_arch("Qwen3ForCausalLM");
}

#[test]
fn sharded_checkpoint_loads_the_same_model() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let w = write_folder(one.path(), "LlamaForCausalLM", 1);
    write_folder(two.path(), "LlamaForCausalLM", 3);
    // Same tensors in both: rewrite the shards from the first folder's weights.
    let idx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(two.path().join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut by_file: HashMap<String, HashMap<String, Tensor>> = HashMap::new();
    for (name, file) in idx["weight_map"].as_object().unwrap() {
        by_file.entry(file.as_str().unwrap().into()).or_default().insert(name.clone(), w[name].clone());
    }
    for (file, part) in by_file {
        candle_core::safetensors::save(&part, two.path().join(file)).unwrap();
    }
    let run = |dir: &Path| {
        let loaded = load(&options(dir.to_path_buf()));
        let prompt = loaded.tokenizer.encode("Sharded checkpoints", false).unwrap();
        let mut core = engine(loaded, EngineConfig::default());
        run_schedule(&mut core, vec![(0, GenerateRequest::new("s", prompt,
            SamplingParams { max_tokens: Some(8), ignore_eos: true, ..SamplingParams::greedy() }))])[0].tokens(0)
    };
    assert_eq!(run(one.path()), run(two.path()));
}

#[test]
fn loader_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &Path| kandle_server::model::LoadedModel::load(&options(p.to_path_buf())).err().expect("load must fail");
    assert!(matches!(err(&dir.path().join("nope")), ModelError::NotFound(_)));
    assert!(matches!(err(dir.path()), ModelError::MissingFile(p) if p.ends_with("config.json")));
    let w = write_folder(dir.path(), "LlamaForCausalLM", 1);
    // Wrong shape: named, with both shapes.
    let mut bad = w.clone();
    bad.insert("model.layers.1.mlp.up_proj.weight".into(), Tensor::zeros((I + 1, H), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&bad, dir.path().join("model.safetensors")).unwrap();
    let e = err(dir.path());
    assert!(e.to_string().contains("model.layers.1.mlp.up_proj.weight") && e.to_string().contains("129"), "{e}");
    // Missing tensor: named.
    let mut missing = w.clone();
    missing.remove("model.layers.0.self_attn.k_proj.weight");
    candle_core::safetensors::save(&missing, dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(err(dir.path()), ModelError::MissingTensor(n) if n == "model.layers.0.self_attn.k_proj.weight"));
    // bf16 on CPU: a clear dtype error.
    candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).unwrap();
    let e = kandle_server::model::LoadedModel::load(&kandle_server::model::ModelOptions {
        dtype: kandle_server::model::DTypeArg::Bf16, ..options(dir.path().to_path_buf()) }).err().unwrap();
    assert!(matches!(e, ModelError::UnsupportedDType { .. }), "{e}");
    // Unsupported architecture lists the supported ones.
    std::fs::write(dir.path().join("config.json"), config("FalconForCausalLM").to_string()).unwrap();
    let e = err(dir.path()).to_string();
    assert!(e.contains("FalconForCausalLM") && e.contains("Qwen2ForCausalLM"), "{e}");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config("LlamaForCausalLM").to_string()).unwrap();
    assert!(matches!(err(dir.path()), ModelError::MissingFile(p) if p.ends_with("tokenizer.json")));
}

#[test]
fn synthesised_models_load_and_match_the_reference() {
    use kandle_server::synth::{write, Preset};
    let (one, many) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(Preset::TinyLlama, one.path(), 7, 1 << 30).unwrap();
    write(Preset::TinyLlama, many.path(), 7, 200_000).unwrap();
    assert!(many.path().join("model.safetensors.index.json").exists());
    let run = |dir: &Path| {
        let loaded = load(&options(dir.to_path_buf()));
        assert_eq!(loaded.tokenizer.eos_token_ids, vec![1023, 1020]);
        let prompt = loaded.tokenizer.apply_chat_template(&serde_json::json!([{"role": "user", "content": "Hi!"}]), true,
            &serde_json::Value::Null).unwrap();
        let prompt = loaded.tokenizer.encode(&prompt, false).unwrap();
        assert_eq!(prompt[0], 1019, "the template starts with bos");
        let mut core = engine(loaded, EngineConfig::default());
        let out = run_schedule(&mut core, vec![(0, GenerateRequest::new("s", prompt.clone(),
            SamplingParams { max_tokens: Some(12), ignore_eos: true, ..SamplingParams::greedy() }))]);
        (prompt, out[0].tokens(0))
    };
    let (prompt, tokens) = run(one.path());
    assert_eq!(tokens, reference(one.path(), "LlamaForCausalLM", &prompt, 12));
    assert_eq!(run(many.path()).1, tokens);
}
