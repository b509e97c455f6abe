use anyhow::Context;
use clap::{Parser, Subcommand};
use kandle_server::config::{EngineArgs, LogFormat, ModelArgs, ServeArgs};
use kandle_server::engine::{EngineCore, EngineHandle, GenerateRequest, RequestEvent, SamplingParams};
use kandle_server::model::LoadedModel;
use std::io::Write;

#[derive(Parser)]
#[command(name = "kandle-server", version, about = "OpenAI-compatible LLM serving on candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API (and happy_vllm's extras).
    Serve(Box<ServeArgs>),
    /// Generate text for one prompt without HTTP (streams to stdout).
    Generate(GenerateArgs),
    /// Write a Hugging Face folder with a real architecture's shapes and random weights
    /// (for benchmarks on machines without the real checkpoint).
    SynthModel(SynthArgs),
    /// Fetch a Hugging Face repo or a URL into a directory (resumable, checksummed, skipped
    /// when a previous run finished); what the operator's init container runs.
    Download(kandle_server::download::DownloadArgs),
}

#[derive(clap::Args)]
struct SynthArgs {
    #[arg(long, value_enum)]
    preset: kandle_server::synth::Preset,
    #[arg(long)]
    out: std::path::PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest safetensors shard in bytes.
    #[arg(long, default_value_t = 5 << 30)]
    shard_bytes: usize,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: i64,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (fixed-length runs for timing).
    #[arg(long)]
    ignore_eos: bool,
    /// Run the same request once untimed first, so the timing line leaves out first-use
    /// costs (CUDA module loading, allocator growth).
    #[arg(long)]
    warmup: bool,
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let loaded = LoadedModel::load(&args.model.options().map_err(anyhow::Error::msg)?).context("loading the model")?;
    let tok = loaded.tokenizer.clone();
    let core = EngineCore::new(loaded, &args.engine.config())?;
    eprintln!("loaded in {:.2}s", t0.elapsed().as_secs_f64());
    let prompt = if args.chat {
        let messages = serde_json::json!([{"role": "user", "content": args.prompt}]);
        tok.apply_chat_template(&messages, true, &serde_json::Value::Null).map_err(anyhow::Error::msg)?
    } else {
        args.prompt.clone()
    };
    let ids = tok.encode(&prompt, !args.chat).map_err(anyhow::Error::msg)?;
    let params = SamplingParams {
        max_tokens: Some(args.max_tokens),
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        stop: args.stop,
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    let engine = EngineHandle::spawn(core);
    if args.warmup {
        let mut warm = engine.submit(GenerateRequest::new("cli-warmup", ids.clone(), params.clone()))?;
        while let Some(ev) = warm.blocking_recv() {
            if let RequestEvent::Error(e) = ev {
                anyhow::bail!(e);
            }
        }
    }
    let mut stream = engine.submit(GenerateRequest::new("cli-0", ids, params))?;
    let start = std::time::Instant::now();
    let mut out = std::io::stdout();
    let mut first_token = None;
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            RequestEvent::Delta(d) => {
                first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
                write!(out, "{}", d.text)?;
                out.flush()?;
            }
            RequestEvent::Finished { usage, .. } => {
                let secs = start.elapsed().as_secs_f64();
                let ttft = first_token.unwrap_or(secs);
                // Batch-1 decode time per token: everything after the first token.
                let decode_ms = (secs - ttft) * 1e3 / (usage.completion_tokens.max(2) - 1) as f64;
                eprintln!("\n[{} prompt + {} generated tokens in {secs:.2}s; first token {:.1} ms; decode {decode_ms:.2} ms/token]",
                    usage.prompt_tokens, usage.completion_tokens, ttft * 1e3);
                return Ok(());
            }
            RequestEvent::Error(e) => anyhow::bail!(e),
        }
    }
    anyhow::bail!("the engine stopped")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    // `.env` fills in what the environment does not set; clap then reads both.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("warning: ignoring .env: {e}");
        }
    }
    match Cli::parse().command {
        Command::Serve(args) => {
            init_logging(args.server.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(kandle_server::api::serve(*args))
        }
        Command::Generate(args) => {
            init_logging(LogFormat::Text);
            generate(args)
        }
        Command::Download(a) => {
            let format = match std::env::var("LOG_FORMAT").as_deref() {
                Ok("json") => LogFormat::Json,
                _ => LogFormat::Text,
            };
            init_logging(format);
            // One thread: hf-hub's chunk tasks then start in order, so what a dropped
            // connection leaves behind is a prefix, which is what its resume keeps.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(kandle_server::download::run(a))
        }
        Command::SynthModel(a) => {
            let t0 = std::time::Instant::now();
            kandle_server::synth::write(a.preset, &a.out, a.seed, a.shard_bytes)?;
            eprintln!("wrote {} in {:.1}s", a.out.display(), t0.elapsed().as_secs_f64());
            Ok(())
        }
    }
}
