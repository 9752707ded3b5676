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
source "$(dirname "$0")/bench-lib.sh"
bin=$(realpath "${ROADREP:-target/release/roadrep}")

# run LABEL DECODE PRECISION FPS CMD...: one timed run, one table row.
run() {
  local label=$1 decode=$2 precision=$3 fps=$4
  shift 4
  measure "$@"
  local frames
  frames=$(grep -oE '(replay|python-ref): [0-9]+ frames' "$work/out" | tail -1 | grep -oE '[0-9]+')
  printf '| %s | %s | %s | %s | %s | %.1f | %.1f | %.0f |\n' "$label" "$decode" "$precision" \
    "$fps" "$frames" "$wall" "$cpu" "$rss_mib"
}

python_run() { # precision fps
  run python "every frame" "$1" "$2" "$venv/bin/python" "$shared/python_ref.py" "$(python_onnx "$1")" "$clip" --fps "$2"
}

roadrep_run() { # decode precision fps
  run roadrep "$1" "$2" "$3" "$bin" -c "$(config "roadrep-$2" "$2")" replay "$clip" --camera bench \
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
