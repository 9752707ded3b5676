#!/usr/bin/env bash
# A/B of [models] ort_spinning on the real-footage clip: roadrep replay with
# ONNX Runtime's idle threads spinning and sleeping, next to the Python
# pipeline, interleaved, two rounds. Prints one line per run (wall s, CPU s,
# peak RSS MiB). The clip and Python venv are the ones bench-vs-python.sh makes.
#
# usage: scripts/bench-ort-spinning.sh [MODEL_DIR]   (default models/clip-random-full)
# env:   PREC (fp32|int8), ROADREP (binary), CLIP, VENV
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(realpath "${1:-models/clip-random-full}")
bin=$(realpath "${ROADREP:-target/release/roadrep}")
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

config() { # spinning -> config path
  cat >"$work/c-$1.toml" <<E
[models]
clip = "$model"
precision = "$prec"
ort_spinning = $1
[tagging]
labels = "$root/config/labels.toml"
cache_dir = "$work/cache"
[store]
path = "$work/store"
E
  echo "$work/c-$1.toml"
}

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

replay() { # SPINNING FPS DECODE
  timed "roadrep spinning=$1 $3 $2 fps" "$bin" -c "$(config "$1")" replay "$clip" \
    --camera bench --start 0 --fps "$2" --decode "$3"
}

onnx=$model/image_encoder.onnx
[ "$prec" = int8 ] && onnx=$model/image_encoder.int8.onnx
replay false 2 exact >/dev/null # warm up
for _ in 1 2; do
  timed "python 2 fps" "$venv/bin/python" "$shared/python_ref.py" "$onnx" "$clip" --fps 2
  for spinning in true false; do
    replay "$spinning" 2 exact
    replay "$spinning" 2 fast
    replay "$spinning" 0.5 keyframes
  done
done
