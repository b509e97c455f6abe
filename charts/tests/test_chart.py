"""The Helm chart, through Helm's own engine (helm-python-sdk): lint, render with default and
non-default values, every rendered object against the Kubernetes 1.30–1.36 schemas, the
values schema refusing bad values, the operator flags the chart passes existing, and
manifests/install.yaml being what the chart renders."""

import importlib.util
import os
import subprocess
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_python import Chart

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "kandle-operator"
OPERATOR = Path(os.environ.get("KANDLE_OPERATOR_BIN", ROOT / "target" / "debug" / "kandle-operator"))
VERSIONS = [f"1.{minor}.0" for minor in range(30, 37)]

VALUE_SETS = {
    "defaults": None,
    "one-namespace-ha": {"watchNamespace": "ml", "replicaCount": 2, "leaderElection": {"leaseDurationSeconds": 30},
                         "logFormat": "text", "logLevel": "debug"},
    "monitoring-keda": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
                        "networkPolicy": {"enabled": True, "metricsNamespaceSelector":
                                          {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                        "autoscalingModes": {"hpa": False, "keda": True}},
    "custom-placement": {"image": {"repository": "registry.example/kandle-operator", "tag": "dev", "pullPolicy": "Always"},
                         "imagePullSecrets": [{"name": "regcred"}],
                         "serviceAccount": {"create": False, "name": "ops"}, "serverImage": "registry.example/kandle-server:dev",
                         "nodeSelector": {"kubernetes.io/os": "linux"}, "priorityClassName": "system-cluster-critical",
                         "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
                         "metrics": {"service": {"enabled": False}}},
}


def render(values):
    chart = Chart.load(CHART_DIR)
    out = chart.render(values, name="kandle-operator", namespace="kandle-system", is_install=True)
    objects = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        objects += [d for d in yaml.safe_load_all(text) if d]
    return objects


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def operator_args(objects):
    (dep,) = by_kind(objects, "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_lint_is_clean():
    report = helm_python.lint(CHART_DIR, strict=True)
    assert report["total_charts_linted"] == 1 and not report["errors"], report
    problems = [m for m in report.get("messages") or [] if m.get("severity") not in ("INFO", "info", 1)]
    assert not problems, problems


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate_against_kubernetes(name):
    objects = render(VALUE_SETS[name])
    assert by_kind(objects, "Deployment")
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"][0]["port"] == "http-metrics"
            continue
        for v in VERSIONS:
            kubernetes_validate.validate(obj, v, strict=True)


def test_defaults_are_cluster_wide_single_replica_least_privilege():
    objects = render(None)
    (role,) = by_kind(objects, "ClusterRole")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("kandle.dev", "llmdeployments")] == {"list", "watch"}
    assert verbs[("kandle.dev", "llmdeployments/status")] == {"patch"}
    assert verbs[("", "pods")] == {"list"}, "the autoscaler lists pods, never writes them"
    assert ("autoscaling", "horizontalpodautoscalers") in verbs and ("keda.sh", "scaledobjects") not in verbs
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    lease_role = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("leader-election")][0]
    assert lease_role["rules"][0]["resources"] == ["leases"]
    assert "--leader-elect" not in operator_args(objects)
    (dep,) = by_kind(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {e["name"] for e in c["env"]} >= {"KANDLE_SERVER_IMAGE", "POD_NAME", "POD_NAMESPACE"}
    assert c["image"] == "ghcr.io/kandle-dev/kandle-operator:0.1.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_more_replicas_elect_a_leader_and_one_namespace_uses_a_role():
    objects = render(VALUE_SETS["one-namespace-ha"])
    args = operator_args(objects)
    assert "--leader-elect" in args and "--leader-election-lease-duration=30" in args
    assert not by_kind(objects, "ClusterRole")
    watched = [r for r in by_kind(objects, "Role") if r["metadata"].get("namespace") == "ml"]
    assert watched, "RBAC for the watched namespace only"
    env = {e["name"]: e.get("value") for e in by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WATCH_NAMESPACE"] == "ml"


def test_keda_and_monitoring_values():
    objects = render(VALUE_SETS["monitoring-keda"])
    (role,) = by_kind(objects, "ClusterRole")
    groups = {g for rule in role["rules"] for g in rule["apiGroups"]}
    assert "keda.sh" in groups and "autoscaling" not in groups
    assert by_kind(objects, "ServiceMonitor")[0]["metadata"]["labels"]["release"] == "kube-prometheus"
    assert by_kind(objects, "NetworkPolicy")


def test_the_flags_the_chart_passes_exist():
    help_text = subprocess.run([str(OPERATOR), "run", "--help"], capture_output=True, text=True, check=True).stdout
    for name, values in VALUE_SETS.items():
        args = operator_args(render(values))
        assert args[0] == "run"
        for a in args[1:]:
            assert a.split("=")[0] in help_text, f"{name}: {a} is not a flag of kandle-operator run"
        env = by_kind(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
        for e in env:
            if e["name"] not in ("RUST_LOG", "POD_NAME"):
                assert f"env: {e['name']}=" in help_text, f"{name}: {e['name']} is not read by the operator"


@pytest.mark.parametrize("bad", [
    {"replicaCount": 0},
    {"logFormat": "xml"},
    {"watchNamespace": "Not_A_Namespace"},
    {"image": {"repository": ""}},
    {"metrics": {"serviceMonitor": {"interval": "often"}}},
    {"unknownKey": True},
])
def test_values_schema_rejects_bad_values(bad):
    chart = Chart.load(CHART_DIR)
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(bad)
    with pytest.raises(helm_python.HelmError):
        chart.render(bad, name="kandle-operator", namespace="kandle-system")


def test_chart_crd_is_the_generated_one():
    assert (CHART_DIR / "crds" / "llmdeployment.yaml").read_text() == (ROOT / "crds" / "llmdeployment.yaml").read_text()


def test_install_yaml_is_current_and_valid():
    spec = importlib.util.spec_from_file_location("render_install", ROOT / "scripts" / "render-install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "manifests" / "install.yaml").read_text() == module.render_install(), \
        "manifests/install.yaml is stale: run .venv/bin/python scripts/render-install.py"
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[1]["kind"] == "CustomResourceDefinition"
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # the CRD's own schema is checked by the operator tests
        for v in VERSIONS:
            kubernetes_validate.validate(doc, v, strict=True)


def test_rbac_grants_exactly_what_the_operator_calls():
    """operator/rbac.json is collected from the requests the operator sends in its Rust tests
    (operator/tests/rbac.rs); the chart must grant those verbs and nothing more."""
    import json
    needed = {(r["apiGroup"], r["resource"]): set(r["verbs"]) for r in json.loads((ROOT / "operator" / "rbac.json").read_text())["rules"]}
    for watch_namespace in ("", "ml"):
        objects = render({"autoscalingModes": {"hpa": True, "keda": True}, "watchNamespace": watch_namespace})
        granted = {}
        for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
            for rule in role["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        granted.setdefault((g, r), set()).update(rule["verbs"])
        assert granted == needed, f"granted minus needed: { {k: v - needed.get(k, set()) for k, v in granted.items() if v - needed.get(k, set())} }; " \
            f"needed minus granted: { {k: v - granted.get(k, set()) for k, v in needed.items() if v - granted.get(k, set())} }"
