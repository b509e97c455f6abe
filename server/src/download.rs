//! `kandle-server download`: fetches a model into a directory before the server starts (the
//! operator runs it as an init container for Hugging Face and URL model sources).
//!
//! - Hugging Face repos go through the `hf-hub` crate (`HF_ENDPOINT`, `HF_TOKEN` honoured).
//!   Its cache lives inside the destination (`.cache/`), so a restarted container resumes a
//!   file at its last completed chunk, and finished files are moved out of it into place.
//! - URLs (a `.gguf` file) are fetched with ranged requests into `NAME.part`, resuming from
//!   its length after a restart.
//! - Files are checked against the SHA-256 the hub publishes (LFS files; for URLs the
//!   `X-Linked-Etag`/`ETag` when it is a SHA-256, or `--sha256`) before they are put in place.
//! - A marker file records a finished download, so restarts (and every later pod start on
//!   the same volume) do not fetch anything again.

use anyhow::{bail, Context};
use hf_hub::api::tokio::{Api, ApiBuilder, ApiRepo, Progress};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Written last, into the destination, when everything is in place.
pub const MARKER: &str = ".kandle-download.json";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["repo", "url"])))]
pub struct DownloadArgs {
    /// Hugging Face repo id (`org/name`).
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit of the repo.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// An http(s) URL of one file (e.g. a `.gguf`).
    #[arg(long)]
    pub url: Option<String>,
    /// File name for a URL download (default: the URL's last path segment).
    #[arg(long, requires = "url")]
    pub filename: Option<String>,
    /// Expected SHA-256 of a URL download (hex).
    #[arg(long, requires = "url")]
    pub sha256: Option<String>,
    /// Directory to download into (created if missing).
    #[arg(long)]
    pub dest: PathBuf,
    /// Only repo files matching these globs (default: what the server loads — configs,
    /// tokenizer, safetensors weights — skipping other frameworks' weight formats).
    #[arg(long)]
    pub include: Vec<String>,
    /// Skip repo files matching these globs.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Bytes per ranged request; a restarted download resumes at the last finished chunk.
    #[arg(long, default_value_t = 10_000_000)]
    pub chunk_size: usize,
    /// Download again even if the marker says it is done.
    #[arg(long)]
    pub force: bool,
}

/// What the marker file holds: enough to tell whether it describes this request.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Marker {
    source: String,
    /// The commit the files came from (repos), or the checksum (URLs) when known.
    version: Option<String>,
    files: Vec<String>,
}

pub async fn run(args: DownloadArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    tokio::fs::create_dir_all(&args.dest).await.with_context(|| format!("creating {}", args.dest.display()))?;
    let source = match (&args.repo, &args.url) {
        (Some(repo), _) => format!("hf://{repo}@{}", args.revision),
        (_, Some(url)) => url.clone(),
        _ => unreachable!("clap requires one source"),
    };
    let marker_path = args.dest.join(MARKER);
    if !args.force {
        if let Some(m) = read_marker(&marker_path).await {
            if m.source == source {
                tracing::info!(%source, dest = %args.dest.display(), files = m.files.len(), "already downloaded (marker present)");
                return Ok(());
            }
            tracing::info!(old = %m.source, new = %source, "marker names another source; downloading again");
        }
    }
    let _ = tokio::fs::remove_file(&marker_path).await;
    let marker = match (&args.repo, &args.url) {
        (Some(repo), _) => download_repo(repo, &args).await?,
        (_, Some(url)) => download_url(url, &args).await?,
        _ => unreachable!(),
    };
    let marker = Marker { source, ..marker };
    tokio::fs::write(&marker_path, serde_json::to_vec_pretty(&marker)?).await?;
    tracing::info!(dest = %args.dest.display(), files = marker.files.len(), secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "download complete");
    Ok(())
}

async fn read_marker(path: &Path) -> Option<Marker> {
    serde_json::from_slice(&tokio::fs::read(path).await.ok()?).ok()
}

