"""Process-level behaviour: configuration sources, startup failures, overload, drain."""

import signal
import subprocess
import threading

import httpx

from conftest import BIN, MODEL, Server, wait_until

LONG = {"prompt": "Count: 1, 2, 3,", "max_tokens": 300, "stream": True, "ignore_eos": True}


def served_name(server):
    return httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]


def test_config_priority_cli_env_dotenv(tmp_path):
    (tmp_path / ".env").write_text(f"MODEL={MODEL}\nMODEL_NAME=from-dotenv\nMAX_MODEL_LEN=512\n")
    s = Server(cwd=tmp_path, model=False).wait_ready()
    try:
        assert served_name(s) == "from-dotenv"
        assert httpx.get(f"{s.url}/v1/info").json()["max_length"] == 512
    finally:
        s.stop()
    s = Server(cwd=tmp_path, model=False, env={"MODEL_NAME": "from-env"}).wait_ready()
    try:
        assert served_name(s) == "from-env"
    finally:
        s.stop()
    s = Server("--model-name", "from-cli", cwd=tmp_path, model=False, env={"MODEL_NAME": "from-env"}).wait_ready()
    try:
        assert served_name(s) == "from-cli"
    finally:
        s.stop()


def test_no_model_is_a_clear_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([str(BIN), "serve", "--port", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "no model given" in r.stderr and "--model" in r.stderr and "MODEL" in r.stderr


def test_broken_chat_template_fails_at_startup():
    s = Server("--chat-template", "{% for m in messages %}{{ m.content }")
    try:
        assert s.proc.wait(120) != 0
        assert "chat template" in s.output()
    finally:
        s.stop()


def test_overload_gets_503_with_retry_after():
    s = Server("--max-num-seqs", "1", "--max-waiting-requests", "1").wait_ready()
    streams = []
    try:
        def run():
            with httpx.stream("POST", f"{s.url}/v1/completions", json=LONG, timeout=120) as r:
                streams.append(r.status_code)
                for _ in r.iter_lines():
                    pass

        threads = [threading.Thread(target=run) for _ in range(2)]
        threads[0].start()
        wait_until(lambda: httpx.get(f"{s.url}/v1/live_metrics").json()["requests_running"] == 1, what="one running")
        threads[1].start()
        wait_until(lambda: httpx.get(f"{s.url}/v1/live_metrics").json()["requests_pending"] == 1, what="one waiting")
        r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["type"] == "ServiceUnavailableError"
    finally:
        s.stop()
        for t in threads:
            t.join(60)


def test_sigterm_drains_then_exits_zero():
    s = Server("--shutdown-timeout", "60").wait_ready()
    events = []

    def run():
        with httpx.stream("POST", f"{s.url}/v1/completions", json=dict(LONG, max_tokens=150), timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: len(events) > 2, what="streaming to start")
    s.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(f"{s.url}/readiness").status_code == 503, what="readiness ko")
    assert httpx.get(f"{s.url}/readiness").json() == {"ready": "ko"}
    r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 503 and "retry-after" in r.headers
    t.join(120)
    # The in-flight request ran to its end, then the process exited cleanly.
    assert events[-1] == "[DONE]" and '"finish_reason":"length"' in events[-2]
    assert s.proc.wait(60) == 0
    s.stop()
