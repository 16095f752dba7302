#!/usr/bin/env bash
# The torch matrix behind `make compat`: each torch below in its own venv, with the torchvision
# that pairs with it, the pack's pins, the test tools and the pinned ComfyUI's requirements; on each:
#   1. the pure engine tests: tests/test_engine.py, tests/test_maps.py, tests/test_torch_compat.py
#      (the pack's arguments bound against each CUDA op's schema as that torch registers it) and
#      the CPU parts of tests/test_cuda.py;
#   2. a probe of the kernel route attention.sdpa settles on (tools/torch_matrix.py probe);
#   3. the pinned ComfyUI started in-process with the pack (host-check; a refusal is recorded);
#   4. sampling with capture torch.equal to stock on the tiny SD3 and Flux models
#      (tests/test_model_probe.py);
# then writes docs/compat.md (one row per torch, with the date and the machine).
#
# Not part of CI: each venv is a CUDA build of torch from PyPI (~3 GB to download, ~6 GB on disk;
# it runs on the CPU) and the whole matrix takes 25 to 40 minutes on 2 cores (38 min measured cold). Run it when the
# torch pin moves, when attention/sdpa.py changes how it calls torch's ops, and when a torch is
# released (add it to MATRIX below).
#
# Usage: tools/torch_matrix.sh [VERSION ...]   e.g. `tools/torch_matrix.sh 2.5 2.15` (default: all)
# Environment:
#   PYTHON=python3.11         the interpreter the venvs are made with
#   TORCH_MATRIX_DIR=DIR      venvs, logs and results (default ${XDG_CACHE_HOME:-~/.cache}/enfoque/torch-matrix)
#   TORCH_MATRIX_KEEP=1       keep each venv for a faster rerun (default: removed after its run)
#   TORCH_MATRIX_PIP_ARGS=..  extra pip arguments (an index, --find-links)
#   COMFYUI_PATH=DIR          the ComfyUI checkout (default: the one tests/host.py finds)
# A pip configuration that caps torch with a constraints file hides the newer releases: run with
# PIP_CONFIG_FILE=/dev/null there (pip then reads no configuration file).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# torch and the torchvision that pairs with it (the latest patch release of each minor on PyPI).
# torchvision 0.29.2 is the newest on PyPI and requires torch>=2.14: there is no 0.30 for torch 2.15.
MATRIX=(
  "2.5.1 0.20.1"
  "2.7.1 0.22.1"
  "2.9.1 0.24.1"
  "2.11.0 0.26.0"
  "2.14.1 0.29.1"
  "2.15.0 0.29.2"
)
PIN=2.14.1
# as tools/setup.sh pins them
PACK_PINS="numpy==2.4.6 safetensors==0.8.0 Pillow==13.0.0"
TEST_DEPS="pytest==9.2.0 hypothesis==6.170.17 requests==2.34.2"
PURE_TESTS="tests/test_engine.py tests/test_maps.py tests/test_torch_compat.py tests/test_cuda.py"
HOST_TESTS=(
  "tests/test_model_probe.py::test_capture_is_neutral_and_original_untouched[sd3]"
  "tests/test_model_probe.py::test_capture_is_neutral_and_original_untouched[flux]"
  "tests/test_model_probe.py::test_sdpa_backend_fused_path[sd3]"
  "tests/test_model_probe.py::test_sdpa_backend_fused_path[flux]"
)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
work=${TORCH_MATRIX_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/enfoque/torch-matrix}
results=$work/results
# shellcheck disable=SC2206
pip_args=(${TORCH_MATRIX_PIP_ARGS:-})
say() { echo "torch-matrix: $*"; }

comfy=$("$PY" -c 'import sys; sys.path.insert(0, "tests"); import host; p = host.find_comfyui(); print(p or "")' 2>/dev/null)
comfy_commit=""
if [[ -n $comfy ]]; then
  comfy_commit=$(git -C "$comfy" rev-parse HEAD 2>/dev/null || basename "$comfy" | sed 's/^comfyui-//')
  say "ComfyUI host: $comfy"
else
  say "no ComfyUI host found (COMFYUI_PATH or tools/setup.sh): the host steps are recorded as not run"
fi

