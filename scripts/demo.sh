#!/usr/bin/env bash
# The demo: generate a short 720p dash-cam-sized clip with GStreamer, sample
# one frame per second from it, and print the zero-shot scene tags of each
# frame with the bundled tiny CLIP model. Output lands in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
mkdir -p "$out"
clip="$out/demo-clip.mp4"

if [ ! -s "$clip" ]; then
  echo "demo: generating $clip (4 s, 1280x720, 25 fps, H.264)" >&2
  gst-launch-1.0 -q videotestsrc pattern=smpte num-buffers=100 \
    ! video/x-raw,width=1280,height=720,framerate=25/1 \
    ! timeoverlay font-desc="Sans 48" ! videoconvert ! x264enc speed-preset=ultrafast \
    ! mp4mux ! filesink location="$clip"
fi

rm -f "$out"/frame-*.png
echo "demo: sampling 1 frame/s from $clip" >&2
gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videorate \
  ! video/x-raw,framerate=1/1 ! pngenc ! multifilesink location="$out/frame-%03d.png"

echo "demo: zero-shot scene tags (models/clip-tiny has random weights: the tags show the pipeline, not a trained model's opinion)" >&2
target/release/roadrep tag "$out"/frame-*.png
target/release/roadrep tag --json "$out"/frame-*.png > "$out/tags.json"
echo "demo: JSON with every score in $out/tags.json" >&2
