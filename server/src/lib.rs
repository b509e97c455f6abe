//! kandle-server: an OpenAI-compatible LLM server on candle with continuous batching over a
//! paged KV cache.

pub mod engine;
pub mod model;
pub mod tokenizer;
pub mod config;
