"""The host steps of the Triton model repository ``omg-export --triton-repo`` writes: what its
two Python-backend models (``omg_preprocess``, ``omg_postprocess``) run around the encoder,
pixel-decoder and query-decoder models that Triton's onnxruntime / tensorrt backends serve.

Plain functions of numpy arrays (no Triton import), so the same code is tested here on the CPU
against :class:`~omg_rt.segmenter.Segmenter`; each ``model.py`` of the repository is a thin shell
that calls them (``export/triton_repo.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from omg_rt.assembly import instance_result, panoptic_result, semantic_result
from omg_rt.bundle import load_bundle
from omg_rt.encoding import encoder_tensor, resize_for_encoder
from omg_rt.errors import InvalidInputError
from omg_rt.inputs import read_image
from omg_rt.sessions import Sizes
from omg_rt.spec import IMAGE_TASKS


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB (InvalidInputError if not an image)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise InvalidInputError(f"image: not a decodable image ({len(data)} bytes)")
    rgb: np.ndarray = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return rgb


class Preprocessor:
    """Image bytes -> the query-decoder path's inputs (the bundle's vocabulary and queries).

    Args:
        assets: a bundle directory (its manifest, ``queries.npz`` and ``vocab.npz`` suffice).
    """

    def __init__(self, assets: str | os.PathLike[str]) -> None:
        bundle = load_bundle(Path(assets), verify=False)
        self.contract = bundle.input
        self.preprocess = bundle.spec.preprocess
        self.class_bank = bundle.vocabulary.class_bank
        self.query_content = bundle.query_content[None]
        self.query_position = bundle.query_position[None]

    def __call__(self, data: bytes) -> dict[str, np.ndarray]:
        """``IMAGE_TENSOR`` (1, 3, Hp, Wp) float32, ``CLASS_BANK``, ``QUERY_CONTENT``,
        ``QUERY_POSITION``, ``PROMPT_MODE`` (1,) bool and ``SIZES`` (6,) int32: original,
        resized and padded (H, W)."""
        image = read_image(decode_image_bytes(data), "image")
        resized, padded = resize_for_encoder(image, self.contract, self.contract.fixed_hw)
        tensor = encoder_tensor(resized, padded, self.preprocess, self.contract.size_divisor)
        sizes = np.array([*image.shape[:2], *resized.shape[:2], *padded], np.int32)
        return {
            "IMAGE_TENSOR": tensor,
            "CLASS_BANK": self.class_bank,
            "QUERY_CONTENT": self.query_content,
            "QUERY_POSITION": self.query_position,
            "PROMPT_MODE": np.array([False]),
            "SIZES": sizes,
        }


class Postprocessor:
    """The query decoder's outputs -> a :meth:`SegmentationResult.to_wire` record.

    Args:
        assets: a bundle directory (vocabulary and post-processing constants).
    """

    def __init__(self, assets: str | os.PathLike[str]) -> None:
        bundle = load_bundle(Path(assets), verify=False)
        self.vocabulary = bundle.vocabulary
        self.post = bundle.spec.postprocess

    def __call__(self, class_logits: np.ndarray, mask_logits: np.ndarray, sizes: np.ndarray,
                 task: str) -> bytes:
        """``class_logits`` (1, Q, K + 1), ``mask_logits`` (1, Q, 1, h4, w4), ``sizes`` as
        :class:`Preprocessor` gives them, ``task`` one of ``IMAGE_TASKS``."""
        if task not in IMAGE_TASKS:
            raise InvalidInputError(f"task: expected one of {IMAGE_TASKS}, got {task!r}")
        values = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(values) != 6:
            raise InvalidInputError(f"sizes: expected 6 values, got {len(values)}")
        image = Sizes((values[0], values[1]), (values[2], values[3]), (values[4], values[5]))
        cls = np.asarray(class_logits, np.float32)[0]
        masks = np.asarray(mask_logits)[0, :, 0]
        if task == "panoptic":
            result = panoptic_result(image, cls, masks, self.vocabulary, self.post)
        elif task == "instance":
            result = instance_result(image, cls, masks, self.vocabulary, self.post)
        else:
            result = semantic_result(image, cls, masks, self.vocabulary)
        return result.to_wire()
