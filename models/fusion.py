#!/usr/bin/env python3
"""The rig fusion model (PyTorch reference), its export and parity references.

A fusion model joins the CLIP image embeddings of one multi-camera rig record
(one view per role: front, front_left, ...) into one embedding in CLIP's
joint space (design.md section 6): learned role embeddings, a shallow
pre-norm transformer whose attention ignores absent views, attention pooling
over the present views, and a gated residual on the normalised mean of the
present views. `gate` starts at 0, so an untrained model is exactly mean
pooling; training moves away from it only as far as it helps.

    models/export.py --fusion --tiny --clip models/clip-tiny --out models/fusion-tiny \\
        --reference-out tests/fixtures/fusion-tiny
    models/export.py --fusion --random-full --clip models/clip-random-full --out models/fusion-random-full

A fusion directory holds `fusion.onnx` (weights inline; initializer names are
the parameter names below, which the trainer reads and rewrites),
`config.json` (the architecture) and `manifest.toml` (kind "fusion", the
fingerprint of the CLIP it was made for).

ONNX contract: view_embeddings f32 [batch, V, D] (L2-normalised; absent slots
may hold anything finite), view_present f32 [batch, V] (1 present, 0 absent,
at least one present per row) -> fused_embedding f32 [batch, D], L2-normalised.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modeldir import set_output_shapes, write_manifest  # noqa: E402

OPSET = 17
LAYER_NORM_EPS = 1e-5
# Large enough that exp() of a masked score is exactly 0 in fp32.
MASK_BIAS = -1e9
# nuScenes cameras CAM_FRONT... lower-cased without CAM_, in slot order.
DEFAULT_ROLES = ["front", "front_left", "front_right", "back", "back_left", "back_right"]
INPUTS = ("view_embeddings", "view_present")
OUTPUT = "fused_embedding"
FINGERPRINT_ROLES = ["fusion", "config"]

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
RANDOM_FULL = dict(hidden_size=512, num_hidden_layers=2, num_attention_heads=8, intermediate_size=1024)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, a, key_bias):
        _, v, d = a.shape
        hd = self.head_dim

        def split(t):  # [B, V, D] -> [B, H, V, D/H]
            return t.reshape(-1, v, self.heads, hd).transpose(1, 2)

        q, k, val = split(self.q_proj(a)), split(self.k_proj(a)), split(self.v_proj(a))
        s = q @ k.transpose(-1, -2) / math.sqrt(hd) + key_bias
        o = torch.softmax(s, dim=-1) @ val
        return self.out_proj(o.transpose(1, 2).reshape(-1, v, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, ff: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, ff)
        self.fc2 = nn.Linear(ff, dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="none"))


class Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ff: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, ff)

    def forward(self, h, key_bias):
        h = h + self.attn(self.norm1(h), key_bias)
        return h + self.mlp(self.norm2(h))


class RigFusion(nn.Module):
    """RigFusion(dim D, roles V, layers L, heads H, ff F); parameter names are
    the ONNX initializer names (the candle trainer uses the same ones)."""

    def __init__(self, dim: int, roles: int, layers: int, heads: int, ff: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
        self.role_embedding = nn.Parameter(torch.zeros(roles, dim))
        self.layers = nn.ModuleList(Layer(dim, heads, ff) for _ in range(layers))
        self.pool_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pool_query = nn.Parameter(torch.zeros(dim))
        self.pool_proj = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))
        self.dim = dim
        nn.init.normal_(self.role_embedding, std=0.02)
        nn.init.normal_(self.pool_query, std=0.02)

    def forward(self, view_embeddings, view_present):
        x, m = view_embeddings, view_present
        h = x + self.role_embedding[None]
        key_bias = (1 - m)[:, None, None, :] * MASK_BIAS  # absent keys get no attention
        for layer in self.layers:
            h = layer(h, key_bias)
        p = self.pool_norm(h)
        w = torch.softmax((p @ self.pool_query) / math.sqrt(self.dim) + (1 - m) * MASK_BIAS, dim=1)
        pooled = self.pool_proj((w[:, :, None] * p).sum(1))
        mean = (m[:, :, None] * x).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        fused = mean + torch.tanh(self.gate) * pooled
        return fused / fused.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def config_dict(sizes: dict, roles: list[str]) -> dict:
    """config.json: HF-style names; the trainer builds RigFusion from it."""
    return {
        "model_type": "rig_fusion",
        **sizes,
        "num_roles": len(roles),
        "roles": roles,
        "layer_norm_eps": LAYER_NORM_EPS,
        "hidden_act": "gelu",
    }


def build(config: dict, seed: int, noise: float) -> RigFusion:
    """A random RigFusion with gate 0. Noise keeps every tensor distinct: the
    exporter merges identical tensors (LayerNorm ones/zeros) and their names
    would be lost. The gate stays exactly 0 (it is the only [1] tensor)."""
    torch.manual_seed(seed)
    model = RigFusion(config["hidden_size"], config["num_roles"], config["num_hidden_layers"],
                      config["num_attention_heads"], config["intermediate_size"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "gate":
                p.add_(torch.randn_like(p) * noise)
    return model.eval()


def perturb(model: RigFusion, seed: int) -> RigFusion:
    """Makes every part matter for the parity test: gate 0.9, large role
    embeddings and pooling query, LayerNorm far from 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.gate.fill_(0.9)
        model.role_embedding.copy_(torch.randn(model.role_embedding.shape, generator=g) * 0.5)
        model.pool_query.copy_(torch.randn(model.pool_query.shape, generator=g) * 2.0)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def export_onnx(model: RigFusion, path: Path, roles: int, dim: int) -> None:
    x = torch.nn.functional.normalize(torch.randn(2, roles, dim), dim=-1)
    m = torch.ones(2, roles)
    m[1, 1:] = 0
    with torch.no_grad():
        torch.onnx.export(
            model, (x, m), str(path),
            input_names=list(INPUTS), output_names=[OUTPUT],
            dynamic_axes={INPUTS[0]: {0: "batch"}, INPUTS[1]: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=False, dynamo=False, export_params=True,
        )
    import onnx

    set_output_shapes(path, {OUTPUT: ["batch", dim]})
    names = {i.name for i in onnx.load(str(path)).graph.initializer}
    missing = [n for n, _ in model.named_parameters() if n not in names]
    if missing:
        sys.exit(f"export.py: {path} lost the initializer names {missing} (merged by the exporter?)")


def run_onnx(path: Path, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run([OUTPUT], {INPUTS[0]: x, INPUTS[1]: m})[0]


def write_dir(model: RigFusion, config: dict, out: Path, name: str, source: str, clip_fingerprint: str) -> str:
    """Writes a fusion model directory; returns its fingerprint."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    export_onnx(model, out / "fusion.onnx", config["num_roles"], config["hidden_size"])
    section = {
        "embed_dim": config["hidden_size"],
        "roles": config["roles"],
        "clip_fingerprint": clip_fingerprint,
        "layers": config["num_hidden_layers"],
        "heads": config["num_attention_heads"],
    }
    files = {"fusion": "fusion.onnx", "config": "config.json"}
    return write_manifest(out, "fusion", name, source, section, None, files, FINGERPRINT_ROLES)


def clip_identity(clip_dir: Path) -> tuple[str, int]:
    """The CLIP directory's fingerprint and embedding dimension."""
    try:
        manifest = tomllib.loads((clip_dir / "manifest.toml").read_text())
        return manifest["fingerprint"], int(manifest["clip"]["embed_dim"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"export.py: --clip '{clip_dir}': not a CLIP model directory ({e})")


# --------------------------------------------------------------------------
# References for tests/fusion_parity.rs
# --------------------------------------------------------------------------


def reference_cases(roles: list[str], dim: int, seed: int) -> list[dict]:
    """Random unit vectors in present slots, large non-zero garbage in absent
    ones (masking must ignore it, not rely on zeros)."""
    rng = np.random.default_rng(seed)
    subsets = {
        "all_present": roles,
        "front_only": ["front"],
        "front_back": ["front", "back"],
        "front_left_back_right_back": ["front_left", "back_right", "back"],
    }
    rows = []
    for name, present in subsets.items():
        x = rng.standard_normal((len(roles), dim)).astype(np.float32)
        mask = np.array([1.0 if r in present else 0.0 for r in roles], np.float32)
        x[mask == 1] /= np.linalg.norm(x[mask == 1], axis=-1, keepdims=True)
        x[mask == 0] *= 3.0
        rows.append((name, x, mask))
    cases = [{"name": n, "view_embeddings": x[None], "view_present": m[None]} for n, x, m in rows]
    order = [2, 0, 3, 1, 2]  # a batch mixing them, one twice
    cases.append({
        "name": "batch_mixed",
        "view_embeddings": np.stack([rows[i][1] for i in order]),
        "view_present": np.stack([rows[i][2] for i in order]),
    })
    return cases


def write_references(model: RigFusion, config: dict, fingerprint: str, clip_fingerprint: str,
                     out: Path, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    perturbed = perturb(build(config, seed + 1, noise=0.05), seed + 2)
    p_dir = out / "perturbed"
    p_fp = write_dir(perturbed, config, p_dir, "fusion-tiny-perturbed",
                     f"random tiny fusion (seed {seed + 1}), perturbed: gate 0.9", clip_fingerprint)
    cases = reference_cases(config["roles"], config["hidden_size"], seed + 3)
    # The exported graph must agree before the Rust side is asked to.
    check_onnx_matches(perturbed, p_dir / "fusion.onnx", len(config["roles"]), config["hidden_size"], seed)
    records = []
    for case in cases:
        x, m = torch.from_numpy(case["view_embeddings"]), torch.from_numpy(case["view_present"])
        with torch.no_grad():
            fused, fused_p = model(x, m).numpy(), perturbed(x, m).numpy()
            # Garbage in absent slots must not matter: zeroing it changes nothing.
            zeroed = perturbed(x * m[:, :, None], m).numpy()
        if np.abs(zeroed - fused_p).max() > 1e-6:
            sys.exit(f"export.py: case {case['name']}: absent views leak into the fused embedding")
        records.append({
            "name": case["name"],
            "view_embeddings": case["view_embeddings"].tolist(),
            "view_present": case["view_present"].tolist(),
            "fused": fused.tolist(),
            "fused_perturbed": fused_p.tolist(),
        })
    ref = {
        "generator": "models/export.py --fusion --reference-out",
        "torch_version": torch.__version__,
        "model_fingerprint": fingerprint,
        "perturbed_fingerprint": p_fp,
        "clip_fingerprint": clip_fingerprint,
        "roles": config["roles"],
        "embed_dim": config["hidden_size"],
        "cases": records,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"references: {len(records)} cases, perturbed model {p_dir} -> {out / 'reference.json'}")


def check_onnx_matches(model: RigFusion, path: Path, roles: int, dim: int, seed: int) -> float:
    """Max |ORT - PyTorch| on a random batch with absent views."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((7, roles, dim)).astype(np.float32)
    m = (rng.random((7, roles)) < 0.6).astype(np.float32)
    m[:, 0] = 1.0
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    diff = float(np.abs(run_onnx(path, x, m) - want).max())
    if diff > 1e-5:
        sys.exit(f"export.py: {path}: onnxruntime differs from PyTorch by {diff}")
    return diff


def main(args) -> None:
    if args.checkpoint:
        sys.exit("export.py: --fusion takes --tiny or --random-full (a trained fusion model comes from the trainer)")
    if not args.clip:
        sys.exit("export.py: --fusion needs --clip CLIP_DIR (the CLIP whose embeddings it fuses)")
    seed = 0 if args.seed is None else args.seed
    roles = [r.strip() for r in args.roles.split(",")] if args.roles else DEFAULT_ROLES
    if len(set(roles)) != len(roles) or not all(roles):
        sys.exit(f"export.py: --roles {args.roles!r}: roles must be distinct and non-empty")
    if args.reference_out and roles != DEFAULT_ROLES:
        sys.exit("export.py: --reference-out needs the default roles (its cases name them)")
    clip_fp, clip_dim = clip_identity(Path(args.clip))
    sizes = dict(TINY if args.tiny else RANDOM_FULL)
    if sizes["hidden_size"] != clip_dim:
        sys.exit(f"export.py: --clip {args.clip} has embed_dim {clip_dim}, the fusion model {sizes['hidden_size']}")
    config = config_dict(sizes, roles)
    kind = "tiny" if args.tiny else "random-full"
    model = build(config, seed, noise=0.02 if args.tiny else 0.01)
    out = Path(args.out)
    size = "tiny" if args.tiny else "full-size"
    fp = write_dir(model, config, out, f"fusion-{kind}", f"random {size} rig fusion (seed {seed}), gate 0", clip_fp)
    diff = check_onnx_matches(model, out / "fusion.onnx", len(roles), sizes["hidden_size"], seed)
    print(f"model: {out}, fingerprint {fp[:16]}, for CLIP {clip_fp[:16]}; ORT vs PyTorch max diff {diff:.2e}")
    if args.reference_out:
        write_references(model, config, fp, clip_fp, Path(args.reference_out), seed)
