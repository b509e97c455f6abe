#!/usr/bin/env bash
# Everything CI runs: Rust unit/integration tests, then the black-box HTTP tests (the real
# binary on the real SmolLM2 model, driven by the official openai client) in a local venv.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh
cargo build --workspace
# The e2e suite would run `cargo build --workspace --bins` itself; from inside `cargo test`
# that was seen to rebuild ring, rustls and kube-client (cause not pinned down), and the
# binaries were just built above.
KANDLE_E2E_SKIP_BUILD=1 cargo test --workspace
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r server/tests/http/requirements.txt
.venv/bin/python -m pytest -q server/tests/http operator/tests/schemas charts/tests
