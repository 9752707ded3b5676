#!/usr/bin/env bash
# Side by side, one run: `roadrep replay` in each decode mode vs the Python
# pipeline a user would write (../shared/bench/python_ref.py: OpenCV decode,
# PIL preprocessing, ORT batch 8), on the same real-footage clip
# (../shared/bench/make_real_clip.sh) and the same model file, fp32 and int8.
# Runs alternate between the two; each is timed by /usr/bin/time (wall, user +
# system CPU seconds, peak RSS). Prints a Markdown table for BENCHMARKS.md.
#
# usage: scripts/bench-vs-python.sh [MODEL_DIR]   (default models/clip-random-full)
# env:   ROADREP (binary, default target/release/roadrep), CLIP, VENV
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
model=$(realpath "${1:-models/clip-random-full}")
bin=$(realpath "${ROADREP:-target/release/roadrep}")
shared=$(realpath ../shared/bench)
clip=${CLIP:-target/bench/real720p25.mp4}
venv=${VENV:-target/bench/pyref}
mkdir -p "$(dirname "$clip")"
if [ ! -f "$clip" ] || [ ! -x "$venv/bin/python" ]; then
  "$shared/make_real_clip.sh" "$clip" "$venv" >&2
fi
clip=$(realpath "$clip")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

config() { # precision -> config path (a fresh store each run)
  local c=$work/roadrep-$1.toml
  cat >"$c" <<EOF
[models]
clip = "$model"
precision = "$1"
[tagging]
labels = "$root/config/labels.toml"
cache_dir = "$work/cache"
[store]
path = "$work/store"
EOF
  echo "$c"
}

# run LABEL DECODE PRECISION FPS CMD...: one timed run, one table row.
run() {
  local label=$1 decode=$2 precision=$3 fps=$4
  shift 4
  rm -rf "$work/store"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>&1 || {
    cat "$work/out" >&2
    exit 1
  }
  read -r wall user sys rss <"$work/time"
  local frames
  frames=$(grep -oE '(replay|python-ref): [0-9]+ frames' "$work/out" | tail -1 | grep -oE '[0-9]+')
  printf '| %s | %s | %s | %s | %s | %.1f | %.1f | %.0f |\n' "$label" "$decode" "$precision" \
    "$fps" "$frames" "$wall" "$(echo "$user + $sys" | bc)" "$((rss / 1024))"
}

python_run() { # precision fps
  local onnx=$model/image_encoder.onnx
  [ "$1" = int8 ] && onnx=$model/image_encoder.int8.onnx
  run python "every frame" "$1" "$2" "$venv/bin/python" "$shared/python_ref.py" "$onnx" "$clip" --fps "$2"
}

roadrep_run() { # decode precision fps
  run roadrep "$1" "$2" "$3" "$bin" -c "$(config "$2")" replay "$clip" --camera bench \
    --start 0 --fps "$3" --decode "$1"
}

# Warm up: page cache, label embeddings, ONNX Runtime's first load.
roadrep_run exact fp32 2 >/dev/null
python_run fp32 2 >/dev/null

echo "| pipeline | decode | precision | sampled fps | frames | wall s | CPU s | peak RSS MiB |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for precision in fp32 int8; do
  python_run "$precision" 2
  roadrep_run exact "$precision" 2
  roadrep_run fast "$precision" 2
  python_run "$precision" 0.5
  roadrep_run exact "$precision" 0.5
  roadrep_run keyframes "$precision" 0.5
done
