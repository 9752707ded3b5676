#!/usr/bin/env bash
# The demo: generate a short 720p dash-cam-sized clip with GStreamer, replay
# it into a store (2 frames/s: embeddings, zero-shot tags, scene segments,
# keyframe captions), summarise it, search it by text, and tag a few still
# frames. Output lands in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo-out
bin=target/release/roadrep
mkdir -p "$out"
clip="$out/demo-scenes.mp4"

if [ ! -s "$clip" ]; then
  echo "demo: generating $clip (3 scenes: 4 + 3 + 3 s, 1280x720, 25 fps, H.264)" >&2
  caps="video/x-raw,width=1280,height=720,framerate=25/1"
  gst-launch-1.0 -q concat name=c \
    ! timeoverlay font-desc="Sans 48" ! videoconvert ! x264enc speed-preset=ultrafast \
    ! mp4mux ! filesink location="$clip" \
    videotestsrc pattern=ball num-buffers=100 ! $caps ! c. \
    videotestsrc pattern=smpte num-buffers=75 ! $caps ! c. \
    videotestsrc pattern=pinwheel num-buffers=75 ! $caps ! c.
fi

echo "demo: models/clip-tiny and models/blip-tiny have random weights: tags, scores and captions show the pipeline, not a trained model's opinion" >&2
echo "demo: replaying $clip at 2 frames/s into $out/store" >&2
$bin replay "$clip" --camera front --fps 2 --store "$out/store"
echo "demo: replaying again stores nothing new (idempotent)" >&2
$bin replay "$clip" --camera front --fps 2 --store "$out/store"

echo "demo: summary: one line per scene segment, with its keyframe caption" >&2
$bin summary "$clip" --camera front --store "$out/store"

echo "demo: text search 'a foggy highway at night', front camera, top 3" >&2
$bin search "a foggy highway at night" --camera front --top 3 --store "$out/store"

rm -f "$out"/frame-*.png
gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! videorate \
  ! video/x-raw,framerate=1/2 ! pngenc ! multifilesink location="$out/frame-%03d.png"
echo "demo: zero-shot tags of still frames" >&2
$bin tag "$out"/frame-*.png
