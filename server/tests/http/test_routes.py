"""Raw HTTP: every route's shape, and bad input answered with clear OpenAI-shaped errors."""

import threading

import httpx
import pytest

from conftest import wait_until


def post(server, path, body=None, **kw):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60, **kw)


def assert_error(r, status, param=None, contains=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    if param is not None:
        assert err["param"] == param
    if contains is not None:
        assert contains in err["message"], err["message"]


def test_probes_and_info(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/liveness").json() == {"alive": "ok"}
    assert httpx.get(f"{server.url}/readiness").json() == {"ready": "ok"}
    info = httpx.get(f"{server.url}/v1/info").json()
    assert info["application"] == "kandle-server" and info["model_name"] == "smol"
    assert info["max_length"] == 2048 and info["truncation_side"] == "right" and info["version"]
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "smol"
    assert models["data"][0]["max_model_len"] == 2048
    live = httpx.get(f"{server.url}/v1/live_metrics").json()
    assert set(live) == {"requests_running", "requests_swapped", "requests_pending", "gpu_cache_usage", "cpu_cache_usage"}


def test_launch_arguments(server):
    args = httpx.get(f"{server.url}/v1/launch_arguments").json()
    assert args["max_model_len"] == 2048 and args["served_model_name"] == ["smol"] and args["port"] == server.port
    assert "api_key" not in args


def test_openapi_and_docs(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/chat/completions" in doc["paths"] and "/v1/abort_request" in doc["paths"]
    assert "SamplingFields" in doc["components"]["schemas"]
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "openapi.json" in page.text and "<script src" not in page.text


def test_request_id_is_echoed_and_generated(server):
    r = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}, headers={"X-Request-Id": "my-id-1"})
    assert r.headers["x-request-id"] == "my-id-1" and r.json()["id"] == "cmpl-my-id-1"
    r = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 1})
    assert len(r.headers["x-request-id"]) == 32


def test_abort_request(server):
    events = []

    def stream():
        body = {"prompt": "Count: 1, 2, 3,", "max_tokens": 1000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"X-Request-Id": "to-abort"},
                          timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])

    t = threading.Thread(target=stream)
    t.start()
    wait_until(lambda: len(events) > 2, what="streaming to start")
    r = post(server, "/v1/abort_request", {"request_id": "to-abort"})
    assert r.status_code == 200 and r.json()["aborted"] is True
    t.join(60)
    assert events[-1] == "[DONE]"
    assert '"finish_reason":"abort"' in events[-2]
    assert_error(post(server, "/v1/abort_request", {"request_id": "to-abort"}), 404)


@pytest.mark.parametrize("body,param,contains", [
    ({"prompt": "x", "max_tokens": -5}, "max_tokens", "at least 1"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens", "invalid type"),
    ({"prompt": "x", "temperature": -1}, "temperature", "non-negative"),
    ({"prompt": "x", "n": 0}, "n", "at least 1"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"prompt": "x", "logprobs": 50}, "logprobs", "max allowed"),
    ({"prompt": "x", "suffix": "!"}, "suffix", "not supported"),
    ({"prompt": []}, "prompt", "empty"),
    ({"prompt": 12}, "prompt", None),
    ({"prompt": "x", "stop": [""]}, "stop", "empty"),
    ({"max_tokens": 3}, "prompt", "missing field"),
])
def test_bad_completion_input(server, body, param, contains):
    assert_error(post(server, "/v1/completions", body), 400, param, contains)


@pytest.mark.parametrize("body,param,contains", [
    ({"messages": []}, "messages", "at least one"),
    ({"messages": "hello"}, "messages", "invalid type"),
    ({"messages": [{"content": "hi"}]}, "messages[0]", "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": False, "top_logprobs": 3}, "top_logprobs", None),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools[0]", "function.name"),
    ({"messages": [{"role": "user", "content": "hi"}], "continue_final_message": True}, "continue_final_message", None),
])
def test_bad_chat_input(server, body, param, contains):
    assert_error(post(server, "/v1/chat/completions", body), 400, param, contains)


def test_malformed_json_and_body_limits(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert_error(r, 400, contains="Malformed JSON")
    assert_error(httpx.post(f"{server.url}/v1/completions", content=b"[1,2]"), 400, contains="JSON object")
    huge = {"prompt": "word " * 400_000}
    assert_error(post(server, "/v1/completions", huge), 413)
    too_long = {"prompt": "hello " * 3000, "max_tokens": 10}
    assert_error(post(server, "/v1/completions", too_long), 400, "prompt", "maximum context length")
    assert_error(post(server, "/v1/completions", {"prompt": "x", "model": "other"}), 404, "model")
    assert_error(httpx.get(f"{server.url}/v1/nothing"), 404)
    # Still serving after all of that.
    r = post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_unknown_fields_are_ignored(server):
    r = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "some_future_field": {"x": 1}})
    assert r.status_code == 200


def test_chat_template_options(server):
    msgs = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "The color is"}]
    r = post(server, "/v1/chat/completions", {"messages": msgs, "max_tokens": 3, "temperature": 0,
                                              "continue_final_message": True, "add_generation_prompt": False})
    assert r.status_code == 200, r.text
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name"}, {"type": "text", "text": "a color."}]}]
    r = post(server, "/v1/chat/completions", {"messages": parts, "max_tokens": 3})
    assert r.status_code == 200, r.text
    r = post(server, "/v1/chat/completions", {"messages": parts, "max_tokens": 3,
                                              "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})
    plain = post(server, "/v1/completions", {"prompt": "Name\na color.", "max_tokens": 1, "add_special_tokens": False})
    assert r.json()["usage"]["prompt_tokens"] == plain.json()["usage"]["prompt_tokens"]
    r = post(server, "/v1/chat/completions", {"messages": parts, "max_tokens": 3,
                                              "chat_template": "{{ raise_exception('no thanks') }}"})
    assert_error(r, 400, "messages", "no thanks")
