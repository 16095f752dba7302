#!/usr/bin/env bash
# Builds the development environment: .venv with the pinned torch pair and
# ComfyUI's requirements, resolves a ComfyUI checkout (COMFYUI_PATH, then the
# per-user cache, then a git clone at the pinned commit) and links the pack
# into its custom_nodes. Re-running is fast and changes nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

COMFY_COMMIT=3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce
COMFY_URL=https://github.com/comfyanonymous/ComfyUI.git
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
TEST_DEPS="pytest>=8 hypothesis ruff requests"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
venv=$here/.venv
cache=${XDG_CACHE_HOME:-$HOME/.cache}/enfoque

say() { echo "setup: $*"; }

# 1. ComfyUI
COMFY_OLDEST_COMMIT=a125cd84b054a57729b5eecab930ca9408719832
# resolve_host VAR COMMIT: the checkout named by $VAR, else the cache, else a clone at COMMIT
resolve_host() {
  local var=$1 commit=$2 given=${!1:-}
  if [[ -n $given ]]; then
    if [[ -f $given/comfy/model_management.py ]]; then echo "$given"; return 0; fi
    say "$var=$given is not a ComfyUI checkout; ignoring it" >&2
  fi
  local c=$cache/comfyui-$commit
  if [[ -f $c/comfy/model_management.py ]]; then echo "$c"; return 0; fi
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
if comfy=$(resolve_host COMFYUI_PATH "$COMFY_COMMIT"); then
  say "ComfyUI host: $comfy"
else
  comfy=""
  cat >&2 <<MSG
setup: no ComfyUI host found. Provide one of:
  - COMFYUI_PATH=/path/to/ComfyUI (a checkout, ideally at $COMFY_COMMIT)
  - a checkout at $cache/comfyui-$COMFY_COMMIT
  - network access to $COMFY_URL for a clone
Host tests will be skipped with this reason.
MSG
fi

# 2. virtual environment
reqs=""
[[ -n $comfy ]] && reqs=$(grep -vE '^\s*(#|$)|^torch(audio|vision)?\s*$' "$comfy/requirements.txt" | tr '\n' ' ')
stamp_want=$(printf '%s\n' "$TORCH_PIN" "$TEST_DEPS" "$reqs" | sha1sum | cut -c1-12)
if [[ ! -x $venv/bin/python ]]; then
  say "creating $venv with $PY"
  "$PY" -m venv "$venv"
fi
if [[ $(cat "$venv/.enfoque-stamp" 2>/dev/null) != "$stamp_want" ]]; then
  say "installing torch pair, ComfyUI requirements and test tools (a few minutes the first time)"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q $TORCH_PIN
  # shellcheck disable=SC2086
  [[ -n $reqs ]] && "$venv/bin/pip" install -q $TORCH_PIN $reqs
  "$venv/bin/pip" install -q $TORCH_PIN $TEST_DEPS
  echo "$stamp_want" >"$venv/.enfoque-stamp"
else
  say "virtual environment up to date ($venv)"
fi

# 3. the oldest supported host (ComfyUI 0.3.64) for tests/test_oldest_host.py
if oldest=$(resolve_host COMFYUI_OLDEST_PATH "$COMFY_OLDEST_COMMIT"); then
  say "oldest supported host (ComfyUI 0.3.64): $oldest"
  printf '%s\n' "$oldest" >"$venv/.comfyui-oldest-path"
else
  rm -f "$venv/.comfyui-oldest-path"
  say "no ComfyUI 0.3.64 checkout (COMFYUI_OLDEST_PATH, $cache/comfyui-$COMFY_OLDEST_COMMIT, or a clone): tests/test_oldest_host.py will be skipped"
fi

# 4. the pack in the host's custom_nodes
if [[ -n $comfy ]]; then
  link=$comfy/custom_nodes/enfoque
  if [[ $(readlink "$link" 2>/dev/null) != "$here" ]]; then
    rm -f "$link"; ln -s "$here" "$link"; say "linked $link -> $here"
  fi
  printf '%s\n' "$comfy" >"$venv/.comfyui-path"
else
  rm -f "$venv/.comfyui-path"
fi
