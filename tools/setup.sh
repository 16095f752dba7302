#!/usr/bin/env bash
# Builds the development environment: a venv with the pinned torch pair, the
# pack's own needs (numpy, safetensors, Pillow) and the test tools, pinned; then
# resolves a ComfyUI checkout (COMFYUI_PATH, then the per-user cache, then a git
# clone at the pinned commit) and installs its requirements. Without any
# checkout it still installs the above, so the pure tests run and the host tests
# are skipped with the reason. Re-running is fast and changes nothing.
#
# Switches (environment):
#   COMFYUI_PATH=DIR         the ComfyUI checkout to use (COMFYUI_OLDEST_PATH: the 0.3.64 one)
#   ENFOQUE_NO_CLONE=1       never git-clone ComfyUI (cache or COMFYUI_PATH only)
#   ENFOQUE_VENV=DIR         the venv to build and record the host in (default: .venv)
#   ENFOQUE_LINK=1           also link this clone into the host's custom_nodes/enfoque
#                            (`make link`); setup never touches custom_nodes otherwise
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

COMFY_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
COMFY_OLDEST_COMMIT=a125cd84b054a57729b5eecab930ca9408719832
COMFY_URL=https://github.com/comfyanonymous/ComfyUI.git
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
# What the pack and its pure tests import, at the versions the pinned ComfyUI's
# requirements.txt (numpy>=1.25.0, safetensors>=0.4.2, Pillow) resolves to; also
# installed beside ComfyUI's requirements, so both paths give the same versions.
PACK_PINS="numpy==2.4.6 safetensors==0.8.0 Pillow==13.0.0"
TEST_DEPS="pytest==9.2.0 hypothesis==6.170.17 ruff==0.17.6 requests==2.34.2 comfy-cli==1.23.0"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
venv=${ENFOQUE_VENV:-$here/.venv}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/enfoque
no_clone=${ENFOQUE_NO_CLONE:-0}

say() { echo "setup: $*"; }

# 1. ComfyUI
# resolve_host VAR COMMIT: the checkout named by $VAR, else the cache, else a clone at COMMIT
resolve_host() {
  local var=$1 commit=$2 given=${!1:-}
  if [[ -n $given ]]; then
    if [[ -f $given/comfy/model_management.py ]]; then echo "$given"; return 0; fi
    say "$var=$given is not a ComfyUI checkout; ignoring it" >&2
  fi
  local c=$cache/comfyui-$commit
  if [[ -f $c/comfy/model_management.py ]]; then echo "$c"; return 0; fi
  if [[ $no_clone == 1 ]]; then return 1; fi
  if command -v git >/dev/null 2>&1; then
    local tmp=$cache/.clone-$commit-$$
    mkdir -p "$cache"
    if timeout 300 git clone -q --filter=blob:none "$COMFY_URL" "$tmp" >/dev/null 2>&1 \
      && git -C "$tmp" checkout -q "$commit" >/dev/null 2>&1; then
      mv "$tmp" "$c"; echo "$c"; return 0
    fi
    rm -rf "$tmp"
  fi
  return 1
}
if [[ $no_clone == 1 ]]; then clone_hint="(cloning is disabled: ENFOQUE_NO_CLONE=1)"; else clone_hint="(a clone failed)"; fi
if comfy=$(resolve_host COMFYUI_PATH "$COMFY_COMMIT"); then
  say "ComfyUI host: $comfy"
else
  comfy=""
  cat >&2 <<MSG
setup: no ComfyUI host found. Provide one of:
  - COMFYUI_PATH=/path/to/ComfyUI (a checkout, ideally at $COMFY_COMMIT)
  - a checkout at $cache/comfyui-$COMFY_COMMIT
  - network access to $COMFY_URL for a clone $clone_hint
Installing what the pure tests need; host tests will be skipped with this reason.
MSG
fi

# 2. virtual environment: a "base" layer (torch pair, pack pins, test tools) and,
# with a host, a "host" layer (ComfyUI's requirements); the stamp names each
# layer installed, so a venv built with a host also serves a run without one.
reqs=""
[[ -n $comfy ]] && reqs=$(grep -vE '^\s*(#|$)|^torch(audio|vision)?\s*$' "$comfy/requirements.txt" | tr '\n' ' ')
stamp_of() { printf '%s\n' "$@" | sha1sum | cut -c1-12; }
want="base:$(stamp_of "$TORCH_PIN" "$PACK_PINS" "$TEST_DEPS")"
[[ -n $reqs ]] && want="$want host:$(stamp_of "$TORCH_PIN" "$PACK_PINS" "$reqs")"
have=" $(tr '\n' ' ' 2>/dev/null <"$venv/.enfoque-stamp" || true) "
missing=""
for layer in $want; do [[ $have == *" $layer "* ]] || missing="$missing $layer"; done
if [[ ! -x $venv/bin/python ]]; then
  say "creating $venv with $PY"
  "$PY" -m venv "$venv"
fi
if [[ -n $missing ]]; then
  say "installing the torch pair, numpy/safetensors/Pillow${reqs:+, the ComfyUI requirements} and test tools (a few minutes the first time)"
  "$venv/bin/pip" install -q --upgrade pip || say "could not upgrade pip; going on with $("$venv/bin/pip" --version 2>/dev/null | cut -d' ' -f1-2)"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q $TORCH_PIN $PACK_PINS $TEST_DEPS
  # shellcheck disable=SC2086
  [[ -n $reqs ]] && "$venv/bin/pip" install -q $TORCH_PIN $PACK_PINS $reqs
  printf '%s\n' $want >"$venv/.enfoque-stamp"
else
  say "virtual environment up to date ($venv)"
fi

# 3. the oldest supported host (ComfyUI 0.3.64) for tests/test_oldest_host.py
if oldest=$(resolve_host COMFYUI_OLDEST_PATH "$COMFY_OLDEST_COMMIT"); then
  say "oldest supported host (ComfyUI 0.3.64): $oldest"
  printf '%s\n' "$oldest" >"$venv/.comfyui-oldest-path"
else
  rm -f "$venv/.comfyui-oldest-path"
  say "no ComfyUI 0.3.64 checkout (COMFYUI_OLDEST_PATH, $cache/comfyui-$COMFY_OLDEST_COMMIT, or a clone $clone_hint): tests/test_oldest_host.py will be skipped"
fi

# 4. where the tests find the host (tests/host.py reads $venv/.comfyui-path). The
# tests load the pack from links in their own temp folders, never from the host's
# custom_nodes; linking this clone there is opt-in (ENFOQUE_LINK=1, `make link`).
if [[ -n $comfy ]]; then
  printf '%s\n' "$comfy" >"$venv/.comfyui-path"
else
  rm -f "$venv/.comfyui-path"
fi
if [[ ${ENFOQUE_LINK:-0} == 1 ]]; then
  if [[ -z $comfy ]]; then
    say "ENFOQUE_LINK=1 but there is no ComfyUI host to link into" >&2; exit 1
  fi
  link=$comfy/custom_nodes/enfoque
  if [[ -e $link && ! -L $link ]]; then
    say "$link exists and is not a link; not replacing it" >&2; exit 1
  elif [[ $(readlink "$link" 2>/dev/null) == "$here" ]]; then
    say "$link already links to this clone"
  else
    old=$(readlink "$link" 2>/dev/null || true)
    rm -f "$link"; ln -s "$here" "$link"
    say "linked $link -> $here${old:+ (it linked to $old)}; ComfyUI started from $comfy now loads this clone"
  fi
fi