fn hf_token() -> Option<String> {
    ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"].iter().find_map(|k| std::env::var(k).ok().filter(|t| !t.trim().is_empty()))
}

fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').into()
}

/// The hub's `?blobs=true` repo description: file sizes and, for LFS files, their SHA-256.
#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
}

async fn download_repo(repo_id: &str, args: &DownloadArgs) -> anyhow::Result<Marker> {
    let cache_dir = args.dest.join(".cache");
    let api: Api = ApiBuilder::from_cache(Cache::new(cache_dir.clone()))
        .with_endpoint(hf_endpoint())
        .with_token(hf_token())
        .with_progress(false)
        .with_chunk_size(Some(args.chunk_size.max(1)))
        .build()?;
    let repo = api.repo(Repo::with_revision(repo_id.into(), RepoType::Model, args.revision.clone()));
    let response = repo.info_request().query(&[("blobs", "true")]).send().await
        .with_context(|| format!("contacting {}", hf_endpoint()))?;
    match response.status().as_u16() {
        200 => {}
        401 | 403 => bail!("access to {repo_id} denied ({}): set HF_TOKEN to a token that can read it (the repo may be gated)",
            response.status()),
        404 => bail!("{repo_id} (revision {}) not found on {}", args.revision, hf_endpoint()),
        _ => bail!("{}: listing {repo_id} failed: {}", hf_endpoint(), response.status()),
    }
    let info: RepoInfo = response.json().await.context("reading the repo listing")?;
    let files = select_files(&info.siblings, &args.include, &args.exclude)?;
    if files.is_empty() {
        bail!("{repo_id}: no files to download (repo has {} files; check --include/--exclude)", info.siblings.len());
    }
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    tracing::info!(repo = repo_id, revision = %args.revision, commit = %info.sha, files = files.len(),
        gib = format!("{:.2}", total as f64 / (1u64 << 30) as f64), "downloading");
    for f in &files {
        fetch_repo_file(&repo, f, &args.dest).await?;
    }
    // Everything was moved out of the cache; what is left is pointers and locks.
    let _ = tokio::fs::remove_dir_all(&cache_dir).await;
    Ok(Marker { source: String::new(), version: Some(info.sha), files: files.iter().map(|f| f.rfilename.clone()).collect() })
}

/// Repo files the server needs. Default: everything except weight formats of other
/// frameworks (and the `original/` checkpoints Meta repos carry), as vLLM does; `.bin`
/// weights only when the repo has no safetensors.
fn select_files<'a>(siblings: &'a [Sibling], include: &[String], exclude: &[String]) -> anyhow::Result<Vec<&'a Sibling>> {
    let set = |globs: &[String]| -> anyhow::Result<globset::GlobSet> {
        let mut b = globset::GlobSetBuilder::new();
        for g in globs {
            b.add(globset::Glob::new(g).with_context(|| format!("bad glob {g:?}"))?);
        }
        Ok(b.build()?)
    };
    let (include, exclude) = (set(include)?, set(exclude)?);
    let has_safetensors = siblings.iter().any(|s| s.rfilename.ends_with(".safetensors"));
    let default_skip = |name: &str| {
        let other = [".pth", ".pt", ".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel", ".gguf"];
        name.starts_with("original/") || name.starts_with("onnx/") || name.starts_with("openvino/")
            || name.starts_with("coreml/") || other.iter().any(|e| name.ends_with(e))
            || (has_safetensors && name.ends_with(".bin"))
    };
    Ok(siblings.iter()
        .filter(|s| if include.is_empty() { !default_skip(&s.rfilename) } else { include.is_match(&s.rfilename) })
        .filter(|s| !exclude.is_match(&s.rfilename) && !s.rfilename.starts_with('.') && !s.rfilename.contains("/."))
        .collect())
}

