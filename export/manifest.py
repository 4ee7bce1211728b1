"""``manifest.json``: what a bundle holds, written last (after every file it hashes).

Bundle layout::

    bundle/
      manifest.json            this file
      encoder.onnx             FP32 graphs at the top level (``<graph>.onnx.data`` beside a graph
      pixel_decoder.onnx         whose weights exceed 256 MiB: ONNX external data)
      prompt_encoder.onnx      (models with prompt queries)
      query_decoder.onnx
      text_encoder.onnx        (models with a CLIP text tower)
      clip_head.onnx
      fp16/<graph>.onnx        FP16 variants (FP32 I/O; graphs not converted point at the FP32 file)
      int8/<graph>.onnx        INT8 QDQ variants (encoder, pixel decoder; others point at FP32)
      tensorrt/pixel_decoder.onnx   TensorRT targets only: the deformable-attention plugin flavour
      queries.npz              learned queries: query_content (Q, C), query_position (Q, C) float32
      vocab.npz                class_bank (K, S, D) float32, names (K,) str, num_things () int64,
                               seen (K,) bool
      tokenizer/bpe_simple_vocab_16e6.txt.gz   OpenCLIP's BPE vocabulary (torch-free tokenising)
      verify.json              the parity report (``export.verify``)
      engines/<key>/           TensorRT plans (``--engine``), key = GPU name, compute capability
                               and TensorRT version; ``engines/<key>/engines.json`` lists them

Manifest keys (``format_version`` 2):

- ``format_version``: int, the layout's version (``omg_rt.bundle.FORMAT_VERSION``); the runtime
  refuses others with a message saying whether to re-export or to upgrade.
- ``schema_version``: int, the ``ModelSpec``'s version.
- ``model``: the ``ModelSpec`` as a dict (``omg_rt.spec.ModelSpec.from_dict`` reads it).
- ``input``: the sizes the graphs take (``omg_rt.bundle.InputContract``): ``image_scale`` and
  ``video_scale`` [long, short] — images and video frames are resized keeping their ratio into
  that box, then zero-padded bottom/right (after normalisation) to a multiple of
  ``size_divisor`` (32), as the official model; ``min_hw`` / ``max_hw`` [H, W], the padded range
  exported and checked (TensorRT profiles span it; ONNX Runtime takes any multiple of 32);
  ``fixed_hw`` null (dynamic height and width) or the one padded size of a fixed-shape build.
- ``preprocess``: ``mean``, ``std`` (RGB, 0-255 scale), ``size_divisor``, ``pad_value`` 0.
- ``target``: ``cpu`` | ``h100`` | ``jetson-orin``; ``deform_attn``: ``grid_sample`` (portable)
  or ``trt_plugin`` (TensorRT targets: ``tensorrt/pixel_decoder.onnx`` holds
  ``MultiscaleDeformableAttnPlugin_TRT`` nodes, the ``files`` entries stay portable).
- ``graphs``: ``{name: {"files": {precision: relative path}, "tensorrt_files": {precision: path}
  (optional), "inputs": {name: {"shape": [...], "dtype": str}}, "outputs": {...},
  "dynamic_axes": {tensor: {axis index (str): symbol}}}}``; symbolic dimensions are strings
  (``N`` images, ``B`` batch, ``T`` frames with N = B x T, ``Q`` queries or prompts, ``P`` prompts,
  ``K`` classes, ``K+1`` classes and void, ``S`` synonyms, ``H`` / ``W`` the padded input's height
  and width, ``H/s`` / ``W/s`` a map at stride s).
- ``prompts``: how prompt queries are padded: any P; padded prompts (SAM's label -1) are
  independent of the others (diagonal self-attention), their outputs are dropped by the host.
- ``precisions``: the precisions present, ``["fp32", ...]``.
- ``opset``, ``exporter`` (``torch.onnx TorchScript``), ``tools``: versions of torch, onnx,
  onnxruntime, onnxslim (and tensorrt when engines were built).
- ``vocabulary``: ``names``, ``num_things``, ``seen``, ``source``, ``file`` (``vocab.npz``).
- ``queries``: ``file`` (``queries.npz``), ``num_queries``.
- ``tokenizer``: ``file``, ``context_length``.
- ``verify``: ``file`` (``verify.json``), ``passed``.
- ``engines``: ``[{"key", "gpu", "compute_capability", "tensorrt", "files": {graph: {precision:
  path}}}]`` (empty without ``--engine``).
- ``files``: ``{relative path: sha256 hex}`` for every file in the bundle except the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omg_rt.bundle import FORMAT_VERSION, MANIFEST
from omg_rt.files import atomic_write_text, sha256_file
from omg_rt.spec import SCHEMA_VERSION


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file under ``bundle`` except the manifest, by POSIX relative path."""
    return {
        path.relative_to(bundle).as_posix(): sha256_file(path)
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> Path:
    """Add ``files`` (hashes) and write ``manifest.json`` atomically."""
    manifest = {**manifest, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
                "files": file_hashes(bundle)}
    # insertion order: graph I/O stays in call order
    return atomic_write_text(bundle / MANIFEST, json.dumps(manifest, indent=1))


def check_hashes(bundle: Path) -> list[str]:
    """Files whose sha256 differs from the manifest, or that are missing or unlisted."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    listed: dict[str, str] = manifest["files"]
    actual = file_hashes(bundle)
    problems = [f"{p}: missing" for p in listed if p not in actual]
    problems += [f"{p}: sha256 mismatch" for p in listed if p in actual and actual[p] != listed[p]]
    problems += [f"{p}: not in the manifest" for p in actual if p not in listed]
    return problems
