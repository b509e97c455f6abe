#!/usr/bin/env python3
"""Writes docs/llmdeployment-reference.md, the LLMDeployment field reference, from the
generated CRD's schema (so it cannot drift from what the API server enforces; a test fails
when the file is stale):

    python3 scripts/crd-reference.py
"""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Kubernetes' own types (pod affinity, tolerations, env…) are documented upstream; list the
# field, not its insides.
UPSTREAM = {"affinity", "tolerations", "env", "tokenSecretRef", "apiKeySecretRef", "configMapKeyRef", "conditions"}


def kind(s):
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"] if v is not None)
    t = s.get("type", "object")
    if t == "array":
        return f"[]{kind(s.get('items', {}))}"
    if s.get("x-kubernetes-int-or-string"):
        return "int or string"
    return {"integer": "int", "number": "number", "boolean": "bool"}.get(t, t)


def number(v):
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def limits(s):
    out = []
    for key, text in (("minimum", "≥ {}"), ("maximum", "≤ {}"), ("minLength", "length ≥ {}"), ("pattern", "matches `{}`")):
        if key in s:
            out.append(text.format(number(s[key])))
    for rule in s.get("x-kubernetes-validations", []):
        out.append(rule.get("message") or f"`{rule['rule']}`")
    return "; ".join(out)


def walk(schema, path, required, rows):
    for name, s in schema.get("properties", {}).items():
        p = f"{path}.{name}" if path else name
        desc = " ".join((s.get("description") or "").split()).replace("|", "\\|")
        req = "yes" if name in required else ""
        rows.append(f"| `{p}` | {kind(s)} | {req} | {desc} | {limits(s)} |")
        if name in UPSTREAM:
            continue
        inner = s.get("items", s) if s.get("type") == "array" else s
        walk(inner, p + ("[]" if s.get("type") == "array" else ""), set(inner.get("required", [])), rows)


def render():
    crd = yaml.safe_load((ROOT / "crds" / "llmdeployment.yaml").read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        "# LLMDeployment reference",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, kind `{crd['spec']['names']['kind']}`, short name "
        f"`{', '.join(crd['spec']['names'].get('shortNames', []))}`. Generated from `crds/llmdeployment.yaml` by "
        "`scripts/crd-reference.py`; do not edit.",
        "",
    ]
    for part in ("spec", "status"):
        s = schema["properties"][part]
        lines += [f"## {part}", ""]
        rules = limits({"x-kubernetes-validations": s.get("x-kubernetes-validations", [])})
        if rules:
            lines += [f"Rules: {rules}", ""]
        lines += ["| field | type | required | description | validation |", "|---|---|---|---|---|"]
        rows = []
        walk(s, part, set(s.get("required", [])), rows)
        lines += rows + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    (ROOT / "docs" / "llmdeployment-reference.md").write_text(render())
