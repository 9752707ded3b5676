#!/usr/bin/env bash
# A/B of two roadrep variants on the real-footage clip: `roadrep replay` of
# each (a binary, and lines added to the config's [models] table), next to
# the Python pipeline, interleaved, ROUNDS rounds. Prints one line per run
# (wall s, CPU s, peak RSS MiB). The clip and Python venv are the ones
# bench-vs-python.sh uses (see bench-lib.sh).
#
# usage: scripts/bench-ab.sh [MODEL_DIR]   (default models/clip-random-full)
# env:   A_BIN, B_BIN (default: ROADREP, or target/release/roadrep)
#        A_MODELS, B_MODELS ([models] lines, e.g. "ort_spinning = true")
#        A_LABEL, B_LABEL, PREC (fp32|int8), ROUNDS (2), CLIP, VENV
source "$(dirname "$0")/bench-lib.sh"
bin=${ROADREP:-target/release/roadrep}
prec=${PREC:-fp32}
a_bin=$(realpath "${A_BIN:-$bin}")
b_bin=$(realpath "${B_BIN:-$bin}")
a=("${A_LABEL:-A}" "$a_bin" "$(config a "$prec" "${A_MODELS:-}")")
b=("${B_LABEL:-B}" "$b_bin" "$(config b "$prec" "${B_MODELS:-}")")

timed() { # LABEL CMD...
  local label=$1
  shift
  measure "$@"
  echo "$prec $label: wall $wall s, CPU $cpu s, peak RSS $rss_mib MiB"
}

replay() { # LABEL BIN CONFIG FPS DECODE
  timed "roadrep $1 $5 $4 fps" "$2" -c "$3" replay "$clip" \
    --camera bench --start 0 --fps "$4" --decode "$5"
}

replay "${b[@]}" 2 exact >/dev/null # warm up
for _ in $(seq "${ROUNDS:-2}"); do
  timed "python 2 fps" "$venv/bin/python" "$shared/python_ref.py" "$(python_onnx "$prec")" "$clip" --fps 2
  for v in a b; do
    if [ $v = a ]; then set -- "${a[@]}"; else set -- "${b[@]}"; fi
    replay "$@" 2 exact
    replay "$@" 2 fast
    replay "$@" 0.5 keyframes
  done
done
