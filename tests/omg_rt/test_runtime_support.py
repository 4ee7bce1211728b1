"""Shared, built-once fixtures of the runtime tests: one tiny checkpoint and one tiny bundle at
image size 128 (``export.build_bundle`` when it is importable; until then a minimal TorchScript
export of the model methods writing the manifest the runtime reads), and scene generators."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import types
from pathlib import Path

import numpy as np

IMAGE_SIZE = 128
NAMES = ("person", "car,automobile", "dog", "grass", "sky")
NUM_THINGS = 3


@functools.lru_cache(maxsize=1)
def tiny_checkpoint() -> Path:
    """A seeded tiny model saved with ``save_checkpoint`` (built once per process)."""
    import torch

    from training.model import build_model
    from training.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    return save_checkpoint(model, Path(tempfile.mkdtemp(prefix="omg-rt-ckpt-")) / "tiny")


@functools.lru_cache(maxsize=1)
def tiny_bundle() -> Path:
    """The tiny checkpoint exported at image size 128 (built once per process)."""
    out = Path(tempfile.mkdtemp(prefix="omg-rt-bundle-")) / "bundle"
    try:
        from export import build_bundle  # type: ignore[attr-defined]
    except ImportError:
        build_bundle = None
    if build_bundle is not None:
        return Path(
            build_bundle(
                tiny_checkpoint(),
                out,
                image_size=IMAGE_SIZE,
                vocab=types.SimpleNamespace(names=NAMES, num_things=NUM_THINGS),
                verify=False,
            )
        )
    return _export_without_exporter(tiny_checkpoint(), out)


def copy_bundle(dest: Path) -> Path:
    """A private copy of the tiny bundle (tests that alter files)."""
    return Path(shutil.copytree(tiny_bundle(), dest))


def _export_without_exporter(checkpoint: Path, out: Path) -> Path:
    import torch
    from open_clip.tokenizer import default_bpe

    from omg_rt.spec import (
        CLIP_HEAD,
        ENCODER,
        GRAPHS,
        PIXEL_DECODER,
        PROMPT_ENCODER,
        QUERY_DECODER,
        TEXT_ENCODER,
    )
    from omg_rt.tokenizer import ClipTokenizer
    from omg_rt.vocabulary import build_class_bank
    from training.model.checkpoint import load_checkpoint

    model, spec = load_checkpoint(checkpoint)
    out.mkdir(parents=True)

    class Graph(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn, self.model = fn, model

        def forward(self, *args):
            return self.fn(*args)

    def qd(m32, m16, m8, mask_features, bank, content, position, prompt_mode):
        pred = model.decode_queries(
            [m32, m16, m8], mask_features, bank, content, position, prompt_mode=prompt_mode
        )[-1]
        return pred.class_logits, pred.mask_logits, pred.iou_logits, pred.query_embeddings

    tokenizer = ClipTokenizer(default_bpe(), context_length=spec.text.context_length)
    with torch.no_grad():
        image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        features = model.encode(image)
        mask_features, memories = model.decode_pixels(features)
        bank = build_class_bank(
            NAMES, lambda t: model.text_encoder(torch.from_numpy(tokenizer(t))).numpy()
        )
        content, position = model.learned_queries(1)
    n = {0: "N"}
    cases = [
        (ENCODER, lambda x: tuple(model.encode(x)), (image,), {k: n for k in ("image", *ENCODER.outputs)}),
        (PIXEL_DECODER, lambda a, b, c, d: (lambda r: (r[0], *r[1]))(model.decode_pixels([a, b, c, d])),
         tuple(features), {k: n for k in (*PIXEL_DECODER.inputs, *PIXEL_DECODER.outputs)}),
        (PROMPT_ENCODER, model.encode_prompts, (torch.rand(1, 3, 4) * 64, torch.tensor([[96.0, 128.0]])),
         {k: {0: "B", 1: "P"} for k in ("prompt_boxes", *PROMPT_ENCODER.outputs)} | {"image_size": {0: "B"}}),
        (QUERY_DECODER, qd, (*memories, mask_features, torch.from_numpy(bank), content, position, torch.tensor(False)),
         {"memory_s32": n, "memory_s16": n, "memory_s8": n, "mask_features": n,
          "class_bank": {0: "K", 1: "S"}, "query_content": {0: "B", 1: "Q"}, "query_position": {0: "B", 1: "Q"},
          "class_logits": {0: "B", 1: "Q", 2: "K1"}, "mask_logits": {0: "B", 1: "Q", 2: "T"},
          "iou_logits": {0: "B", 1: "Q"}, "query_embeddings": {0: "B", 1: "Q"}}),
        (TEXT_ENCODER, lambda t: (model.text_encoder(t),), (torch.from_numpy(tokenizer(["a", "b"])),),
         {"token_ids": n, "text_embeddings": n}),
        (CLIP_HEAD, lambda p: (model.backbone.clip_projection(p),), (torch.randn(1, 7, spec.backbone.widths[-1]),),
         {k: {0: "B", 1: "Q"} for k in ("pooled_features", "clip_embeddings")}),
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for graph, fn, args, axes in cases:
            torch.onnx.export(Graph(fn), args, str(out / graph.filename), input_names=list(graph.inputs),
                              output_names=list(graph.outputs), dynamic_axes=axes, opset_version=17,
                              dynamo=False)
    import onnxruntime

    dtypes = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}

    def io(nodes):
        return {x.name: {"shape": [d if isinstance(d, int) else str(d) for d in x.shape],
                         "dtype": dtypes[x.type]} for x in nodes}

    graphs = {}
    for graph in GRAPHS:
        session = onnxruntime.InferenceSession(str(out / graph.filename))
        graphs[graph.name] = {"files": {"fp32": graph.filename}, "inputs": io(session.get_inputs()),
                              "outputs": io(session.get_outputs())}
    np.savez(out / "vocab.npz", class_bank=bank, names=np.array(NAMES), num_things=np.array(NUM_THINGS),
             seen=np.ones(len(NAMES), bool))
    np.savez(out / "queries.npz", query_content=content[0].detach().numpy(),
             query_position=position[0].detach().numpy())
    (out / "tokenizer").mkdir()
    shutil.copy(default_bpe(), out / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "schema_version": spec.schema_version, "model": spec.to_dict(), "input_size": [IMAGE_SIZE, IMAGE_SIZE],
        "preprocess": {}, "graphs": graphs, "precisions": ["fp32"], "target": "portable",
        "vocabulary": {"names": list(NAMES), "num_things": NUM_THINGS, "seen": [True] * len(NAMES),
                       "file": "vocab.npz"},
        "tokenizer": {"file": "tokenizer/bpe_simple_vocab_16e6.txt.gz",
                      "context_length": spec.text.context_length},
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def scene(seed: int, hw: tuple[int, int] = (96, 120)) -> np.ndarray:
    """An RGB image with a few flat-coloured rectangles and discs on a gradient."""
    rng = np.random.default_rng(seed)
    h, w = hw
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        image[y : y + rng.integers(10, 30), x : x + rng.integers(10, 30)] = rng.integers(0, 255, 3)
    return image


def moving_clip(frames: int, hw: tuple[int, int] = (96, 120)) -> list[np.ndarray]:
    """Two objects moving across a static background, 3 px per frame."""
    h, w = hw
    clip = []
    for t in range(frames):
        image = np.full((h, w, 3), 90, np.uint8)
        image[:, :, 1] = np.linspace(60, 160, w, dtype=np.uint8)[None]
        x = 5 + 3 * t
        image[20:50, x : x + 30] = (230, 40, 40)
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - 65) ** 2 + (xx - (w - 25 - 2 * t)) ** 2 < 14**2
        image[disc] = (30, 40, 220)
        clip.append(image)
    return clip