async fn fetch_repo_file(repo: &ApiRepo, file: &Sibling, dest: &Path) -> anyhow::Result<()> {
    let name = &file.rfilename;
    if name.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("refusing repo file name {name:?}");
    }
    let target = dest.join(name);
    // Finished files are only ever renamed into place after their check, so one with the
    // listed size is complete.
    if let (Ok(meta), Some(size)) = (tokio::fs::metadata(&target).await, file.size) {
        if meta.len() == size {
            tracing::info!(file = %name, "already present");
            return Ok(());
        }
    }
    let pointer = repo.download_with_progress(name, LogProgress::default()).await
        .map_err(|e| anyhow::anyhow!("downloading {name}: {e}"))?;
    // The cache's pointer is a symlink to the blob; move the blob itself into place.
    let blob = tokio::fs::canonicalize(&pointer).await?;
    if let Some(expected) = file.lfs.as_ref().map(|l| l.sha256.to_lowercase()) {
        let actual = sha256_file(&blob).await?;
        if actual != expected {
            let _ = tokio::fs::remove_file(&blob).await;
            bail!("{name}: checksum mismatch (expected sha256 {expected}, got {actual}); the partial file was removed");
        }
    }
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    tokio::fs::rename(&blob, &target).await.with_context(|| format!("moving {name} into place"))?;
    let _ = tokio::fs::remove_file(&pointer).await;
    Ok(())
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(format!("{:x}", h.finalize()))
    }).await?
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The file name a URL download gets by default: the last path segment without the query.
pub fn url_file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    path.rsplit('/').next().filter(|n| !n.is_empty() && *n != "..").map(str::to_string)
}

async fn download_url(url: &str, args: &DownloadArgs) -> anyhow::Result<Marker> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must be http(s): {url}");
    }
    let name = match &args.filename {
        Some(n) => n.clone(),
        None => url_file_name(url).with_context(|| format!("cannot tell a file name from {url}; pass --filename"))?,
    };
    if name.contains('/') || name.starts_with('.') {
        bail!("bad file name {name:?}");
    }
    let target = args.dest.join(&name);
    let part = args.dest.join(format!("{name}.part"));
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).build()?;
    let mut request = client.get(url);
    // Gated files on the hub need the token; never send it anywhere else.
    if let Some(token) = hf_token().filter(|_| url.starts_with(&hf_endpoint())) {
        request = request.bearer_auth(token);
    }
    let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        tracing::info!(file = %name, bytes = have, "resuming");
    }
    let mut response = request.send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
        // The part file already holds everything; the checksum below decides.
        tracing::info!(file = %name, "part file already complete");
    } else if !status.is_success() {
        match status.as_u16() {
            401 | 403 => bail!("GET {url}: {status} (for gated files on the hub set HF_TOKEN)"),
            _ => bail!("GET {url}: {status}"),
        }
    }
    let header = |k: &str| response.headers().get(k).and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_lowercase());
    let published = header("x-linked-etag").or_else(|| header("etag")).filter(|e| is_sha256(e));
    let expected = args.sha256.as_ref().map(|s| s.to_lowercase()).or(published);
    if status.is_success() {
        if !resumed {
            have = 0;
        }
        let total = response.content_length().map(|n| n + have);
        let mut out = tokio::fs::OpenOptions::new().create(true).write(true).append(resumed).truncate(!resumed)
            .open(&part).await?;
        let progress = LogProgress::default();
        progress.start(&name, total, have);
        while let Some(chunk) = response.chunk().await.with_context(|| format!("reading {url} (rerun to resume)"))? {
            out.write_all(&chunk).await?;
            progress.advance(chunk.len() as u64);
        }
        out.flush().await?;
        out.sync_all().await?;
        progress.done();
    }
    if let Some(expected) = &expected {
        let actual = sha256_file(&part).await?;
        if &actual != expected {
            let _ = tokio::fs::remove_file(&part).await;
            bail!("{name}: checksum mismatch (expected sha256 {expected}, got {actual}); the partial file was removed");
        }
    }
    tokio::fs::rename(&part, &target).await?;
    Ok(Marker { source: String::new(), version: expected, files: vec![name] })
}

