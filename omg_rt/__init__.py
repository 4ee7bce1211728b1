"""omg-rt: the torch-free OMG-Seg runtime.

    from omg_rt import Segmenter
    seg = Segmenter.from_bundle("bundle/", backend="auto")

Rooms: ``segmenter`` (the API: images, prompts, vocabularies, video) over ``pipeline`` (the
decoder layer every graph call goes through) and ``backends`` (ONNX Runtime, TensorRT, PyTorch
behind one runner); ``encoding`` + ``cache`` (preprocessing, the encoder cache); ``assembly`` +
``postprocess`` (the official post-processing into results); ``video`` (streaming sessions),
``scheduler`` (request batching); ``manifest`` (the bundle format) + ``bundle`` (loading it);
``spec`` (model spec, graph contracts, constants), ``vocabularies``, ``errors``, ``metrics``.

Importing this package (and running a bundle on ONNX Runtime or TensorRT) never imports torch;
the PyTorch backend imports it lazily.
"""

from __future__ import annotations

from typing import Any

from omg_rt.errors import (
    BackendUnavailableError,
    BundleError,
    CheckpointError,
    InvalidInputError,
    OmgRtError,
    QueueFullError,
)

_LAZY = {
    "Segmenter": "omg_rt.segmenter",
    "Scheduler": "omg_rt.scheduler",
    "SegmentationResult": "omg_rt.results",
    "ImageSession": "omg_rt.sessions",
    "VideoSession": "omg_rt.video",
    "TrackState": "omg_rt.video",
    "EncoderCache": "omg_rt.cache",
    "load_bundle": "omg_rt.bundle",
    "Bundle": "omg_rt.bundle",
    "Manifest": "omg_rt.manifest",
    "Pipeline": "omg_rt.pipeline",
    "Predictions": "omg_rt.pipeline",
    "ClipTokenizer": "omg_rt.tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'omg_rt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "BackendUnavailableError",
    "BundleError",
    "CheckpointError",
    "InvalidInputError",
    "OmgRtError",
    "QueueFullError",
    *_LAZY,
]
