//! `kandle-server download` against a local HTTP server that answers the way the Hugging Face
//! hub does (repo listing with `?blobs=true`, `resolve/` with ranges, `X-Repo-Commit`,
//! `X-Linked-Etag`, gated access), including connections that drop mid-file.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use sha2::{Digest, Sha256};
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Hub {
    /// Repo files in listing order: (name, bytes, stored with LFS).
    files: Vec<(String, Vec<u8>, bool)>,
    token: Option<String>,
    /// "path range" of every file request (ranges as sent, "-" when none).
    requests: Vec<String>,
    /// (path, range start): the next request starting there sends half its bytes, then drops.
    drop_once: BTreeSet<(String, u64)>,
    /// Files whose listed checksum does not match what is served.
    corrupt: BTreeSet<String>,
}

fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn handle(hub: &Mutex<Hub>, uri: &Uri, headers: &HeaderMap) -> Response {
    let mut h = hub.lock().unwrap();
    let path = uri.path().to_string();
    let authorized = h.token.as_ref().is_none_or(|t| {
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(format!("Bearer {t}").as_str())
    });
    if !authorized {
        return Response::builder().status(401).body(Body::from(r#"{"error":"Access to model org/model is restricted."}"#)).unwrap();
    }
    if path.starts_with("/api/models/") {
        if !path.starts_with("/api/models/org/model/revision/") {
            return Response::builder().status(404).body(Body::from(r#"{"error":"Repository not found"}"#)).unwrap();
        }
        let siblings: Vec<_> = h.files.iter().map(|(name, bytes, lfs)| {
            let mut s = serde_json::json!({"rfilename": name, "size": bytes.len(), "blobId": "b"});
            if *lfs {
                let sum = if h.corrupt.contains(name) { sha256(b"something else") } else { sha256(bytes) };
                s["lfs"] = serde_json::json!({"sha256": sum, "size": bytes.len(), "pointerSize": 134});
            }
            s
        }).collect();
        return Response::new(Body::from(serde_json::json!({"id": "org/model", "sha": COMMIT, "siblings": siblings}).to_string()));
    }
    let range = headers.get("range").and_then(|v| v.to_str().ok()).map(str::to_string);
    h.requests.push(format!("{path} {}", range.as_deref().unwrap_or("-")));
    let (bytes, lfs) = if let Some(name) = path.strip_prefix("/org/model/resolve/main/") {
        match h.files.iter().find(|(n, ..)| n == name) {
            Some((_, b, lfs)) => (b.clone(), *lfs),
            None => return Response::builder().status(404).body(Body::empty()).unwrap(),
        }
    } else if path == "/files/tiny.gguf" {
        (h.files[0].1.clone(), true)
    } else {
        return Response::builder().status(404).body(Body::empty()).unwrap();
    };
    let len = bytes.len() as u64;
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: u64 = a.parse().unwrap();
            let b = if b.is_empty() { len - 1 } else { b.parse::<u64>().unwrap().min(len - 1) };
            if a >= len {
                return Response::builder().status(416).header("content-range", format!("bytes */{len}")).body(Body::empty()).unwrap();
            }
            (a, b)
        }
        None => (0, len - 1),
    };
    let etag = if lfs { sha256(&bytes) } else { "abc123".into() };
    let mut body = bytes[start as usize..=end as usize].to_vec();
    if h.corrupt.contains(path.rsplit('/').next().unwrap()) {
        body.iter_mut().for_each(|b| *b ^= 0xff);
    }
    let mut r = Response::builder()
        .header("x-repo-commit", COMMIT)
        .header("etag", format!("\"{etag}\""))
        .header("accept-ranges", "bytes");
    if lfs {
        r = r.header("x-linked-etag", format!("\"{etag}\""));
    }
    if range.is_some() {
        r = r.status(StatusCode::PARTIAL_CONTENT).header("content-range", format!("bytes {start}-{end}/{len}"));
    }
    let body = if h.drop_once.remove(&(path.clone(), start)) {
        // Promise the whole length, send half, then fail the stream: the connection drops.
        let half = body[..body.len() / 2].to_vec();
        r = r.header("content-length", body.len());
        // The pause lets the headers and the first half reach the client before the drop.
        let failing = futures::stream::unfold(0, |step| async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            match step {
                0 => Some((Ok(axum::body::Bytes::new()), 1)),
                1 => Some((Err(std::io::Error::other("connection lost")), 2)),
                _ => None,
            }
        });
        Body::from_stream(futures::stream::once(async move { Ok::<_, std::io::Error>(axum::body::Bytes::from(half)) }).chain(failing))
    } else {
        Body::from(body)
    };
    r.body(body).unwrap()
}

fn start_hub(hub: Arc<Mutex<Hub>>) -> String {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
        let hub = hub.clone();
        async move { handle(&hub, &uri, &headers) }
    });
    std::thread::spawn(move || rt.block_on(async move { axum::serve(listener, app).await.unwrap() }));
    format!("http://{addr}")
}

fn download(endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kandle-server"));
    cmd.arg("download").args(args).env("HF_ENDPOINT", endpoint).env_remove("HF_TOKEN").env_remove("HUGGING_FACE_HUB_TOKEN")
        .env("HF_HOME", "/nonexistent-hf-home").env("RUST_BACKTRACE", "0").env("RUST_LOG", "info");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn random_bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed as usize * 7) % 251) as u8 ^ (i >> 8) as u8).collect()
}

