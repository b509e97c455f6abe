"""/v1/embeddings against the reference implementation: all-MiniLM-L6-v2 vectors computed by
sentence-transformers on PyTorch (fixture and the command that made it in
server/tests/fixtures/), read through the official openai client."""

import base64
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import ROOT, Server, scrape

MODEL = ROOT / "models" / "all-MiniLM-L6-v2"
REFERENCE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "embeddings_reference.json").read_text())
ITEMS = REFERENCE["items"]
MAX = REFERENCE["max_seq_length"]


@pytest.fixture(scope="module")
def emb_server():
    s = Server("--model", str(MODEL), "--served-model-name", "minilm", model=False).wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def emb(emb_server):
    return openai.OpenAI(base_url=f"{emb_server.url}/v1", api_key="unused", max_retries=0)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_matches_sentence_transformers(emb):
    assert len(ITEMS) >= 20
    short = [it for it in ITEMS if it["tokens"] <= MAX]
    long = [it for it in ITEMS if it["tokens"] > MAX]
    r = emb.embeddings.create(model="minilm", input=[it["text"] for it in short])
    assert [d.index for d in r.data] == list(range(len(short)))
    for it, d in zip(short, r.data):
        assert len(d.embedding) == 384
        assert cosine(it["embedding"], d.embedding) >= 0.9999, it["text"]
    assert r.usage.prompt_tokens == sum(it["tokens"] for it in short) == r.usage.total_tokens
    # Longer than the model's 256 tokens: refused, unless truncated as sentence-transformers does.
    for it in long:
        with pytest.raises(openai.BadRequestError, match="maximum"):
            emb.embeddings.create(model="minilm", input=it["text"])
        d = emb.embeddings.create(model="minilm", input=it["text"], extra_body={"truncate_prompt_tokens": MAX}).data[0]
        assert cosine(it["embedding"], d.embedding) >= 0.9999


def test_float_and_base64_agree_and_token_inputs(emb, emb_server):
    texts = ["Hello world", "A man is eating food."]
    floats = emb.embeddings.create(model="minilm", input=texts, encoding_format="float").data
    raw = httpx.post(f"{emb_server.url}/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    for f, b in zip(floats, raw["data"]):
        decoded = struct.unpack(f"<{len(f.embedding)}f", base64.b64decode(b["embedding"]))
        assert list(decoded) == pytest.approx(f.embedding, abs=0)
    # Asked for base64, the client hands the string over; by default it picks the wire
    # format itself (base64 where it can decode it) and returns floats.
    client_b64 = emb.embeddings.create(model="minilm", input=texts, encoding_format="base64").data
    for f, b in zip(floats, client_b64):
        assert list(struct.unpack("<384f", base64.b64decode(b.embedding))) == pytest.approx(f.embedding, abs=0)
    for f, d in zip(floats, emb.embeddings.create(model="minilm", input=texts).data):
        assert d.embedding == pytest.approx(f.embedding, abs=0)
    tokens = httpx.post(f"{emb_server.url}/tokenize", json={"prompt": "x"})
    # Token-id inputs embed the same as the text they spell.
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    by_ids = emb.embeddings.create(model="minilm", input=[ids]).data[0].embedding
    assert cosine(by_ids, floats[0].embedding) > 0.99999
    assert tokens.status_code == 400  # tokenizer routes belong to generative models


@pytest.mark.parametrize("body,param", [
    ({"input": []}, "input"),
    ({"input": "x", "dimensions": 128}, "dimensions"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": [[999999]]}, "input"),
    ({"input": "x", "truncate_prompt_tokens": 100000}, "truncate_prompt_tokens"),
    ({"input": 3}, "input"),
])
def test_bad_input(emb_server, body, param):
    r = httpx.post(f"{emb_server.url}/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_generation_routes_say_what_the_server_serves(emb_server, server):
    r = httpx.post(f"{emb_server.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "embedding model" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "hi"})
    assert r.status_code == 400 and "generative model" in r.json()["error"]["message"]
    models = httpx.get(f"{emb_server.url}/v1/models").json()["data"]
    assert models[0]["id"] == "minilm" and models[0]["max_model_len"] == MAX


def test_concurrent_clients_are_batched_and_counted(emb, emb_server):
    before = scrape(emb_server.url)
    count = lambda m: sum(s.value for s in m.get("vllm:e2e_request_latency_seconds_count", []))
    texts = [it["text"] for it in ITEMS if it["tokens"] <= MAX]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: emb.embeddings.create(model="minilm", input=t).data[0].embedding, texts))
    for it, v in zip([it for it in ITEMS if it["tokens"] <= MAX], results):
        assert cosine(it["embedding"], v) >= 0.9999
    after = scrape(emb_server.url)
    assert count(after) - count(before) == len(texts)
    assert after["vllm:prompt_tokens_total"][0].value > before["vllm:prompt_tokens_total"][0].value
