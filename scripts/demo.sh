#!/usr/bin/env bash
# The README's main job on the built-in scene. Each step is a plain `sgvla` command you can run yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${SGVLA_DEMO_OUT:-outputs/demo}"
EPISODES="${SGVLA_DEMO_EPISODES:-5}"
export PATH="$PWD/.venv/bin:$PATH"
step() { printf '\n==> %s\n' "$*"; }

step "1/1 scripted expert demonstrations on the built-in scene (mini_kitchen)"
sgvla demos --task mini_kitchen --subtask all --episodes "$EPISODES" --out "$OUT/demos"
echo "demos written to $OUT/demos"
