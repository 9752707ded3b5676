#!/usr/bin/env bash
# A/B of two roadrep variants on the real-footage clip: `roadrep replay` of
# each (a binary, and lines added to the config's [models] table), next to
# the Python pipeline, interleaved, ROUNDS rounds. Prints one line per run
# (wall s, CPU s, peak RSS MiB). The clip and Python venv are the ones
# bench-vs-python.sh makes.
#
# usage: scripts/bench-ab.sh [MODEL_DIR]   (default models/clip-random-full)
# env:   A_BIN, B_BIN (default: ROADREP, or target/release/roadrep)
#        A_MODELS, B_MODELS ([models] lines, e.g. "ort_spinning = true")
#        A_LABEL, B_LABEL, PREC (fp32|int8), ROUNDS (2), CLIP, VENV
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(realpath "${1:-models/clip-random-full}")
bin=${ROADREP:-target/release/roadrep}
a_bin=$(realpath "${A_BIN:-$bin}")
b_bin=$(realpath "${B_BIN:-$bin}")
a_label=${A_LABEL:-A}
b_label=${B_LABEL:-B}
shared=$(realpath ../shared/bench)
clip=${CLIP:-target/bench/real720p25.mp4}
venv=${VENV:-target/bench/pyref}
prec=${PREC:-fp32}
mkdir -p "$(dirname "$clip")"
if [ ! -f "$clip" ] || [ ! -x "$venv/bin/python" ]; then
  "$shared/make_real_clip.sh" "$clip" "$venv" >&2
fi
clip=$(realpath "$clip")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

config() { # NAME MODELS_LINES -> config path
  cat >"$work/c-$1.toml" <<E
[models]
clip = "$model"
precision = "$prec"
$2
[tagging]
labels = "$root/config/labels.toml"
cache_dir = "$work/cache"
[store]
path = "$work/store"
E
  echo "$work/c-$1.toml"
}
a_config=$(config a "${A_MODELS:-}")
b_config=$(config b "${B_MODELS:-}")

timed() { # LABEL CMD...
  local label=$1
  shift
  rm -rf "$work/store"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>&1 || {
    cat "$work/out" >&2
    exit 1
  }
  read -r wall user sys rss <"$work/time"
  echo "$prec $label: wall $wall s, CPU $(echo "$user + $sys" | bc) s, peak RSS $((rss / 1024)) MiB"
}

replay() { # LABEL BIN CONFIG FPS DECODE
  timed "roadrep $1 $5 $4 fps" "$2" -c "$3" replay "$clip" \
    --camera bench --start 0 --fps "$4" --decode "$5"
}

onnx=$model/image_encoder.onnx
[ "$prec" = int8 ] && onnx=$model/image_encoder.int8.onnx
replay "$b_label" "$b_bin" "$b_config" 2 exact >/dev/null # warm up
for _ in $(seq "${ROUNDS:-2}"); do
  timed "python 2 fps" "$venv/bin/python" "$shared/python_ref.py" "$onnx" "$clip" --fps 2
  for v in a b; do
    if [ $v = a ]; then set -- "$a_label" "$a_bin" "$a_config"; else set -- "$b_label" "$b_bin" "$b_config"; fi
    replay "$@" 2 exact
    replay "$@" 2 fast
    replay "$@" 0.5 keyframes
  done
done
