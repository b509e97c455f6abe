"""Black-box HTTP tests: the real kandle-server binary on the real SmolLM2 model, driven
by the official `openai` client and raw HTTP. Run by scripts/test.sh after `cargo build`."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("KANDLE_SERVER_BIN", ROOT / "target" / "debug" / "kandle-server"))
MODEL = Path(os.environ.get("KANDLE_TEST_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=60.0, interval=0.05, what="condition"):
    """Polls with a deadline (tests never sleep a fixed time to wait for something)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    def __init__(self, *args, env=None, cwd=None, model=True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if model:
            cmd += ["--model", str(MODEL)]
        full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "MODEL_NAME", "PORT", "API_KEY")}
        full_env.update(env or {})
        self.log = open(f"/tmp/kandle-test-{self.port}.log", "w+")
        self.proc = subprocess.Popen(cmd + list(args), stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readiness", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, prefix=""):
        def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}{prefix}/readiness", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(check, timeout=120, what="readiness")
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server("--served-model-name", "smol", "--max-model-len", "2048", "--max-request-body", "1MiB",
               "--with-launch-arguments").wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def scrape(url):
    """The server's metrics, parsed by the Prometheus client's OpenMetrics parser."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def gauge(url, name):
    return scrape(url)[name][0].value
