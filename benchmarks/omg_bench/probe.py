"""The few runtime internals a per-stage timing needs, in one place.

Stage timings call the runtime's graph runners (``Segmenter.backend.runners``) with the feeds
the runtime itself builds; the preprocessing and the post-processing are the runtime's own
functions. Where the runtime has no public entry point for a step, this module reaches for its
internal one, so a runtime refactor touches this file only (issue #13 replaces it with the
runtime's public decoder layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def runners(seg: Any) -> dict[str, Any]:
    return seg.backend.runners


def preprocess(seg: Any, image: np.ndarray) -> np.ndarray:
    """(1, 3, Hp, Wp) float32 encoder input, as the runtime prepares it (keep-ratio resize into
    the bundle's image scale, zero padding to a multiple of 32)."""
    encoder = seg.image_encoder
    return encoder.tensor(encoder.prepare(image, "image"))


def query_decoder_feeds(seg: Any, session: Any) -> dict[str, np.ndarray]:
    """The learned-query feeds of one cached image (what ``panoptic()`` gives the decoder)."""
    encoded = session.encoded
    feeds = {name: getattr(encoded, name)
             for name in ("memory_s32", "memory_s16", "memory_s8", "mask_features")}
    feeds["class_bank"] = seg.vocabulary.class_bank
    feeds["query_content"] = seg.assets.query_content[None]
    feeds["query_position"] = seg.assets.query_position[None]
    feeds["prompt_mode"] = np.array(False)
    return feeds


def class_scores(seg: Any, session: Any, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """(Q, K + 1) class scores the post-processing takes (the open-vocabulary ensemble when
    the runtime has it on), as ``Segmenter`` computes them."""
    return seg._class_logits(outputs, [session.encoded], seg.vocabulary, seg._ensemble)


def panoptic_postprocess(seg: Any, session: Any, cls: np.ndarray, mask_logits: np.ndarray
                         ) -> Any:
    """The runtime's panoptic assembly on (Q, h4, w4) stride-4 logits."""
    from omg_rt.assembly import panoptic_result

    return panoptic_result(session, cls, mask_logits, seg.vocabulary, seg.spec.postprocess)
