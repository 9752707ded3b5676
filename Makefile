# roadrep: the two commands a fresh Debian 12 machine needs.
#   make demo   set up, build, and tag the frames of a clip the project generates
#   make test   set up, then formatting, lints and the whole test suite
# Both install what is missing (Debian packages, .venv with onnxruntime) and
# are quick when everything is already there.

SHELL := /bin/bash
CARGO ?= cargo
# ort loads onnxruntime at run time (feature load-dynamic); setup installs it here.
export ORT_DYLIB_PATH ?= $(CURDIR)/.venv/ort/libonnxruntime.so

.PHONY: setup build demo test lint export-env fixtures random-full bench bench-trainer clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release --locked

demo: build
	@scripts/demo.sh

# The trainer (feature "trainer", candle) is linted and tested with the rest;
# "failpoints" lets the reliability tests inject faults (hung worker).
FEATURES := trainer,failpoints
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked --features $(FEATURES) -- -D warnings

test: lint
	$(CARGO) test --locked --features $(FEATURES)

# --- models (need the export environment: torch, transformers; several GB) ---

export-env:
	@scripts/setup.sh --export

# Re-export the committed tiny models and the parity references.
fixtures: export-env
	.venv-export/bin/python models/export.py --tiny --out models/clip-tiny --reference-out tests/fixtures/clip-tiny
	.venv-export/bin/python models/export.py --blip --tiny --out models/blip-tiny --reference-out tests/fixtures/blip-tiny
	.venv-export/bin/python models/export.py --fusion --tiny --clip models/clip-tiny --out models/fusion-tiny --reference-out tests/fixtures/fusion-tiny

# Full-size ViT-B/32 with random weights, for benchmarks (~600 MB, not committed).
models/clip-random-full/manifest.toml:
	$(MAKE) export-env
	.venv-export/bin/python models/export.py --random-full --out models/clip-random-full

# Full-size BLIP-base captioner with random weights, for benchmarks (~1 GB, not committed).
models/blip-random-full/manifest.toml:
	$(MAKE) export-env
	.venv-export/bin/python models/export.py --blip --random-full --out models/blip-random-full

# Rig fusion model (D=512, 2 layers) with random weights for that CLIP, for benchmarks (~18 MB, not committed).
models/fusion-random-full/manifest.toml: models/clip-random-full/manifest.toml
	$(MAKE) export-env
	.venv-export/bin/python models/export.py --fusion --random-full --clip models/clip-random-full --out models/fusion-random-full

random-full: models/clip-random-full/manifest.toml models/blip-random-full/manifest.toml models/fusion-random-full/manifest.toml

bench: build random-full
	target/release/roadrep bench clip --model models/clip-random-full
	target/release/roadrep bench caption --model models/blip-random-full
	target/release/roadrep bench replay --model models/clip-random-full
	target/release/roadrep bench replay --model models/clip-random-full --precision int8
	target/release/roadrep bench rig --model models/clip-random-full --fusion models/fusion-random-full

# Training steps/s of the LoRA trainer (BENCHMARKS.md, "Trainer").
bench-trainer: setup
	$(CARGO) build --release --locked --features trainer --bin trainer
	target/release/trainer bench --model models/clip-tiny --steps 20 --batch-size 32

clean:
	$(CARGO) clean
	rm -rf demo-out
