"""The Dockerfiles cannot be built here (no container engine), so check what can drift: the
entrypoint binaries are the workspace's, every flag of their default commands exists, and
they run as the non-root user the operator's pod security context expects."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "debug"


def instruction(text, name):
    found = re.findall(rf"^{name}\s+(.+)$", text, re.M)
    return found[-1] if found else None


@pytest.mark.parametrize("dockerfile,binary", [
    ("server.Dockerfile", "kandle-server"),
    ("server-cuda.Dockerfile", "kandle-server"),
    ("operator.Dockerfile", "kandle-operator"),
])
def test_entrypoint_and_default_command(dockerfile, binary):
    text = (ROOT / "docker" / dockerfile).read_text()
    entrypoint = json.loads(instruction(text, "ENTRYPOINT"))
    assert Path(entrypoint[0]).name == binary
    assert f"-p {binary} --bin {binary}" in text, "builds the workspace's binary"
    cmd = json.loads(instruction(text, "CMD"))
    help_text = subprocess.run([str(BIN / binary), cmd[0], "--help"], capture_output=True, text=True, check=True).stdout
    for arg in cmd[1:]:
        if arg.startswith("--"):
            assert arg in help_text, f"{dockerfile}: {arg} is not a flag of {binary} {cmd[0]}"
    assert instruction(text, "USER") == "65532:65532", "numeric non-root user (runAsNonRoot needs a number)"
    assert "--locked" in text


def test_operator_pods_use_the_same_entrypoint_layout():
    # The operator sets only `args` on server containers, so the image's ENTRYPOINT must be
    # kandle-server itself and `serve` / `download` its subcommands.
    out = subprocess.run([str(BIN / "kandle-operator"), "render", "-f", str(ROOT / "manifests" / "examples" / "smollm2-cpu-hpa.yaml")],
                         capture_output=True, text=True, check=True).stdout
    import yaml
    dep = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    for c in pod["containers"] + pod.get("initContainers", []):
        assert "command" not in c
        sub = c["args"][0]
        subprocess.run([str(BIN / "kandle-server"), sub, "--help"], capture_output=True, check=True)
