#!/usr/bin/env python3
"""Serving benchmark following vLLM's `bench serve` method: random-token prompts of
`--input-len` tokens, `--output-len` generated tokens with `ignore_eos`, streamed from
/v1/completions at a fixed maximum concurrency. Reports output throughput, TTFT and TPOT
(p50/p99) per concurrency level.


    ./target/release/kandle-server serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000 &
    .venv/bin/python bench/serve.py --url http://127.0.0.1:8000 --concurrency 1 4 16 32

Works against any OpenAI-compatible server that accepts token-id prompts and `ignore_eos`
(vLLM included), so the numbers compare like for like.
"""

import argparse
import http.client
import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

# The client shares the machine with the server on small hosts, so it is kept cheap:
# stdlib http.client in threads, and only the usage chunk is parsed as JSON.


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


EXTRA_BODY = {}


def one(url, model, prompt, output_len):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=3600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": output_len, "ignore_eos": True,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
                       **EXTRA_BODY})
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    ttft, tokens, arrivals = None, 0, []
    for line in r:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = now - start
        if b'"usage"' in line and json.loads(line[6:]).get("usage"):
            tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        else:
            arrivals.append(now)
    e2e = time.perf_counter() - start
    conn.close()
    tpot = (e2e - ttft) / (tokens - 1) if tokens > 1 and ttft is not None else None
    itls = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return ttft, tpot, tokens, e2e, itls


def level(url, model, prompts, concurrency, output_len):
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: one(url, model, p, output_len), prompts))
    duration = time.perf_counter() - start
    ttfts = [r[0] * 1e3 for r in results if r[0] is not None]
    tpots = [r[1] * 1e3 for r in results if r[1] is not None]
    itls = [x * 1e3 for r in results for x in r[4]]
    out_tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency, "requests": len(prompts),
        "output_tok_s": round(out_tokens / duration, 1),
        "itl_ms_p50": round(pct(itls, 50), 2), "itl_ms_p99": round(pct(itls, 99), 2),
        "ttft_ms_p50": round(pct(ttfts, 50), 1), "ttft_ms_p99": round(pct(ttfts, 99), 1),
        "tpot_ms_p50": round(pct(tpots, 50), 2), "tpot_ms_p99": round(pct(tpots, 99), 2),
        "mean_tpot_ms": round(statistics.mean(tpots), 2) if tpots else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default=None, help="served model name (default: the first of /v1/models)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--requests-per-slot", type=int, default=4, help="requests per level = this x concurrency")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--token-range", type=int, nargs=2, default=[1000, 40000],
                    help="prompt token ids are drawn uniformly from this range (avoids special tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file as JSON")
    ap.add_argument("--extra-body", default="{}",
                    help="JSON merged into every request, e.g. a structured-output constraint")
    args = ap.parse_args()
    EXTRA_BODY.update(json.loads(args.extra_body))
    if args.model is None:
        u = urlparse(args.url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80)
        conn.request("GET", "/v1/models")
        args.model = json.loads(conn.getresponse().read())["data"][0]["id"]
    model = args.model
    rng = random.Random(args.seed)
    # Warm-up request, not measured.
    level(args.url, model, [[rng.randrange(*args.token_range) for _ in range(16)]], 1, 4)
    print("| concurrency | requests | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | ITL p50 / p99 (ms) |")
    print("|---|---|---|---|---|---|")
    results = []
    for c in args.concurrency:
        n = max(args.min_requests, args.requests_per_slot * c)
        prompts = [[rng.randrange(*args.token_range) for _ in range(args.input_len)] for _ in range(n)]
        r = level(args.url, model, prompts, c, args.output_len)
        results.append(r)
        print(f"| {c} | {n} | {r['output_tok_s']} | {r['ttft_ms_p50']} / {r['ttft_ms_p99']} | "
              f"{r['tpot_ms_p50']} / {r['tpot_ms_p99']} | {r['itl_ms_p50']} / {r['itl_ms_p99']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "input_len": args.input_len, "output_len": args.output_len,
                       "levels": results}, f, indent=2)


if __name__ == "__main__":
    main()
