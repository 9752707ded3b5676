# Sourced by bench-vs-python.sh and bench-ab.sh: the model (first argument,
# default models/clip-random-full), the real-footage clip and the Python
# pipeline's venv (made by ../shared/bench/make_real_clip.sh when missing),
# a work directory, a config per run and a timed run.
# env: CLIP, VENV
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
model=$(realpath "${1:-models/clip-random-full}")
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

# config NAME PRECISION [MODELS_LINES] -> config path (each run gets a fresh store)
config() {
  cat >"$work/$1.toml" <<E
[models]
clip = "$model"
precision = "$2"
${3:-}
[tagging]
labels = "$root/config/labels.toml"
cache_dir = "$work/cache"
[store]
path = "$work/store"
E
  echo "$work/$1.toml"
}

# measure CMD...: runs it on a fresh store; sets wall, cpu (user + system
# seconds) and rss_mib; its output is in $work/out.
measure() {
  rm -rf "$work/store"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/out" 2>&1 || {
    cat "$work/out" >&2
    exit 1
  }
  local user sys rss
  read -r wall user sys rss <"$work/time"
  cpu=$(echo "$user + $sys" | bc)
  rss_mib=$((rss / 1024))
}

# python_onnx PRECISION -> the image encoder file the Python pipeline loads
python_onnx() {
  if [ "$1" = int8 ]; then echo "$model/image_encoder.int8.onnx"; else echo "$model/image_encoder.onnx"; fi
}
