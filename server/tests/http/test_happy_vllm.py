"""happy_vllm's tokenizer and text routes (and vLLM's /tokenize, /detokenize), with the
examples of ../shared/reference/happy_vllm-pypi-readme.txt."""

import httpx
import pytest

TEXT = "Hey, how are you ? Fine thanks."
LONG = ("The lighthouse stood on the cliff. Waves hit the rocks! Did the keeper sleep? "
        "Nobody knew | the night was long. ") * 12


def post(server, path, body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_v2_tokenizer_and_decode_round_trip(server):
    r = post(server, "/v2/tokenizer", {"model": "smol", "prompt": TEXT, "add_special_tokens": True}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 2048
    assert post(server, "/v2/decode", {"model": "smol", "tokens": r["tokens"]}).json() == {"prompt": TEXT}
    # vLLM's names, same shapes.
    v = post(server, "/tokenize", {"model": "smol", "prompt": TEXT, "return_token_strs": True}).json()
    assert v["tokens"] == r["tokens"] and len(v["token_strs"]) == v["count"]
    assert post(server, "/detokenize", {"tokens": v["tokens"]}).json()["prompt"] == TEXT


def test_v2_tokenizer_chat_form_counts_what_chat_completions_sends(server):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = post(server, "/v2/tokenizer", {"model": "smol", "messages": messages, "add_generation_prompt": True}).json()
    chat = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 1}).json()
    assert r["count"] == chat["usage"]["prompt_tokens"]


def test_v1_tokenizer_vanilla_and_happy(server):
    v = post(server, "/v1/tokenizer", {"text": TEXT, "with_tokens_str": True, "vanilla": True}).json()
    assert v["tokens_nb"] == len(v["tokens_ids"]) == len(v["tokens_str"])
    assert any(t.startswith("Ġ") for t in v["tokens_str"])  # raw byte-level tokens
    h = post(server, "/v1/tokenizer", {"text": TEXT, "with_tokens_str": True, "vanilla": False}).json()
    assert "".join(h["tokens_str"]) == TEXT and " how" in h["tokens_str"]
    assert "tokens_str" not in post(server, "/v1/tokenizer", {"text": TEXT}).json()
    d = post(server, "/v1/decode", {"token_ids": h["tokens_ids"], "with_tokens_str": True, "vanilla": False}).json()
    assert d["decoded_string"] == TEXT and "".join(d["tokens_str"]) == TEXT and d["tokens_nb"] == len(h["tokens_ids"])


@pytest.mark.parametrize("text", [TEXT, "héllo wörld 🎉 日本語", "", "  leading and trailing  ", "a\n\nb\tc"])
def test_happy_tokens_are_exact_slices(server, text):
    h = post(server, "/v1/tokenizer", {"text": text, "with_tokens_str": True, "vanilla": False}).json()
    assert "".join(h["tokens_str"]) == text


