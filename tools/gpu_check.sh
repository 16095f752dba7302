#!/usr/bin/env bash
# The GPU check: CUDA tests, engine and sampling benchmarks (bf16 rows), real-size sampling;
# one report under out/gpu/. At most 8 minutes on one H100.
#   tools/gpu_check.sh            # where torch sees an NVIDIA GPU
#   tools/gpu_check.sh --dry-run  # the same plan on the CPU at tiny sizes (CI runs this)
# Python: $PYTHON if set, else the project's venv (ENFOQUE_VENV or .venv) if it imports torch,
# else python3. See tools/gpu_check.py for the plan and how to run it on a bare machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [[ -z $py ]]; then
  for c in "${ENFOQUE_VENV:-.venv}/bin/python" python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then py=$c; break; fi
  done
fi
if [[ -z $py ]]; then
  echo "gpu_check: no Python with torch found (set PYTHON=/path/to/python)" >&2
  exit 2
fi
exec "$py" tools/gpu_check.py "$@"
