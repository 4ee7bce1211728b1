"""The decoder layer: every path through the graphs, once, for any set of runners.

:class:`Pipeline` chains the graphs of ``omg_rt.spec`` by name — encoder -> pixel decoder ->
query decoder, prompt encoder -> prompt decoder, the CLIP head for the open-vocabulary
ensemble, the text encoder for class banks — over any mapping of graph name -> runner
(``omg_rt.backends.GraphRunner`` for a bundle's ONNX Runtime / TensorRT graphs or the PyTorch
model, or the exporter's own wrappers). It knows the graphs' contracts (fixed batch, frame and
prompt axes) and nothing of caches, image files or results:

- :class:`~omg_rt.segmenter.Segmenter` puts the encoder cache and the post-processing around it;
- :class:`~omg_rt.video.VideoSession` and :class:`~omg_rt.scheduler.Scheduler` reach it through
  ``Segmenter``;
- ``export.verify`` sends the same requests to a PyTorch pipeline and an ONNX Runtime pipeline
  and compares the answers;
- ``omg-bench`` times its steps one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from omg_rt.arrays import Array, concat, row, to_host
from omg_rt.backends.base import TensorSpec
from omg_rt.cache import EncodedImage
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.manifest import Vocabulary
from omg_rt.postprocess.open_vocab import (
    clip_class_logits,
    mask_pooled_clip_features,
    open_vocab_ensemble,
)
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    PIXEL_DECODER,
    PROMPT_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    PostprocessSpec,
)

MEMORIES = ("memory_s32", "memory_s16", "memory_s8", "mask_features")


class Runner(Protocol):
    """One graph: named inputs -> named outputs (numpy, or device tensors for the outputs a
    backend keeps resident: ``omg_rt.backends.base.RESIDENT_OUTPUTS``), and its input specs."""

    def __call__(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...

    def inputs(self) -> dict[str, TensorSpec]: ...


@dataclass(frozen=True)
class Predictions:
    """The learned queries' outputs for one image or one clip of T frames.

    Attributes:
        class_scores: (Q, K + 1) float32 class logits, or the open-vocabulary ensemble's
            log-probabilities; void last.
        mask_logits: (Q, T, h4, w4) float32 stride-4 mask logits of the padded input (numpy, or a
            tensor on the backend's device: ``omg_rt.arrays``).
        iou_logits: (Q,) float32.
        query_embeddings: (Q, C) float32 (video aligns clips on them).
        vocabulary: the vocabulary ``class_scores`` is over.
    """

    class_scores: np.ndarray
    mask_logits: Array
    iou_logits: np.ndarray
    query_embeddings: np.ndarray
    vocabulary: Vocabulary


@dataclass(frozen=True)
class PromptPredictions:
    """One prompt group's outputs on one image.

    Attributes:
        mask_logits: (P, h4, w4) float32 stride-4 mask logits of the padded input (numpy, or a
            tensor on the backend's device).
        iou_logits: (P,) float32.
        class_logits: (P, K + 1) float32.
    """

    mask_logits: Array
    iou_logits: np.ndarray
    class_logits: np.ndarray


class Pipeline:
    """The graphs of one model chained by their ``omg_rt.spec`` names.

    Args:
        runners: graph name -> runner; ``encoder``, ``pixel_decoder`` and ``query_decoder`` are
            required, ``prompt_encoder``, ``text_encoder`` and ``clip_head`` used when present.
        query_content, query_position: (Q, C) float32, the learned queries.
        postprocess: the open-vocabulary ensemble's alpha and beta.
        logit_scale: CLIP's logit scale (exp of the spec's ``logit_scale_log``).
        max_batch: images per encoder call when the encoder's batch axis is dynamic.
        folded_prompts: prompt groups of fewer queries run in the prompt decoder, larger ones in
            the query decoder in prompt mode (``QueryDecoderSpec.folded_prompts``); None: all in
            the prompt decoder.
    """

    def __init__(
        self,
        runners: Mapping[str, Runner],
        *,
        query_content: np.ndarray,
        query_position: np.ndarray,
        postprocess: PostprocessSpec,
        logit_scale: float,
        max_batch: int = 4,
        folded_prompts: int | None = None,
    ) -> None:
        for graph in (ENCODER, PIXEL_DECODER, QUERY_DECODER):
            if graph.name not in runners:
                raise BundleError(f"no {graph.name!r} graph among {sorted(runners)}")
        self.runners = dict(runners)
        self.query_content = query_content
        self.query_position = query_position
        self.postprocess = postprocess
        self.logit_scale = float(logit_scale)
        self.folded_prompts = folded_prompts
        image = self.runners[ENCODER.name].inputs()["image"].shape
        self.fixed_batch: int | None = image[0] if isinstance(image[0], int) else None
        self.max_batch = self.fixed_batch or max(1, int(max_batch))
        # a graph or engine built for one spatial size takes exactly that size
        self.fixed_hw: tuple[int, int] | None = (
            (image[2], image[3])
            if isinstance(image[2], int) and isinstance(image[3], int)
            else None
        )
        frames = self.runners[QUERY_DECODER.name].inputs()["memory_s32"].shape[0]
        # a decoder exported with a fixed frame axis takes exactly that many frames per clip
        self.fixed_clip_size: int | None = frames if isinstance(frames, int) else None

    # ------------------------------------------------------------------ images

    def encode(self, images: np.ndarray) -> list[EncodedImage]:
        """(N, 3, Hp, Wp) float32 preprocessed images (N <= ``max_batch``) -> encoder + pixel
        decoder outputs per image. A fixed-batch graph gets the batch padded with zeros."""
        n = images.shape[0]
        if n > self.max_batch:
            raise InvalidInputError(f"images: at most {self.max_batch} per call, got {n}")
        if self.fixed_batch is not None and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *images.shape[1:]), np.float32)
            images = np.concatenate([images, pad], axis=0)
        features = self.runners[ENCODER.name]({"image": images})
        pixels = self.runners[PIXEL_DECODER.name](
            {name: features[name] for name in PIXEL_DECODER.inputs}
        )
        return [
            EncodedImage(
                mask_features=row(pixels["mask_features"], i),
                memory_s32=row(pixels["memory_s32"], i),
                memory_s16=row(pixels["memory_s16"], i),
                memory_s8=row(pixels["memory_s8"], i),
                clip_features=row(features["features_s32"], i),
            )
            for i in range(n)
        ]

    # ------------------------------------------------------------------ queries

    def feeds(
        self,
        frames: Sequence[EncodedImage],
        content: Array,
        position: Array,
        prompt_mode: bool,
        class_bank: np.ndarray,
    ) -> dict[str, Array]:
        """The query decoder's feeds for one clip (B = 1, T = len(frames)) of queries
        ((Q, C) or (1, Q, C))."""
        feeds: dict[str, Array] = {
            name: concat([getattr(f, name) for f in frames]) for name in MEMORIES
        }
        feeds["class_bank"] = class_bank
        feeds["query_content"] = content[None] if content.ndim == 2 else content
        feeds["query_position"] = position[None] if position.ndim == 2 else position
        feeds["prompt_mode"] = np.array(prompt_mode)
        return feeds

    def decode(
        self,
        frames: Sequence[EncodedImage],
        content: Array,
        position: Array,
        prompt_mode: bool,
        class_bank: np.ndarray,
    ) -> dict[str, Array]:
        """The query decoder over one clip; its raw outputs (batch axis 1)."""
        return self.runners[QUERY_DECODER.name](
            self.feeds(frames, content, position, prompt_mode, class_bank)
        )

    def decode_learned(
        self, frames: Sequence[EncodedImage], class_bank: np.ndarray
    ) -> dict[str, Array]:
        """The learned queries over one image or clip; raw outputs."""
        return self.decode(frames, self.query_content, self.query_position, False, class_bank)

    def predict(
        self, frames: Sequence[EncodedImage], vocabulary: Vocabulary, *, ensemble: bool
    ) -> Predictions:
        """The learned queries over one image or clip, scored over ``vocabulary``."""
        outputs = self.decode_learned(frames, vocabulary.class_bank)
        return Predictions(
            class_scores=self.class_scores(outputs, frames, vocabulary, ensemble=ensemble),
            mask_logits=outputs["mask_logits"][0],
            iou_logits=outputs["iou_logits"][0].astype(np.float32),
            query_embeddings=outputs["query_embeddings"][0].astype(np.float32),
            vocabulary=vocabulary,
        )

    def class_scores(
        self,
        outputs: Mapping[str, Array],
        frames: Sequence[EncodedImage],
        vocabulary: Vocabulary,
        *,
        ensemble: bool,
    ) -> np.ndarray:
        """(Q, K + 1) float32: the decoder's class logits, or the open-vocabulary ensemble's
        log-probabilities (CLIP features mask-pooled over the clip) when ``ensemble``."""
        cls: np.ndarray = outputs["class_logits"][0].astype(np.float32)
        if not ensemble:
            return cls
        if CLIP_HEAD.name not in self.runners:
            raise BundleError("open-vocabulary ensemble: this bundle has no CLIP head graph")
        clip_features = np.concatenate([to_host(f.clip_features) for f in frames], axis=0)
        h4, w4 = frames[0].mask_features.shape[-2:]  # stride 4 of the padded input
        mask_logits = to_host(outputs["mask_logits"][0]).astype(np.float32, copy=False)
        pooled, valid = mask_pooled_clip_features(mask_logits, clip_features, (4 * h4, 4 * w4))
        embeddings = self.runners[CLIP_HEAD.name]({"pooled_features": pooled[None]})
        clip_logits = clip_class_logits(
            embeddings["clip_embeddings"][0], vocabulary.class_bank, self.logit_scale
        )
        return open_vocab_ensemble(
            cls,
            clip_logits,
            vocabulary.seen,
            valid,
            alpha=self.postprocess.ov_alpha,
            beta=self.postprocess.ov_beta,
        )

    # ------------------------------------------------------------------ prompts

    @property
    def has_prompts(self) -> bool:
        return PROMPT_ENCODER.name in self.runners

    def prompt_queries(
        self, boxes: np.ndarray, resized_hw: tuple[int, int], *, pad_to: int | None = None
    ) -> tuple[Array, Array]:
        """(P, 4) boxes in resized-image pixels -> (1, P', C) content and position queries,
        P' = P padded (with copies of the first box) to the graph's fixed prompt axis or to
        ``pad_to`` (numpy, or tensors on the PyTorch backend's device)."""
        if not self.has_prompts:
            raise BundleError("prompt: this bundle has no prompt encoder graph")
        runner = self.runners[PROMPT_ENCODER.name]
        total = boxes.shape[0]
        fixed = runner.inputs()["prompt_boxes"].shape[1]
        target = fixed if isinstance(fixed, int) else max(total, pad_to or 0)
        if total > target:
            raise InvalidInputError(
                f"prompts: this bundle's prompt encoder takes {target} prompts per call, "
                f"got {total}"
            )
        if target > total:
            boxes = np.concatenate([boxes, np.repeat(boxes[:1], target - total, axis=0)], axis=0)
        queries = runner(
            {
                "prompt_boxes": boxes[None].astype(np.float32),
                "image_size": np.array([resized_hw], np.float32),
            }
        )
        return queries["query_content"], queries["query_position"]

    def decode_prompts(
        self, frame: EncodedImage, content: Array, position: Array,
        class_bank: np.ndarray,
    ) -> dict[str, Array]:
        """Prompt queries ((1, P, C)) on one image: the prompt decoder (a prompt pays only for
        its own queries), or the query decoder in prompt mode where P reaches
        ``folded_prompts`` or the bundle was exported before the prompt decoder existed. The
        query decoder's raw outputs."""
        runner = self.runners.get(PROMPT_DECODER.name)
        many = self.folded_prompts is not None and content.shape[-2] >= self.folded_prompts
        if runner is None or many:
            return self.decode([frame], content, position, True, class_bank)
        feeds = self.feeds([frame], content, position, True, class_bank)
        del feeds["prompt_mode"]
        return runner(feeds)

    def predict_prompts(
        self,
        frame: EncodedImage,
        resized_hw: tuple[int, int],
        groups: Sequence[np.ndarray],
        class_bank: np.ndarray,
        *,
        pad_to: int | None = None,
    ) -> list[PromptPredictions]:
        """Several prompt groups ((P_i, 4) boxes in resized-image pixels) on one image in one
        prompt-encoder + prompt-decoder call. Prompt queries attend only to themselves, so each
        group's masks equal those of a call of its own."""
        boxes = np.concatenate(list(groups), axis=0)
        content, position = self.prompt_queries(boxes, resized_hw, pad_to=pad_to)
        outputs = self.decode_prompts(frame, content, position, class_bank)
        total = boxes.shape[0]
        mask_logits = outputs["mask_logits"][0, :total, 0]
        iou = outputs["iou_logits"][0, :total].astype(np.float32)
        cls = outputs["class_logits"][0, :total].astype(np.float32)
        out = []
        start = 0
        for group in groups:
            stop = start + group.shape[0]
            out.append(PromptPredictions(mask_logits[start:stop], iou[start:stop], cls[start:stop]))
            start = stop
        return out

    # ------------------------------------------------------------------ text

    def embed_texts(self, token_ids: np.ndarray) -> np.ndarray:
        """(N, L) int64 token ids -> (N, D) text embeddings, honouring a fixed batch axis."""
        runner = self.runners.get(TEXT_ENCODER.name)
        if runner is None:
            raise BundleError(
                "this bundle has no text encoder graph (re-export with the text tower)"
            )
        return run_rows(runner, "token_ids", token_ids, "text_embeddings")


def run_rows(runner: Runner, input_name: str, values: np.ndarray, output_name: str) -> np.ndarray:
    """Run a one-input graph over rows, honouring a fixed batch size (padding the tail)."""
    batch = runner.inputs()[input_name].shape[0]
    if not isinstance(batch, int):
        whole: np.ndarray = runner({input_name: values})[output_name]
        return whole
    outs = []
    for start in range(0, values.shape[0], batch):
        chunk = values[start : start + batch]
        n = chunk.shape[0]
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(runner({input_name: chunk})[output_name][:n])
    return np.concatenate(outs, axis=0)



__all__ = ["Pipeline", "Predictions", "PromptPredictions", "Runner", "run_rows"]