def test_metadata_text(server):
    n = post(server, "/v1/tokenizer", {"text": LONG, "vanilla": False}).json()["tokens_nb"]
    r = post(server, "/v1/metadata_text", {"text": LONG}).json()
    assert r == {"tokens_nb": n, "truncated_text": ""}
    r = post(server, "/v1/metadata_text", {"text": LONG, "max_length": 50}).json()
    assert r["tokens_nb"] == n and LONG.endswith(r["truncated_text"])
    kept = LONG[: len(LONG) - len(r["truncated_text"])]
    assert post(server, "/v1/tokenizer", {"text": kept, "vanilla": False}).json()["tokens_nb"] == 50
    left = post(server, "/v1/metadata_text", {"text": LONG, "max_length": 50, "truncation_side": "left"}).json()
    assert LONG.startswith(left["truncated_text"]) and left["truncated_text"] != r["truncated_text"]
    bad = post(server, "/v1/metadata_text", {"text": LONG, "truncation_side": "middle"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncation_side"


def test_split_text(server):
    r = post(server, "/v1/split_text", {"text": LONG, "num_tokens_in_chunk": 30}).json()
    chunks = r["split_text"]
    assert "".join(chunks) == LONG and len(chunks) > 3
    for c in chunks[:-1]:
        assert c.rstrip()[-1] in ".!?|"
        assert post(server, "/v1/tokenizer", {"text": c, "vanilla": False}).json()["tokens_nb"] >= 30
    # The reference example: separators given explicitly.
    r = post(server, "/v1/split_text", {"text": "Text to split. Again! And again?", "num_tokens_in_chunk": 1,
                                        "separators": [".", "!", "?", "|", " .", " !", " ?", " |"]}).json()
    assert r["split_text"] == ["Text to split.", " Again!", " And again?"]
    assert post(server, "/v1/split_text", {"text": "x", "num_tokens_in_chunk": 0}).status_code == 400


def test_tokenizer_routes_reject_bad_input(server):
    assert post(server, "/v1/tokenizer", {"txt": "x"}).json()["error"]["param"] == "text"
    assert post(server, "/v1/decode", {"token_ids": [10**9]}).status_code == 400
    assert post(server, "/v2/decode", {"tokens": ["a"]}).json()["error"]["param"] == "tokens[0]"
    assert post(server, "/v2/tokenizer", {"model": "other", "prompt": "x"}).status_code == 404
    assert post(server, "/v1/split_text", {"text": 5}).status_code == 400


def test_generate(server):
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "n": 2,
            "prompt_in_response": True}
    r = post(server, "/v1/generate", body).json()
    assert len(r["responses"]) == len(r["finish_reasons"]) == len(r["usages"]) == 2
    assert r["prompt"] == body["prompt"] and r["finish_reasons"] == ["length", "length"]
    count = post(server, "/v2/tokenizer", {"prompt": body["prompt"]}).json()["count"]
    for u in r["usages"]:
        assert u["prompt_tokens"] == count and u["completion_tokens"] == 8 and u["total_tokens"] == count + 8
    comp = post(server, "/v1/completions", {"prompt": body["prompt"], "max_tokens": 8, "temperature": 0}).json()
    assert r["responses"][0] == comp["choices"][0]["text"]
    assert "prompt" not in post(server, "/v1/generate", {"prompt": "Hi", "max_tokens": 2}).json()


def test_generate_stream_sends_the_object_cumulatively(server):
    import json
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/generate_stream", json=body, timeout=60) as r:
        objs = [json.loads(line) for line in r.iter_lines() if line]
    assert len(objs) > 2
    for a, b in zip(objs, objs[1:]):
        assert b["responses"][0].startswith(a["responses"][0])
    assert objs[0]["finish_reasons"] == ["None"]
    assert objs[-1]["finish_reasons"] == ["length"] and objs[-1]["usages"][0]["completion_tokens"] == 8
    assert objs[-1]["responses"] == post(server, "/v1/generate", body).json()["responses"]


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "response_pool": ["a"], "min_tokens": 2}, 422, "response_pool"),
    ({"prompt": "x", "response_pool": ["a"], "json_format": {"a": "string"}}, 422, "response_pool"),
    ({"prompt": "x", "max_tokens": 3, "min_tokens": 3}, 422, "max_tokens"),
    ({"prompt": "x", "logits_processors": []}, 422, "logits_processors"),
    ({"prompt": "x", "response_pool": []}, 422, "response_pool"),
    ({"prompt": "x", "json_format": {"a": "date"}}, 422, "json_format"),
    ({"prompt": "x", "json_format": {"a": "string"}, "guided_regex": "a+"}, 422, "json_format"),
    ({"prompt": "x", "json_format": {"type": "nonsense"}, "json_format_is_json_schema": True}, 400, "json_format"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"max_tokens": 2}, 400, "prompt"),
])
def test_generate_rejects(server, body, status, param):
    for route in ("/v1/generate", "/v1/generate_stream"):
        r = post(server, route, body)
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param


def test_truncate_prompt_tokens(server):
    long = {"prompt": "hello " * 3000, "max_tokens": 4}
    r = post(server, "/v1/completions", dict(long, truncate_prompt_tokens=100))
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 100
    r = post(server, "/v1/generate", dict(long, truncate_prompt_tokens=10)).json()
    assert r["usages"][0]["prompt_tokens"] == 10
    assert post(server, "/v1/completions", dict(long, truncate_prompt_tokens=0)).status_code == 400


def test_chat_message_alias_of_alpaca_demo(server):
    messages = [{"role": "user", "message": "Tell me some stories about Hangzhou"},
                {"role": "assistant", "message": "Alright, do you have any particular preferences about Hangzhou?"},
                {"role": "user", "message": "I'm more interested in West Lake, can you tell me about it?"}]
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    assert r.status_code == 200, r.text
    same = [{"role": m["role"], "content": m["message"]} for m in messages]
    assert post(server, "/v1/chat/completions", {"messages": same, "max_tokens": 4}).json()["usage"]["prompt_tokens"] \
        == r.json()["usage"]["prompt_tokens"]


