#!/usr/bin/env python3
"""Embedding throughput: sentences per second for batches of 1 / 32 / 256 short sentences.

Against a running kandle-server (one request per batch, `input` = the batch, over HTTP):

    ./target/release/kandle-server serve --model models/all-MiniLM-L6-v2 --port 8000 &
    python3 bench/embeddings.py --url http://127.0.0.1:8000

The same sentences through sentence-transformers on PyTorch, in-process (the reference; needs
torch and sentence-transformers installed, see server/tests/fixtures/make_embeddings_reference.py):

    python bench/embeddings.py --sentence-transformers models/all-MiniLM-L6-v2
"""

import argparse
import json
import random
import statistics
import time
import urllib.request

WORDS = ("the a an model server request token batch cluster node pod queue cache latency fast small "
         "large quick brown fox jumps over lazy dog river mountain city night light data network").split()


def sentences(n, seed):
    rng = random.Random(seed)
    # Short sentences of 6–14 words (~8–18 tokens), like the sentence-transformers benchmarks.
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "." for _ in range(n)]


def http_embed(url):
    def run(batch):
        body = json.dumps({"input": batch}).encode()
        req = urllib.request.Request(f"{url}/v1/embeddings", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            data = json.loads(r.read())["data"]
        assert len(data) == len(batch)
    return run


def st_embed(path):
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(path, device="cpu")
    return lambda batch: model.encode(batch, batch_size=len(batch))


def measure(run, batch_size, total, seed):
    batches = [sentences(batch_size, seed + i) for i in range(max(1, total // batch_size))]
    run(batches[0])  # warm-up
    times = []
    for b in batches:
        t = time.perf_counter()
        run(b)
        times.append(time.perf_counter() - t)
    return batch_size * len(batches) / sum(times), statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--sentence-transformers", metavar="MODEL_DIR", help="measure sentence-transformers instead")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--sentences", type=int, default=1024, help="sentences per batch size (at least one batch)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run = st_embed(args.sentence_transformers) if args.sentence_transformers else http_embed(args.url)
    print("| batch | sentences/s | median batch latency (ms) |")
    print("|---|---|---|")
    for bs in args.batch_sizes:
        total = args.sentences if bs > 1 else min(args.sentences, 256)
        rate, lat = measure(run, bs, total, args.seed)
        print(f"| {bs} | {rate:.1f} | {lat:.1f} |", flush=True)


if __name__ == "__main__":
    main()
