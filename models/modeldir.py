#!/usr/bin/env python3
"""Helpers for roadrep model directories that need no torch (onnx, onnxruntime).

    python models/modeldir.py int8 MODEL_DIR

derives `image_encoder.int8.onnx` from the directory's fp32 image encoder
(ORT-optimized at basic level, then dynamically quantized: quantizing the
name-keeping export directly leaves its MatMuls in fp32) and records it in
`manifest.toml`. The fingerprint does not change: derived files are not
part of it. Use it on a directory `trainer merge` wrote.

On a BLIP directory (manifest `kind = "blip"`) it derives
`text_decoder.int8.onnx` (role `text_decoder_int8`) the same way: a cached
decoder step is memory-bound on its fp32 weights, so only the MatMul
weights are quantized (INT8, dynamic); the LM head's Gemm is rewritten as
MatMul + Add first (the dynamic quantizer skips Gemm), activations are
quantized per row (so the rows of a batch do not change each other's
numbers), embeddings stay fp32 and the KV-cache inputs and outputs keep
their names, float32 and shapes.
The vision encoder stays fp32 (`trainer merge-captioner` or
`export.py --blip` wrote the directory).

    python models/modeldir.py external MODEL_DIR

moves the fp32 encoders' weights to `image_encoder.onnx.data` and
`text_encoder.onnx.data` (ONNX external data) and records them: ORT then
holds each weight once instead of twice (export.py does this for every
model but the tiny test fixture).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import tomllib
from pathlib import Path

INT8_ROLE = "image_encoder_int8"
INT8_FILE = "image_encoder.int8.onnx"
# BLIP: the fp32 role, its INT8 derivative's role and file.
BLIP_INT8 = ("text_decoder", "text_decoder_int8", "text_decoder.int8.onnx")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def dump_manifest(m: dict, writer: str = "models/") -> str:
    """manifest.toml text: top-level keys, [kind], [preprocess], [files.ROLE]."""
    lines = [f"# roadrep model directory manifest; written by {writer}, do not edit by hand."]
    lines += [f"{k} = {toml_value(v)}" for k, v in m.items() if not isinstance(v, dict)]
    for section, body in m.items():
        if not isinstance(body, dict) or section == "files":
            continue
        lines += ["", f"[{section}]"] + [f"{k} = {toml_value(v)}" for k, v in body.items()]
    for role, body in m.get("files", {}).items():
        lines += ["", f"[files.{role}]"] + [f"{k} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def fingerprint(shas: dict[str, str], roles: list[str], preprocess: dict) -> str:
    """Identity of a model directory: `role=sha256` lines of the files that
    define it, then its preprocessing (in manifest order; lists as %.8f).

    Must match `fingerprint()` in src/models/manifest.rs.
    """
    h = hashlib.sha256()
    for role in roles:
        h.update(f"{role}={shas[role]}\n".encode())
    for k, v in preprocess.items():
        text = ",".join(f"{x:.8f}" for x in v) if isinstance(v, list) else str(v)
        h.update(f"{k}={text}\n".encode())
    return h.hexdigest()


def write_manifest(out_dir: Path, kind: str, name: str, source: str, section: dict,
                   preprocess: dict | None, files: dict[str, str], fingerprint_roles: list[str]) -> str:
    """Writes out_dir/manifest.toml (files by role: sha256, ONNX inputs and
    outputs); returns the fingerprint. `preprocess` None: a model that takes
    no images (fusion) has no [preprocess] section, nor lines in its
    fingerprint."""
    entries = {}
    for role, f in files.items():
        entries[role] = {"path": f, "sha256": sha256_file(out_dir / f)}
        if f.endswith(".onnx"):
            entries[role]["inputs"], entries[role]["outputs"] = onnx_io(out_dir / f)
    fp = fingerprint({r: e["sha256"] for r, e in entries.items()}, fingerprint_roles, preprocess or {})
    manifest = {"format_version": 1, "kind": kind, "name": name, "source": source, "fingerprint": fp,
                kind: section, "preprocess": preprocess, "files": entries}
    if preprocess is None:
        del manifest["preprocess"]
    (out_dir / "manifest.toml").write_text(dump_manifest(manifest, writer="models/export.py"))
    return fp


def onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    dtypes = {1: "float32", 7: "int64", 6: "int32", 10: "float16"}

    def describe(vi):
        t = vi.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": vi.name, "dtype": dtypes.get(t.elem_type, str(t.elem_type)), "shape": shape}

    inits = {i.name for i in m.graph.initializer}
    return [describe(i) for i in m.graph.input if i.name not in inits], [describe(o) for o in m.graph.output]


def rename_initializers(path: Path, rename) -> None:
    """Renames initializers (and their uses) by `rename(name) -> name`, in place.

    The exporter names initializers after the wrapper module's attributes
    (`m.vision_model...`); checkpoint names are what the trainer matches.
    """
    import onnx

    m = onnx.load(str(path))
    mapping = {}
    for init in m.graph.initializer:
        new = rename(init.name)
        if new != init.name:
            mapping[init.name] = new
            init.name = new
    if mapping:
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
    onnx.save(m, str(path))


def set_output_shapes(path: Path, shapes: dict[str, list]) -> None:
    """Declares graph output shapes (int: fixed, str: symbolic), in place.

    The exporter leaves names like `LayerNormalizationimage_embeds_dim_1` for
    dimensions it cannot tie to an input; the manifest should say 145.
    """
    import onnx

    m = onnx.load(str(path))
    for out in m.graph.output:
        if out.name not in shapes:
            continue
        dims = out.type.tensor_type.shape.dim
        want = shapes[out.name]
        if len(dims) != len(want):
            raise ValueError(f"{path}: output {out.name} has rank {len(dims)}, not {len(want)}")
        for d, w in zip(dims, want):
            if isinstance(w, int):
                d.ClearField("dim_param")
                d.dim_value = w
            else:
                d.ClearField("dim_value")
                d.dim_param = w
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def derive_int8(src: Path, dst: Path, matmul_only: bool = False) -> None:
    """ORT-optimize (basic level) then dynamically quantize to INT8.

    `matmul_only` (the BLIP decoder): quantize MatMul weights alone, after
    rewriting constant-weight Gemms as MatMul + Add; Gather (embeddings)
    stays fp32."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        if matmul_only:
            gemm_to_matmul(optimized)
            # reduce_range: 7-bit weights. x86 CPUs without VNNI multiply u8 x
            # s8 pairs into saturating int16 sums; full-range weights
            # overflowed them (first-step logits of the tiny model 7% off
            # fp32 with 8-bit weights, 1.5% with 7-bit).
            quantize_dynamic(str(optimized), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], reduce_range=True)
            quantize_activations_per_row(dst)
            split_cross_kv_input(dst)
        else:
            quantize_dynamic(str(optimized), str(dst), weight_type=QuantType.QInt8)