selected=()
if (($#)); then
  for want in "$@"; do
    found=""
    for entry in "${MATRIX[@]}"; do
      v=${entry%% *}
      if [[ $v == "$want" || $v == "$want".* ]]; then selected+=("$entry"); found=1; fi
    done
    [[ -n $found ]] || { say "torch $want is not in the matrix (${MATRIX[*]%% *}); add it to MATRIX in $0" >&2; exit 2; }
  done
else
  selected=("${MATRIX[@]}")
fi

helper() { "$1" tools/torch_matrix.py "${@:2}"; }

run_version() {
  local tv=$1 vv=$2
  local d=$results/$tv venv=$work/venv-$tv t0=$SECONDS
  local py=$venv/bin/python cons=$work/constraints-$tv.txt log
  rm -rf "$d"; mkdir -p "$d"
  say "torch $tv with torchvision $vv: $venv"
  helper "$PY" meta --out "$d/meta.json" torch="$tv" torchvision="$vv" comfyui_commit="$comfy_commit" \
    comfyui_version="$( [[ -n $comfy ]] && sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy/comfyui_version.py")"
  printf 'torch==%s\ntorchvision==%s\n' "$tv" "$vv" >"$cons"

  # 1. install: the torch pair, the pack's pins and the test tools; then ComfyUI's requirements
  [[ -x $py ]] || "$PY" -m venv "$venv"
  log=$d/install.log
  # shellcheck disable=SC2086
  if "$py" -m pip install -q --disable-pip-version-check "${pip_args[@]}" -c "$cons" \
      "torch==$tv" "torchvision==$vv" $PACK_PINS $TEST_DEPS >"$log" 2>&1; then
    echo ok >"$d/pure-install.txt"
  else
    grep -E 'ERROR|error' "$log" | tail -4 >"$d/pure-install.txt"
    [[ -s $d/pure-install.txt ]] || tail -4 "$log" >"$d/pure-install.txt"
    say "torch $tv did not install: $(head -c 300 "$d/pure-install.txt")"
  fi
  if [[ $(cat "$d/pure-install.txt") == ok && -n $comfy ]]; then
    local reqs
    reqs=$(grep -vE '^\s*(#|$)|^torch(audio|vision)?\s*$' "$comfy/requirements.txt" | tr '\n' ' ')
    # shellcheck disable=SC2086
    if "$py" -m pip install -q --disable-pip-version-check "${pip_args[@]}" -c "$cons" $reqs $PACK_PINS \
        >>"$log" 2>&1; then
      echo ok >"$d/host-install.txt"
    else
      grep -E 'ERROR|error' "$log" | tail -4 >"$d/host-install.txt"
      say "ComfyUI's requirements did not install beside torch $tv: $(head -c 300 "$d/host-install.txt")"
    fi
  fi
  if [[ $(cat "$d/pure-install.txt") == ok ]]; then
    helper "$PY" meta --out "$d/meta.json" \
      torch_installed="$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))')" \
      torchvision_installed="$("$py" -c 'import importlib.metadata as m; print(m.version("torchvision"))')"

    # 2. the pure tests, CPU parts of the kernel tests included
    say "torch $tv: pure tests"
    # shellcheck disable=SC2086
    ENFOQUE_GPU_CHECK_DEVICE=cpu ENFOQUE_VENV=$venv COMFYUI_PATH=$comfy "$py" -m pytest -q -p no:cacheprovider \
      --junitxml="$d/pure.xml" $PURE_TESTS >"$d/pure.log" 2>&1
    tail -1 "$d/pure.log"

    # 3. the kernel route on this torch
    helper "$py" probe --out "$d/probe.json" >"$d/probe.log" 2>&1 || say "torch $tv: the probe failed (see $d/probe.log)"

    # 4. ComfyUI with this torch, then sampling with capture against stock
    if [[ -n $comfy && $(cat "$d/host-install.txt" 2>/dev/null) == ok ]]; then
      if helper "$py" host-check --comfy "$comfy" --out "$d/host-check.json" >"$d/host-check.log" 2>&1; then
        say "torch $tv: sampling tests on tiny SD3 and Flux"
        ENFOQUE_VENV=$venv COMFYUI_PATH=$comfy "$py" -m pytest -q -p no:cacheprovider --junitxml="$d/host.xml" \
          "${HOST_TESTS[@]}" >"$d/host.log" 2>&1
        tail -1 "$d/host.log"
      else
        say "torch $tv: the pinned ComfyUI does not start (see $d/host-check.json)"
        # ComfyUI imports comfy-kitchen as optional (fp8/fp4): where it is what fails with this torch,
        # measure the pack on ComfyUI without it too (the table says so)
        if grep -q '"comfy_kitchen"' "$d/host-check.json" && "$py" -m pip uninstall -q -y comfy-kitchen >>"$log" 2>&1 \
            && helper "$py" host-check --comfy "$comfy" --without comfy-kitchen --out "$d/host-check-without.json" \
              >"$d/host-check-without.log" 2>&1; then
          say "torch $tv: sampling tests on tiny SD3 and Flux, ComfyUI without comfy-kitchen"
          ENFOQUE_VENV=$venv COMFYUI_PATH=$comfy "$py" -m pytest -q -p no:cacheprovider --junitxml="$d/host.xml" \
            "${HOST_TESTS[@]}" >"$d/host.log" 2>&1
          tail -1 "$d/host.log"
        fi
      fi
    fi
  fi
  helper "$PY" meta --out "$d/meta.json" seconds=$((SECONDS - t0))
  if [[ ${TORCH_MATRIX_KEEP:-0} != 1 ]]; then rm -rf "$venv"; fi
  say "torch $tv: done in $((SECONDS - t0)) s"
}

mkdir -p "$results"
for entry in "${selected[@]}"; do
  # shellcheck disable=SC2086
  run_version $entry
done

versions=()
for entry in "${MATRIX[@]}"; do versions+=("${entry%% *}"); done
helper "$PY" table --results "$results" --pin "$PIN" --out docs/compat.md "${versions[@]}"
say "wrote docs/compat.md (pin: torch $PIN); results and logs in $results"
