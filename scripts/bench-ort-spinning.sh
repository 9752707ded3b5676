#!/usr/bin/env bash
# A/B of [models] ort_spinning on the real-footage clip (see bench-ab.sh):
# roadrep replay with ONNX Runtime's idle threads spinning and sleeping,
# next to the Python pipeline, interleaved, two rounds.
#
# usage: scripts/bench-ort-spinning.sh [MODEL_DIR]   (default models/clip-random-full)
# env:   PREC (fp32|int8), ROADREP (binary), CLIP, VENV
set -euo pipefail
A_LABEL=spinning=true A_MODELS="ort_spinning = true" \
  B_LABEL=spinning=false B_MODELS="ort_spinning = false" \
  exec "$(dirname "$0")/bench-ab.sh" "$@"