CROSS_KV = "cross_kv"


def cross_kv_inputs(layers: int) -> list[str]:
    """Names of the per-layer cross K/V inputs `split_cross_kv_input` makes
    (src/models/blip/step.rs feeds them)."""
    return [f"cross_{kv}.{i}" for i in range(layers) for kv in "kv"]


def split_cross_kv_input(path: Path) -> None:
    """Replaces the decoder input `cross_kv [L,2,B,H,T,Dh]` with one input
    per layer and K/V, `cross_k.{i}` / `cross_v.{i}` `[B,H,T,Dh]`, in place.

    Why: the graph picks each layer's keys and values out of `cross_kv`
    with Gathers, which ONNX Runtime runs as Splits that copy the whole
    tensor twice at every step (BLIP-base: 2 x 42.5 MB per keyframe per
    token, more than the INT8 weights a step reads). Separate inputs are
    views of the caller's one buffer: nothing is copied."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    cons = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def gather_index(n) -> int:
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        if n.op_type != "Gather" or axis != 0 or n.input[1] not in consts or consts[n.input[1]].ndim != 0:
            raise ValueError(f"{path}: {n.name} ({n.op_type}) is not a scalar Gather on axis 0")
        return int(consts[n.input[1]])

    old = next(i for i in g.input if i.name == CROSS_KV)
    dims = old.type.tensor_type.shape.dim
    layers = dims[0].dim_value
    renamed, dropped = {}, set()
    for layer_gather in cons[CROSS_KV]:
        i = gather_index(layer_gather)
        dropped.add(id(layer_gather))
        for kv_gather in cons[layer_gather.output[0]]:
            j = gather_index(kv_gather)
            dropped.add(id(kv_gather))
            renamed[kv_gather.output[0]] = f"cross_{'kv'[j]}.{i}"
    if sorted(renamed.values()) != sorted(cross_kv_inputs(layers)):
        raise ValueError(f"{path}: cross_kv is not read as [layer][k|v]: {sorted(renamed.values())}")
    nodes = [n for n in g.node if id(n) not in dropped]
    for n in nodes:
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]
    del g.node[:]
    g.node.extend(nodes)
    at = list(g.input).index(old)
    shape = [d.dim_param or d.dim_value for d in dims[2:]]
    new = [helper.make_tensor_value_info(name, old.type.tensor_type.elem_type, shape) for name in cross_kv_inputs(layers)]
    g.input.remove(old)
    for k, v in enumerate(new):
        g.input.insert(at + k, v)
    # Constants only the Gathers used.
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def quantize_activations_per_row(path: Path) -> None:
    """Rewrites each `DynamicQuantizeLinear` (one scale and zero point for
    the whole activation tensor) as the same quantization per row (last
    axis), in place, and each `MatMulInteger` it feeds to take the per-row
    zero point: `(q - zp) W = q W - zp colsum(W)` (ONNX Runtime's
    MatMulInteger takes only a scalar zero point for A).

    Why: with a per-tensor scale, the rows of a batch change each other's
    quantization, so a keyframe decoded beside others would get another
    caption than alone. Per row, each row's numbers are its own (the
    decoder then captions several keyframes per run exactly as one at a
    time). Weights stay symmetric INT8 (zero point 0)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    consts = []

    def const(name: str, value) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    zero = const("rowq/zero", np.float32(0.0))
    levels = const("rowq/levels", np.float32(255.0))
    tiny = const("rowq/tiny", np.float32(np.finfo(np.float32).tiny))
    top = const("rowq/top", np.float32(255.0))
    zp_of = {}  # quantized output -> its per-row int32 zero point
    nodes = []
    for n in g.node:
        if n.op_type == "DynamicQuantizeLinear":
            x, (q, scale, zp) = n.input[0], n.output
            t = n.output[0] + "/rowq"
            nodes += [
                helper.make_node("ReduceMax", [x], [t + "/max"], axes=[-1], keepdims=1),
                helper.make_node("ReduceMin", [x], [t + "/min"], axes=[-1], keepdims=1),
                # The range always includes 0 (as DynamicQuantizeLinear's).
                helper.make_node("Max", [t + "/max", zero], [t + "/hi"]),
                helper.make_node("Min", [t + "/min", zero], [t + "/lo"]),
                helper.make_node("Sub", [t + "/hi", t + "/lo"], [t + "/range"]),
                helper.make_node("Div", [t + "/range", levels], [t + "/scale0"]),
                # An all-zero row: any scale quantizes it to 0.
                helper.make_node("Max", [t + "/scale0", tiny], [scale]),
                helper.make_node("Neg", [t + "/lo"], [t + "/neglo"]),
                helper.make_node("Div", [t + "/neglo", scale], [t + "/zp0"]),
                helper.make_node("Round", [t + "/zp0"], [t + "/zpf"]),
                helper.make_node("Div", [x, scale], [t + "/xs"]),
                helper.make_node("Round", [t + "/xs"], [t + "/xr"]),
                helper.make_node("Add", [t + "/xr", t + "/zpf"], [t + "/xq"]),
                helper.make_node("Clip", [t + "/xq", zero, top], [t + "/xc"]),
                helper.make_node("Cast", [t + "/xc"], [q], to=TensorProto.UINT8),
                helper.make_node("Cast", [t + "/zpf"], [zp], to=TensorProto.INT32),
            ]
            zp_of[q] = zp
        elif n.op_type == "MatMulInteger" and n.input[0] in zp_of:
            a, w, a_zp, w_zp = n.input
            if a_zp != zp_of[a]:
                raise ValueError(f"{path}: {n.name} takes another zero point than its input's")
            if w not in inits or np.any(numpy_helper.to_array(inits[w_zp]) != 0):
                raise ValueError(f"{path}: {n.name}: weights not constant symmetric INT8")
            wq = numpy_helper.to_array(inits[w]).astype(np.int32)
            colsum = const(w + "/colsum", wq.sum(axis=0).astype(np.int32))
            out = n.output[0]
            nodes += [
                helper.make_node("MatMulInteger", [a, w, "", w_zp], [out + "/raw"], name=n.name),
                helper.make_node("Mul", [a_zp, colsum], [out + "/zpcol"]),
                helper.make_node("Sub", [out + "/raw", out + "/zpcol"], [out]),
            ]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(consts)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def gemm_to_matmul(path: Path) -> None:
    """Rewrites each `Gemm(A, W, c)` with initializer W (alpha = beta = 1,
    no transA) as `MatMul(A, W')` + `Add(c)`, W' = W (transposed if transB)
    stored as a new initializer, in place: onnxruntime's dynamic quantizer
    quantizes MatMul, not Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if (n.op_type != "Gemm" or n.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", 0):
            w = w.T.copy()
        w_name = n.input[1] + ".matmul"
        m.graph.initializer.append(numpy_helper.from_array(w, w_name))
        if len(n.input) > 2 and n.input[2]:
            mm_out = n.output[0] + ".matmul"
            nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [mm_out], name=n.name + "/MatMul"))
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "/Add"))
        else:
            nodes.append(helper.make_node("MatMul", [n.input[0], w_name], [n.output[0]], name=n.name + "/MatMul"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in m.graph.node for i in n.input}
    kept = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


# fp32 encoders whose weights `externalize` moves to `<file>.data`; the data
# file's role is the encoder's plus DATA_ROLE_SUFFIX (src/models/manifest.rs).
EXTERNAL_ROLES = ("image_encoder", "text_encoder")
DATA_ROLE_SUFFIX = "_data"
FINGERPRINT_ROLES = ["image_encoder", "text_encoder", "tokenizer"]
PREPROCESS_KEYS = ("shortest_edge", "crop_size", "resample", "mean", "std")


def fingerprint_roles(files) -> list[str]:
    """The roles a CLIP fingerprint covers: the fp32 encoders, the tokenizer,
    then the encoders' weight files where they are external."""
    return FINGERPRINT_ROLES + [r + DATA_ROLE_SUFFIX for r in EXTERNAL_ROLES if r + DATA_ROLE_SUFFIX in files]


