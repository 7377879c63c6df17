#!/usr/bin/env bash
# One idempotent set-up step shared by `make demo`, `make test` and CI.
#   1. a Vulkan driver SAPIEN accepts (lavapipe from bookworm-backports when no GPU driver exists);
#   2. .venv with torch (the local CPU build on machines without a GPU) and the sgvla package.
# Re-running is fast: each step checks before it acts, and the pip step is skipped while
# pyproject.toml and this script are unchanged (stamp file in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${SGVLA_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
log() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  log "need root for: $*  (re-run as root or install it yourself)"; return 1; fi; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

mesa_ok() {  # lavapipe from Mesa >= 24.3 (older ones are rejected by SAPIEN)
  local v; v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) || return 1
  dpkg --compare-versions "${v#*:}" ge 24.3
}

install_lavapipe() {
  command -v apt-get >/dev/null || { log "no apt-get: install Mesa >= 24.3 (lavapipe) by hand"; return 1; }
  local src=/etc/apt/sources.list.d/sgvla-backports.sources uri
  if [ ! -f "$src" ]; then
    # Reuse the mirror this machine already uses for Debian; never hard-code a host.
    uri=$(grep -h -m1 -E '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
    [ -n "$uri" ] || uri=$(grep -h -m1 -E '^deb .*debian/? bookworm' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
    [ -n "$uri" ] || { log "cannot find the Debian mirror in apt sources; add bookworm-backports by hand"; return 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | as_root tee "$src" >/dev/null
  fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
}

nvidia_icd_ok() {  # CUDA alone does not render: SAPIEN needs the driver's Vulkan ICD too
  ls /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json >/dev/null 2>&1
}

if have_gpu && ! nvidia_icd_ok; then
  log "WARNING: an NVIDIA GPU but no NVIDIA Vulkan ICD (nvidia_icd.json): SAPIEN cannot render on it."
  log "  install the Vulkan part of the driver (e.g. libnvidia-gl-<driver version>); \`sgvla doctor\` checks it"
elif have_gpu || mesa_ok; then
  log "rendering driver: ok"
else
  log "installing Mesa's software Vulkan driver (lavapipe) from bookworm-backports"
  install_lavapipe
  mesa_ok || { log "Mesa >= 24.3 still missing; see README 'Troubleshooting'"; exit 1; }
fi

[ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
stamp=.venv/.sgvla-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first: the pinned version resolves to the local CPU build where there is no GPU, so
  # the package's own `torch` requirement is then already satisfied and no CUDA wheel is pulled.
  pipq() { .venv/bin/python -m pip install -q "$@" 2>&1 | grep -v -E '^WARNING: Location|^ *$' || true; }
  pipq "torch==${TORCH_VERSION}"
  pipq -e ".[dev]"
  # The released openpi client, which the policy-server tests drive sgvla serve with. Without its
  # own pins (they would downgrade numpy): its websocket client needs only websockets and msgpack.
  pipq --no-deps "openpi-client==0.1.2"
  .venv/bin/python -c "import torch, mani_skill, sgvla" || { log "install failed (see pip output above)"; exit 1; }
  echo "$want" > "$stamp"
  log "installed sgvla into .venv"
else
  log ".venv up to date"
fi