fn take_requests(hub: &Mutex<Hub>) -> Vec<String> {
    std::mem::take(&mut hub.lock().unwrap().requests)
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn repo_download_is_gated_resumable_checked_and_done_once() {
    let weights = random_bytes(300_000, 1);
    let hub = Arc::new(Mutex::new(Hub {
        files: vec![
            ("config.json".into(), br#"{"architectures":["LlamaForCausalLM"]}"#.to_vec(), false),
            ("model.safetensors".into(), weights.clone(), true),
            ("pytorch_model.bin".into(), random_bytes(1000, 2), true),
            ("original/consolidated.00.pth".into(), random_bytes(1000, 3), true),
            ("tokenizer.json".into(), br#"{"model":{}}"#.to_vec(), false),
        ],
        token: Some("hf_secret".into()),
        // The 4th 64 KiB chunk of the weights drops mid-transfer once.
        drop_once: [("/org/model/resolve/main/model.safetensors".to_string(), 3 * 65536)].into(),
        ..Default::default()
    }));
    let endpoint = start_hub(hub.clone());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let args = ["--repo", "org/model", "--dest", d, "--chunk-size", "65536"];

    let out = download(&endpoint, None, &args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));

    let out = download(&endpoint, Some("hf_secret"), &args);
    assert!(!out.status.success(), "the dropped connection fails the first run");
    assert!(dest.path().join("config.json").exists(), "files before the failure are in place");
    assert!(!dest.path().join("model.safetensors").exists());
    assert!(!dest.path().join(kandle_server::download::MARKER).exists());
    take_requests(&hub);

    let out = download(&endpoint, Some("hf_secret"), &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = take_requests(&hub);
    assert!(!reqs.iter().any(|r| r.contains("config.json")), "finished files are not fetched again: {reqs:?}");
    let weight_ranges: Vec<&str> = reqs.iter().filter(|r| r.contains("model.safetensors")).map(|r| r.split(' ').nth(1).unwrap()).collect();
    // Metadata probe, then only the chunks after the last completed one.
    assert_eq!(weight_ranges, ["bytes=0-0", "bytes=196608-262143", "bytes=262144-300000"], "{reqs:?}");

    let files = dir_files(dest.path());
    assert_eq!(files["model.safetensors"], weights);
    assert_eq!(files["tokenizer.json"], br#"{"model":{}}"#);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, [kandle_server::download::MARKER, "config.json", "model.safetensors", "tokenizer.json"],
        "other frameworks' weights skipped, cache removed");
    let marker: serde_json::Value = serde_json::from_slice(&files[kandle_server::download::MARKER]).unwrap();
    assert_eq!(marker["version"], COMMIT);
    assert_eq!(marker["source"], "hf://org/model@main");

    let out = download(&endpoint, Some("hf_secret"), &args);
    assert!(out.status.success());
    assert!(stderr(&out).contains("already downloaded"), "{}", stderr(&out));
    assert!(take_requests(&hub).is_empty(), "a finished download makes no requests");
}

#[test]
fn checksum_mismatch_and_missing_repo_fail_clearly() {
    let hub = Arc::new(Mutex::new(Hub {
        files: vec![("model.safetensors".into(), random_bytes(5000, 4), true)],
        corrupt: ["model.safetensors".to_string()].into(),
        ..Default::default()
    }));
    let endpoint = start_hub(hub.clone());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let out = download(&endpoint, None, &["--repo", "org/model", "--dest", d]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
    assert!(!dest.path().join("model.safetensors").exists());

    let out = download(&endpoint, None, &["--repo", "org/other", "--dest", d]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("org/other (revision main) not found"), "{}", stderr(&out));
}

#[test]
fn url_download_resumes_from_the_part_file() {
    let gguf = random_bytes(200_000, 5);
    let hub = Arc::new(Mutex::new(Hub {
        files: vec![("tiny.gguf".into(), gguf.clone(), true)],
        drop_once: [("/files/tiny.gguf".to_string(), 0)].into(),
        ..Default::default()
    }));
    let endpoint = start_hub(hub.clone());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let url = format!("{endpoint}/files/tiny.gguf?download=true");
    let out = download(&endpoint, None, &["--url", &url, "--dest", d]);
    assert!(!out.status.success());
    let part = std::fs::metadata(dest.path().join("tiny.gguf.part")).unwrap().len();
    assert!(part > 0 && part < gguf.len() as u64, "{part}");
    take_requests(&hub);

    let out = download(&endpoint, None, &["--url", &url, "--dest", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(take_requests(&hub), [format!("/files/tiny.gguf bytes={part}-")]);
    assert_eq!(std::fs::read(dest.path().join("tiny.gguf")).unwrap(), gguf);
    assert!(!dest.path().join("tiny.gguf.part").exists());

    let out = download(&endpoint, None, &["--url", &url, "--dest", d]);
    assert!(out.status.success());
    assert!(take_requests(&hub).is_empty());

    // A wrong --sha256 is refused and nothing is put in place.
    let other = tempfile::tempdir().unwrap();
    let out = download(&endpoint, None, &["--url", &url, "--dest", other.path().to_str().unwrap(), "--sha256", &"0".repeat(64)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
    assert!(!other.path().join("tiny.gguf").exists());
}