def move_weights_to_external_data(path: Path) -> str:
    """Stores the initializers of `path` in `<file>.data` beside it; returns
    the data file's name. ORT then reads each weight once: an inline ViT-B/32
    graph is held twice while its session is built (~230 MB more, resident
    for the life of the session)."""
    import onnx

    data = path.name + ".data"
    model = onnx.load(str(path))
    (path.parent / data).unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    (path.parent / data).chmod(0o644)  # onnx writes it 0600: a service user must read it
    return data


def externalize(model_dir: Path) -> None:
    """Moves the fp32 encoders' weights of a CLIP directory to external data
    files and records them (new sha256s, data roles, fingerprint)."""
    manifest_path = model_dir / "manifest.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text())
        files = manifest["files"]
        preprocess = {k: manifest["preprocess"][k] for k in PREPROCESS_KEYS}
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"modeldir.py: '{manifest_path}': {e}")
    for role in EXTERNAL_ROLES:
        if role + DATA_ROLE_SUFFIX in files or role not in files:
            continue
        src = model_dir / files[role]["path"]
        if sha256_file(src) != files[role]["sha256"]:
            sys.exit(f"modeldir.py: '{src}' does not match its manifest")
        data = move_weights_to_external_data(src)
        files[role]["sha256"] = sha256_file(src)
        files[role + DATA_ROLE_SUFFIX] = {"path": data, "sha256": sha256_file(model_dir / data)}
    shas = {r: e["sha256"] for r, e in files.items()}
    manifest["fingerprint"] = fingerprint(shas, fingerprint_roles(files), preprocess)
    manifest_path.write_text(dump_manifest(manifest))
    print(f"{model_dir}: encoder weights in external data files, fingerprint {manifest['fingerprint'][:16]}")


