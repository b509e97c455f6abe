"""Every example in manifests/ validates against the generated CRD schema, and every object
the operator builds from them validates against the Kubernetes OpenAPI schemas of 1.30–1.36
(kubernetes-validate, strict: unknown fields fail)."""

import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
OPERATOR = Path(os.environ.get("KANDLE_OPERATOR_BIN", ROOT / "target" / "debug" / "kandle-operator"))
CRD = yaml.safe_load((ROOT / "crds" / "llmdeployment.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
VERSIONS = [f"1.{minor}.0" for minor in range(30, 37)]


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    for doc in docs(path):
        if doc["kind"] == "LLMDeployment":
            assert doc["apiVersion"] == "kandle.dev/v1alpha1"
            jsonschema.validate(doc, SCHEMA)
        else:
            for v in VERSIONS:
                kubernetes_validate.validate(doc, v, strict=True)


def test_the_crd_schema_rejects_what_it_should():
    good = docs(ROOT / "manifests" / "examples" / "smollm2-cpu.yaml")[0]
    for mutate in (lambda d: d["spec"].pop("model"),
                   lambda d: d["spec"].update(replicas=-1),
                   lambda d: d["spec"]["server"].update(port=70000),
                   lambda d: d["spec"]["model"].update(dtype="f8")):
        bad = yaml.safe_load(yaml.safe_dump(good))
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_built_objects_validate_against_kubernetes(path):
    out = subprocess.run([str(OPERATOR), "render", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service"} <= kinds
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            # KEDA's kind: not in the Kubernetes schemas; check what KEDA requires.
            assert obj["apiVersion"] == "keda.sh/v1alpha1"
            assert obj["spec"]["scaleTargetRef"]["kind"] == "LLMDeployment"
            assert obj["spec"]["triggers"][0]["type"] == "prometheus"
            continue
        for v in VERSIONS:
            if obj["kind"] == "Deployment" and minor(v) < 33 and uses_image_volume(obj):
                continue  # image volumes are Kubernetes 1.33+ (beta), as the example says
            kubernetes_validate.validate(obj, v, strict=True)


def test_autoscaling_modes_render_their_objects():
    def kinds(name):
        out = subprocess.run([str(OPERATOR), "render", "-f", str(ROOT / "manifests" / "examples" / name)],
                             capture_output=True, text=True, check=True).stdout
        return [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert "HorizontalPodAutoscaler" in kinds("smollm2-cpu-hpa.yaml")
    assert "ScaledObject" in kinds("qwen2.5-keda.yaml")
    assert not {"HorizontalPodAutoscaler", "ScaledObject"} & set(kinds("llama-3.1-8b-gpu-autoscaling.yaml"))


def test_field_reference_is_current():
    import importlib.util
    spec = importlib.util.spec_from_file_location("crd_reference", ROOT / "scripts" / "crd-reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "llmdeployment-reference.md").read_text() == module.render(), \
        "docs/llmdeployment-reference.md is stale: run python3 scripts/crd-reference.py"


def minor(version):
    return int(version.split(".")[1])


def uses_image_volume(obj):
    return any("image" in v for v in obj["spec"]["template"]["spec"].get("volumes", []))