/// Progress as log lines (an init container's log, not a terminal): every 10% or 10 s.
/// Shared state because hf-hub hands a clone to each chunk of a file.
#[derive(Clone, Default)]
struct LogProgress(std::sync::Arc<std::sync::Mutex<ProgressState>>);

#[derive(Default)]
struct ProgressState {
    file: String,
    total: Option<u64>,
    done: u64,
    last_pct: u64,
    last_log: Option<Instant>,
    started: Option<Instant>,
}

impl LogProgress {
    fn start(&self, file: &str, total: Option<u64>, already: u64) {
        let now = Some(Instant::now());
        *self.0.lock().unwrap() = ProgressState { file: file.into(), total, done: already, started: now, last_log: now, last_pct: 0 };
        tracing::info!(file, bytes = total, "fetching");
    }

    fn advance(&self, n: u64) {
        let mut p = self.0.lock().unwrap();
        p.done += n;
        let pct = p.total.filter(|t| *t > 0).map_or(0, |t| p.done * 100 / t);
        let due = p.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if pct >= p.last_pct + 10 || due {
            p.last_pct = pct - pct % 10;
            p.last_log = Some(Instant::now());
            tracing::info!(file = %p.file, done = p.done, total = p.total, "{pct}%");
        }
    }

    fn done(&self) {
        let p = self.0.lock().unwrap();
        let secs = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        tracing::info!(file = %p.file, bytes = p.done, mib_per_s = format!("{:.1}", p.done as f64 / (1 << 20) as f64 / secs.max(1e-3)),
            "fetched");
    }
}

impl Progress for LogProgress {
    async fn init(&mut self, size: usize, filename: &str) {
        self.start(filename, Some(size as u64), 0);
    }
    async fn update(&mut self, size: usize) {
        self.advance(size as u64);
    }
    async fn finish(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(name: &str) -> Sibling {
        Sibling { rfilename: name.into(), size: None, lfs: None }
    }

    #[test]
    fn default_selection_skips_other_formats() {
        let s: Vec<Sibling> = ["config.json", "model.safetensors", "pytorch_model.bin", "original/consolidated.00.pth",
            "tokenizer.json", "onnx/model.onnx", ".gitattributes", "README.md"].into_iter().map(sib).collect();
        let got: Vec<_> = select_files(&s, &[], &[]).unwrap().into_iter().map(|s| s.rfilename.as_str()).collect();
        assert_eq!(got, ["config.json", "model.safetensors", "tokenizer.json", "README.md"]);
        // Without safetensors the .bin weights are what there is.
        let s: Vec<Sibling> = ["config.json", "pytorch_model.bin"].into_iter().map(sib).collect();
        assert_eq!(select_files(&s, &[], &[]).unwrap().len(), 2);
    }

    #[test]
    fn include_and_exclude_globs() {
        let s: Vec<Sibling> = ["a.Q4_K_M.gguf", "a.Q8_0.gguf", "config.json"].into_iter().map(sib).collect();
        let got: Vec<_> = select_files(&s, &["*Q4_K_M*".into()], &[]).unwrap().into_iter().map(|s| s.rfilename.as_str()).collect();
        assert_eq!(got, ["a.Q4_K_M.gguf"]);
        let got = select_files(&s, &[], &["*.json".into()]).unwrap();
        assert!(got.is_empty(), "gguf skipped by default, json excluded");
        assert!(select_files(&s, &["[".into()], &[]).is_err());
    }

    #[test]
    fn url_names() {
        assert_eq!(url_file_name("https://h/x/m.Q4_1.gguf?download=true").as_deref(), Some("m.Q4_1.gguf"));
        assert_eq!(url_file_name("https://h/").as_deref(), None);
        assert_eq!(url_file_name("https://h").as_deref(), None);
    }
}