def add_int8(model_dir: Path) -> None:
    """Derives the INT8 graph of `model_dir` (CLIP: image encoder; BLIP:
    text decoder) and records it."""
    manifest_path = model_dir / "manifest.toml"
    try:
        manifest = tomllib.loads(manifest_path.read_text())
        kind = manifest.get("kind", "clip")
        role, int8_role, int8_file = ("image_encoder", INT8_ROLE, INT8_FILE) if kind != "blip" else BLIP_INT8
        src = model_dir / manifest["files"][role]["path"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"modeldir.py: '{manifest_path}': {e}")
    if sha256_file(src) != manifest["files"][role]["sha256"]:
        sys.exit(f"modeldir.py: '{src}' does not match its manifest")
    dst = model_dir / int8_file
    derive_int8(src, dst, matmul_only=kind == "blip")
    ins, outs = onnx_io(dst)
    if kind == "blip":
        # The step must stay a drop-in for the fp32 one: same names, dtypes,
        # shapes, but for cross_kv, split per layer and K/V.
        want = manifest["files"][role]
        want_ins = []
        for i in want["inputs"]:
            if i["name"] != CROSS_KV:
                want_ins.append(i)
                continue
            want_ins += [{"name": n, "dtype": i["dtype"], "shape": i["shape"][2:]}
                         for n in cross_kv_inputs(i["shape"][0])]
        if (ins, outs) != (want_ins, want["outputs"]):
            sys.exit(f"modeldir.py: '{dst}' changed the decoder's inputs/outputs: {ins} {outs}")
    manifest["files"][int8_role] = {"path": int8_file, "sha256": sha256_file(dst), "inputs": ins, "outputs": outs}
    manifest_path.write_text(dump_manifest(manifest, writer="models/modeldir.py"))
    print(f"{dst}: written, manifest updated")


if __name__ == "__main__":
    commands = {"int8": add_int8, "external": externalize}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit("usage: python models/modeldir.py int8|external MODEL_DIR")
    commands[sys.argv[1]](Path(sys.argv[2]))
