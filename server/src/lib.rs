//! kandle-server: an OpenAI-compatible LLM server on candle with continuous batching over a
//! paged KV cache.

pub mod api;
pub mod config;
pub mod download;
pub mod embed;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod synth;
pub mod tokenizer;
