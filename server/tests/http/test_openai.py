"""The official openai client against the server, as users call it."""

import openai
import pytest

from conftest import MODEL, Server

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=12, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == "smol"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    full = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_streaming_and_not(client):
    r = client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="smol", prompt="The capital of France is", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_completions_default_max_tokens_is_16(client):
    r = client.completions.create(model="smol", prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_n_choices_and_prompt_lists(client):
    r = client.completions.create(model="smol", prompt=["Hello", "One two three"], n=2, max_tokens=4, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    r = client.chat.completions.create(model="smol", messages=CHAT, n=2, max_tokens=6, temperature=1.0, seed=1)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content


def test_token_id_prompts(client):
    r = client.completions.create(model="smol", prompt=[504, 3575, 282], max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 3


def test_logprobs(client):
    r = client.completions.create(model="smol", prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) >= 3 for t in lp.top_logprobs)
    # Greedy: the sampled token is the most likely one.
    for tok, val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert abs(max(top.values()) - val) < 1e-4
    r = client.chat.completions.create(model="smol", messages=CHAT, max_tokens=3, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob


def test_stop_strings(client):
    r = client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[" 7"])
    assert r.choices[0].finish_reason == "stop"
    assert " 7" not in r.choices[0].text and "6" in r.choices[0].text
    assert r.choices[0].model_extra["stop_reason"] == " 7"
    r = client.completions.create(model="smol", prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=" 7",
                                  extra_body={"include_stop_str_in_output": True})
    assert r.choices[0].text.endswith(" 7")


def test_seed_reproducibility(client):
    def sample(seed):
        return client.chat.completions.create(model="smol", messages=CHAT, max_tokens=16, temperature=1.0,
                                              seed=seed).choices[0].message.content
    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=2)
    assert "gpt-4o" in str(e.value)


def test_bad_parameter_is_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol", messages=CHAT, top_p=5.0)
    assert e.value.body["param"] == "top_p"


def test_routes_without_v1(server):
    c = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    assert c.chat.completions.create(model="smol", messages=CHAT, max_tokens=2).choices[0].message.content
    assert [m.id for m in c.models.list()] == ["smol"]


def test_api_key_and_prefix():
    s = Server("--api-key", "sekret", "--api-endpoint-prefix", "/llm").wait_ready(prefix="/llm")
    try:
        bad = openai.OpenAI(base_url=f"{s.url}/llm/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=str(MODEL), messages=CHAT, max_tokens=2)
        good = openai.OpenAI(base_url=f"{s.url}/llm/v1", api_key="sekret", max_retries=0)
        name = good.models.list().data[0].id
        assert good.chat.completions.create(model=name, messages=CHAT, max_tokens=2).choices[0].message.content
        import httpx
        # Probes and metrics stay open; metrics is not under the prefix.
        assert httpx.get(f"{s.url}/llm/liveness").json() == {"alive": "ok"}
        assert httpx.get(f"{s.url}/metrics").status_code == 200
        assert httpx.get(f"{s.url}/v1/models").status_code == 404
    finally:
        s.stop()