def test_best_of_returns_the_most_likely_candidates(server):
    base = {"prompt": "My favourite animal is", "max_tokens": 6, "temperature": 1.0, "seed": 7}
    every = post(server, "/v1/completions", dict(base, n=4, logprobs=0)).json()["choices"]
    scores = {c["text"]: sum(c["logprobs"]["token_logprobs"]) for c in every}
    best = post(server, "/v1/completions", dict(base, n=1, best_of=4)).json()["choices"]
    assert len(best) == 1 and best[0]["logprobs"] is None
    assert scores[best[0]["text"]] == max(scores.values())
    two = post(server, "/v1/completions", dict(base, n=2, best_of=4)).json()["choices"]
    assert [c["index"] for c in two] == [0, 1]
    assert sorted(scores[c["text"]] for c in two) == sorted(scores.values())[-2:]
    assert post(server, "/v1/completions", dict(base, n=2, best_of=1)).status_code == 400
    assert post(server, "/v1/completions", dict(base, best_of=3, stream=True)).status_code == 400


def reference_beam_search(server, prompt_ids, width, steps):
    """Plain beam search over the server's own next-token logprobs (each prefix prefilled
    from scratch): what the engine's copy-on-write beams must reproduce."""
    beams = [(0.0, [])]
    for _ in range(steps):
        candidates = []
        for cum, out in beams:
            r = post(server, "/v1/completions", {"prompt": prompt_ids + out, "max_tokens": 1, "temperature": 0,
                                                 "logprobs": 2 * width, "ignore_eos": True,
                                                 "return_tokens_as_token_ids": True}).json()
            top = r["choices"][0]["logprobs"]["top_logprobs"][0]
            candidates += [(cum + lp, out + [int(t.split(":")[1])]) for t, lp in top.items()]
        candidates.sort(key=lambda c: -c[0])
        beams = candidates[:width]
    return beams


def test_beam_search_matches_a_reference_and_is_deterministic(server):
    prompt_ids = post(server, "/v2/tokenizer", {"prompt": "The best way to learn a language is"}).json()["tokens"]
    body = {"prompt": prompt_ids, "max_tokens": 5, "n": 3, "use_beam_search": True, "best_of": 4,
            "ignore_eos": True, "skip_special_tokens": False}
    got = post(server, "/v1/completions", body).json()
    texts = [c["text"] for c in got["choices"]]
    assert len(texts) == 3 and [c["index"] for c in got["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] == "length" for c in got["choices"])
    ref = reference_beam_search(server, prompt_ids, width=4, steps=5)
    expected = [post(server, "/detokenize", {"tokens": out}).json()["prompt"] for _, out in ref[:3]]
    assert texts == expected
    assert post(server, "/v1/completions", body).json()["choices"] == got["choices"]
    # num_beams is the same width; the generate route and chat take it too.
    alias = dict(body, num_beams=4)
    del alias["use_beam_search"], alias["best_of"]
    assert [c["text"] for c in post(server, "/v1/completions", alias).json()["choices"]] == texts
    g = post(server, "/v1/generate", {"prompt": "Hello", "max_tokens": 4, "use_beam_search": True, "best_of": 3, "n": 2})
    assert g.status_code == 200 and len(g.json()["responses"]) == 2
    c = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                                              "num_beams": 3, "early_stopping": True})
    assert c.status_code == 200 and c.json()["choices"][0]["message"]["content"]


def test_beam_search_frees_every_block(server):
    from conftest import gauge, wait_until
    before = gauge(server.url, "vllm:kv_cache_usage_perc")
    r = post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 40, "use_beam_search": True,
                                         "best_of": 6, "n": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    wait_until(lambda: gauge(server.url, "vllm:kv_cache_usage_perc") == before, what="blocks freed")


def test_beam_search_rejects_bad_widths(server):
    r = post(server, "/v1/completions", {"prompt": "Hi", "use_beam_search": True, "n": 3, "best_of": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
    r = post(server, "/v1/completions", {"prompt": "Hi", "use_beam_search": True})
    assert r.status_code == 400


def test_special_tokens_in_output(server):
    # Force <|im_start|> (id 1, not an end token) with logit_bias to get special tokens out.
    body = {"model": "smol", "prompt": "Hi", "max_tokens": 3, "logit_bias": {"1": 100}, "temperature": 0}
    kept = post(server, "/v1/completions", {**body, "skip_special_tokens": False}).json()
    assert kept["choices"][0]["text"] == "<|im_start|>" * 3
    # As vLLM with fast tokenizers: no spaces are inserted either way.
    spaced = post(server, "/v1/completions", {**body, "skip_special_tokens": False,
                                               "spaces_between_special_tokens": True}).json()
    assert spaced["choices"][0]["text"] == kept["choices"][0]["text"]
    assert post(server, "/v1/completions", body).json()["choices"][0]["text"] == ""
    bad = post(server, "/v1/completions", {**body, "spaces_between_special_tokens": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "spaces_between_special_tokens"
