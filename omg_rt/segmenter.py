"""The user-facing runtime: a bundle (or a checkpoint) behind one backend, answering image,
prompt, vocabulary and video queries, reusing encoder work through the encoder cache.

    seg = Segmenter.from_bundle("bundle/", backend="auto")
    handle = seg.set_image(image)              # encoder + pixel decoder once
    seg.panoptic(handle); seg.instances(handle); seg.semantic(handle)
    seg.prompt(handle, points=[[x, y]], boxes=[[x0, y0, x1, y1]])
    seg.set_vocabulary(["cat", "dog", "grass"], num_things=2)
    session = seg.open_video(task="vis"); session.step(frame) ...; session.finish()

The code below is the same for every backend: graphs are called by their ``omg_rt.spec`` names.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omg_rt.assembly import instance_result, panoptic_result, prompt_result, semantic_result
from omg_rt.backends import BackendChoice, open_backends
from omg_rt.bundle import InputContract, ModelAssets, Vocabulary, load_bundle
from omg_rt.cache import DEFAULT_CACHE_BYTES, EncodedImage, EncoderCache
from omg_rt.encoding import ImageEncoder, ResizedImage
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.inputs import first_mask_objects, prompt_boxes
from omg_rt.postprocess.open_vocab import (
    clip_class_logits,
    mask_pooled_clip_features,
    open_vocab_ensemble,
)
from omg_rt.postprocess.video import video_split
from omg_rt.results import SegmentationResult
from omg_rt.sessions import ImageSession
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    IMAGE_TASKS,
    PIXEL_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    VIDEO_TASKS,
)
from omg_rt.tokenizer import ClipTokenizer
from omg_rt.video import VideoSession
from omg_rt.vocabulary import build_class_bank, check_names, check_num_things, seen_classes

DEFAULT_MAX_ENCODER_BATCH = 4


@dataclass(frozen=True)
class Predictions:
    """The learned queries' outputs for one image or one clip of T frames.

    Attributes:
        class_scores: (Q, K + 1) float32 class logits, or the open-vocabulary ensemble's
            log-probabilities; void last.
        mask_logits: (Q, T, h4, w4) stride-4 mask logits of the padded input.
        iou_logits: (Q,) float32.
        query_embeddings: (Q, C) float32 (video aligns clips on them).
        vocabulary: the vocabulary ``class_scores`` is over.
    """

    class_scores: np.ndarray
    mask_logits: np.ndarray
    iou_logits: np.ndarray
    query_embeddings: np.ndarray
    vocabulary: Vocabulary


class Segmenter:
    """OMG-Seg behind one backend. Thread-safe; errors from bad input leave it serving.

    Use :meth:`from_bundle` or :meth:`from_checkpoint` rather than the constructor.

    Args:
        assets: spec, sizes, queries and vocabulary.
        backend: the opened graphs.
        precision: the graphs' precision (part of the cache key).
        cache_bytes: encoder-cache bound in bytes.
        max_encoder_batch: images per encoder call when the encoder's batch axis is dynamic.
    """

    def __init__(
        self,
        assets: ModelAssets,
        backend: BackendChoice,
        *,
        precision: str = "fp32",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
    ) -> None:
        self.assets = assets
        self.spec = assets.spec
        self.backend = backend
        self.precision = precision
        self.cache = EncoderCache(cache_bytes)
        self._runners = backend.runners
        self._vocabulary = assets.vocabulary
        self._ensemble = False
        self._lock = threading.Lock()
        for graph in (ENCODER, PIXEL_DECODER, QUERY_DECODER):
            if graph.name not in self._runners:
                raise BundleError(f"backend {backend.name} has no {graph.name!r} graph")
        self.image_encoder = ImageEncoder(
            self._runners,
            contract=assets.input,
            preprocess=self.spec.preprocess,
            cache_prefix=(assets.identity, precision),
            cache=self.cache,
            max_batch=max_encoder_batch,
        )
        self.max_encoder_batch = self.image_encoder.max_batch
        frames_axis = self._runners[QUERY_DECODER.name].inputs()["memory_s32"].shape[0]
        # an exported decoder with a fixed frame axis takes exactly that many frames per clip
        self._fixed_clip_size = frames_axis if isinstance(frames_axis, int) else None
        self._post = self.spec.postprocess
        self._logit_scale = np.exp(np.float32(self.spec.query_decoder.logit_scale_log))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        backend: str = "auto",
        precision: str = "fp32",
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str = "auto",
        providers: Any = "auto",
        threads: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
        verify: bool = True,
        tensorrt_options: dict[str, Any] | None = None,
    ) -> Segmenter:
        """Load a bundle and open its graphs.

        Args:
            path: bundle directory.
            backend: ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch`` (needs ``checkpoint``:
                the bundle's spec and learned queries with the checkpoint's weights).
            precision: ``fp32``, ``fp16`` or ``int8``, among the bundle's precisions.
            checkpoint: for ``backend="torch"``, the checkpoint the bundle was exported from.
            device: torch device; providers: onnxruntime providers; threads: onnxruntime
                intra-op threads (0 = all cores).
            cache_bytes: encoder-cache bound; max_encoder_batch: images per encoder call.
            verify: check every file's sha256 against the manifest.
            tensorrt_options: see :class:`omg_rt.backends.tensorrt.TensorRTOptions`.
        """
        bundle = load_bundle(path, verify=verify)
        model = None
        if backend == "torch":
            if checkpoint is None:
                raise InvalidInputError(
                    "checkpoint: backend='torch' needs the checkpoint the bundle was exported "
                    "from, got None"
                )
            from omg_rt.backends.torch import load_torch_model

            model, _ = load_torch_model(checkpoint)
        options = dict(tensorrt_options or {})
        options["threads"] = threads
        choice = open_backends(
            backend,
            bundle=bundle,
            model=model,
            precision=precision,
            device=device,
            providers=providers,
            options=options,
        )
        return cls(
            ModelAssets.from_bundle(bundle),
            choice,
            precision=precision,
            cache_bytes=cache_bytes,
            max_encoder_batch=max_encoder_batch,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | Any,
        backend: str = "torch",
        *,
        vocabulary: Sequence[str] | None = None,
        num_things: int | None = None,
        image_size: int | None = None,
        device: str = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
    ) -> Segmenter:
        """The PyTorch model as a runtime (the reference backend).

        Args:
            path: a checkpoint (``training.model.checkpoint.load_checkpoint``), or an ``OMGSeg``
                model object.
            backend: only ``torch``.
            vocabulary: class names (comma-separated synonyms); the class bank comes from the
                model's text encoder. Required.
            num_things: classes ``[0, num_things)`` are things (default: all).
            image_size: images are resized keeping their ratio into (image_size, image_size)
                and padded to a multiple of 32 (default: the spec's image scale).
        """
        if backend != "torch":
            raise InvalidInputError(
                f"backend: from_checkpoint runs the PyTorch model, expected 'torch', got "
                f"{backend!r} (export a bundle for other backends)"
            )
        from omg_rt.backends.torch import learned_queries, load_torch_model

        if isinstance(path, str | os.PathLike):
            model, spec = load_torch_model(path)
        else:
            model, spec = path, path.config
        names = check_names(vocabulary)
        choice = open_backends("torch", model=model, device=device)
        content, position = learned_queries(model)
        placeholder = Vocabulary(
            names=tuple(names),
            num_things=len(names),
            seen=np.ones(len(names), bool),
            class_bank=np.zeros((len(names), 1, spec.backbone.embed_dim), np.float32),
        )
        from open_clip.tokenizer import default_bpe

        assets = ModelAssets(
            spec=spec,
            identity="torch-"
            + hashlib.sha256(spec.to_json().encode()).hexdigest()[:8]
            + f"-{id(model):x}",
            input=InputContract.at_image_size(spec.preprocess, image_size),
            query_content=content,
            query_position=position,
            vocabulary=placeholder,
            tokenizer=ClipTokenizer(default_bpe(), context_length=spec.text.context_length),
        )
        segmenter = cls(
            assets, choice, cache_bytes=cache_bytes, max_encoder_batch=max_encoder_batch
        )
        segmenter.set_vocabulary(names, num_things=num_things, ensemble=False)
        return segmenter

    def close(self) -> None:
        """Release the backend's sessions / engines and the cache."""
        self.backend.close()
        self.cache.clear()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def backend_report(self) -> list[tuple[str, str]]:
        """Why each faster backend was skipped (``backend="auto"``), and which one runs."""
        return list(self.backend.report)

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    @property
    def input_contract(self) -> InputContract:
        """The sizes the graphs take and how images and frames are resized for them."""
        return self.assets.input

    def graph_calls(self) -> dict[str, int]:
        """How often each graph ran (the cache's effect, measurable)."""
        return {name: runner.calls for name, runner in self._runners.items()}

    # ------------------------------------------------------------------ vocabulary

    def set_vocabulary(
        self,
        names: Sequence[str],
        *,
        num_things: int | None = None,
        ensemble: bool | None = None,
    ) -> Vocabulary:
        """Replace the class vocabulary (text encoder graph + tokenizer; no torch).

        Args:
            names: K class names; comma-separated synonyms per name (``"car,automobile"``).
            num_things: classes ``[0, num_things)`` are things, the rest stuff (default: all).
            ensemble: use the open-vocabulary CLIP ensemble (alpha/beta of the spec). Default:
                on when some name is not among the bundle's seen (training) classes.

        Returns:
            the new :class:`~omg_rt.bundle.Vocabulary`.
        """
        names = check_names(names)
        num_things = check_num_things(num_things, len(names))
        runner = self._runners.get(TEXT_ENCODER.name)
        tokenizer = self.assets.tokenizer
        if runner is None or tokenizer is None:
            raise BundleError(
                "set_vocabulary: this bundle has no text encoder graph or tokenizer "
                "(re-export with the text tower)"
            )

        def embed(texts: list[str]) -> np.ndarray:
            return self._run_chunked(runner, "token_ids", tokenizer(texts), "text_embeddings")

        bank = build_class_bank(names, embed)
        base = self.assets.vocabulary
        seen = seen_classes(names, base.names, base.seen)
        vocabulary = Vocabulary(
            names=tuple(names), num_things=num_things, seen=seen, class_bank=bank
        )
        with self._lock:
            self._vocabulary = vocabulary
            self._ensemble = bool((~seen).any()) if ensemble is None else bool(ensemble)
        return vocabulary

    def set_class_bank(
        self,
        names: Sequence[str],
        class_bank: np.ndarray,
        *,
        num_things: int | None = None,
        seen: np.ndarray | Sequence[bool] | None = None,
        ensemble: bool | None = None,
    ) -> Vocabulary:
        """Use precomputed text embeddings as the vocabulary (an official ``gen_cls`` bank, or
        a bank built elsewhere); no text encoder needed.

        Args:
            names: K class names.
            class_bank: (K, S, D) float32 unit-norm text embeddings, D = the model's CLIP width.
            num_things: classes ``[0, num_things)`` are things (default: all).
            seen: (K,) bool, classes seen in training (open-vocabulary ensemble weights);
                default: matched by name against the bundle's vocabulary.
            ensemble: use the open-vocabulary CLIP ensemble (default: when a class is unseen).
        """
        names = check_names(names)
        num_things = check_num_things(num_things, len(names))
        bank = np.asarray(class_bank)
        dim = self.spec.backbone.embed_dim
        if bank.dtype != np.float32 or bank.ndim != 3 or bank.shape[0] != len(names) \
                or bank.shape[2] != dim or bank.shape[1] < 1:
            raise InvalidInputError(
                f"class_bank: expected float32 ({len(names)}, S, {dim}), got {bank.dtype} "
                f"{bank.shape}"
            )
        norms = np.linalg.norm(bank, axis=-1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise InvalidInputError(
                f"class_bank: expected unit-norm rows, got norms in [{norms.min():.3g}, "
                f"{norms.max():.3g}]"
            )
        base = self.assets.vocabulary
        if seen is None:
            seen_mask = seen_classes(names, base.names, base.seen)
        else:
            seen_mask = np.asarray(seen, dtype=bool)
            if seen_mask.shape != (len(names),):
                raise InvalidInputError(
                    f"seen: expected ({len(names)},) bool, got {seen_mask.shape}"
                )
        vocabulary = Vocabulary(
            names=tuple(names),
            num_things=num_things,
            seen=seen_mask,
            class_bank=np.ascontiguousarray(bank),
        )
        with self._lock:
            self._vocabulary = vocabulary
            self._ensemble = bool((~seen_mask).any()) if ensemble is None else bool(ensemble)
        return vocabulary

    # ------------------------------------------------------------------ images

    def set_image(self, image: np.ndarray | str | os.PathLike[str]) -> ImageSession:
        """Run (or fetch from the cache) the encoder and pixel decoder for one image.

        Args:
            image: (H, W, 3) uint8 RGB, or an image file path.

        Returns:
            an :class:`ImageSession` handle for the task and prompt methods.
        """
        encoder = self.image_encoder
        return encoder.sessions([encoder.prepare(image, "image")])[0]

    def set_images(
        self, images: Sequence[np.ndarray | str | os.PathLike[str]]
    ) -> list[ImageSession]:
        """:meth:`set_image` for several images, encoder misses batched."""
        encoder = self.image_encoder
        prepared = [encoder.prepare(img, f"images[{i}]") for i, img in enumerate(images)]
        return encoder.sessions(prepared)

    def panoptic(self, image: Any) -> SegmentationResult:
        """Panoptic segmentation (official merge: things with instance ids, stuff merged)."""
        session = self._session(image)
        p = self._predict([session.encoded])
        return panoptic_result(
            session, p.class_scores, p.mask_logits[:, 0], p.vocabulary, self._post
        )

    def instances(self, image: Any) -> SegmentationResult:
        """Instance segmentation (official top-k over queries x thing classes)."""
        session = self._session(image)
        p = self._predict([session.encoded])
        return instance_result(
            session, p.class_scores, p.mask_logits[:, 0], p.vocabulary, self._post
        )

    def semantic(self, image: Any) -> SegmentationResult:
        """Semantic segmentation (Mask2Former per-pixel class argmax); a class's score is its
        mean mask-weighted class probability over its pixels."""
        session = self._session(image)
        p = self._predict([session.encoded])
        return semantic_result(session, p.class_scores, p.mask_logits[:, 0], p.vocabulary)

    def segment(self, image: Any, task: str) -> SegmentationResult:
        """``panoptic``, ``instance`` or ``semantic`` by name."""
        if task not in IMAGE_TASKS:
            raise InvalidInputError(f"task: expected one of {IMAGE_TASKS}, got {task!r}")
        return {"panoptic": self.panoptic, "instance": self.instances, "semantic": self.semantic}[
            task
        ](image)

    def prompt(
        self,
        image: Any,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
    ) -> SegmentationResult:
        """Interactive segmentation: one mask per point and per box, all in one decoder call.

        Args:
            image: an image, a path, or an :class:`ImageSession` from :meth:`set_image`.
            points: (N, 2) clicks (x, y) in original-image pixels.
            labels: (N,) point labels; OMG-Seg's clicks are foreground prompts, so only 1 is
                accepted (None = all 1).
            boxes: (M, 4) boxes (x0, y0, x1, y1) in original-image pixels.

        Returns:
            a result with N + M masks (points first), ``scores`` = sigmoid(IoU head),
            ``labels`` = each mask's best class, ``ids`` = 1..N+M.
        """
        session = self._session(image)
        group = self.prompt_boxes(session, points=points, labels=labels, boxes=boxes)
        return self._prompt_many(session, [group])[0]

    def prompt_boxes(
        self,
        session: ImageSession | ResizedImage,
        *,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
    ) -> np.ndarray:
        """Validate prompts and turn them into (P, 4) float32 boxes in resized-image pixels
        (a click becomes [x - r, y - r, x + r, y + r], r = 3, in resized pixels, as official)."""
        return prompt_boxes(
            session.original_hw,
            session.resized_hw,
            points=points,
            labels=labels,
            boxes=boxes,
            point_radius=self.spec.query_decoder.point_box_radius,
        )

    # ------------------------------------------------------------------ video

    def open_video(
        self,
        task: str = "vis",
        *,
        first_mask: np.ndarray | None = None,
        clip_size: int | None = None,
        num_frames: int | None = None,
        whole_video: bool = False,
    ) -> VideoSession:
        """Start a streaming video session.

        Args:
            task: ``vis`` (instances with track ids), ``vps`` (panoptic with stable ids), ``vss``
                (semantic) or ``vos`` (follow the objects of ``first_mask``).
            first_mask: VOS: (H, W) integer id map of frame 0 (0 = background), or (M, H, W)
                bool masks (ids 1..M).
            clip_size: frames decoded together (default: the spec's ``clip_size``; 1 when the
                query decoder takes a single frame).
            num_frames: the video's frame count, when known (a file): clips are then cut as
                the official ``video_split`` cuts tubes (the spec's small clip size for videos
                of at most ``small_clip_threshold`` frames; 7 frames in tubes of 3 -> 3 + 2 + 2).
            whole_video: the official offline evaluation: results come from ``finish()`` with
                the class and IoU logits averaged over every clip (the stream's results use the
                clips seen so far). Memory grows with the video (stride-4 masks per frame).
        """
        if task not in VIDEO_TASKS:
            raise InvalidInputError(f"task: expected one of {VIDEO_TASKS}, got {task!r}")
        if clip_size is not None and (
            isinstance(clip_size, bool) or not isinstance(clip_size, int) or clip_size < 1
        ):
            raise InvalidInputError(f"clip_size: expected an int >= 1, got {clip_size!r}")
        # a decoder exported with a fixed frame axis takes exactly that many frames per clip
        explicit = self._fixed_clip_size or clip_size
        clip_size = explicit or self._post.clip_size
        clip_sizes: tuple[int, ...] = ()
        if num_frames is not None:
            if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
                raise InvalidInputError(f"num_frames: expected an int >= 1, got {num_frames!r}")
            tubes = video_split(
                num_frames,
                clip_size=explicit or self._post.clip_size,
                clip_size_small=explicit or self._post.clip_size_small,
                small_clip_thr=self._post.small_clip_threshold,
            )
            clip_sizes = tuple(end - start for start, end in tubes)
        masks: np.ndarray | None = None
        ids: tuple[int, ...] = ()
        if task == "vos":
            if first_mask is None:
                raise InvalidInputError("first_mask: required for task='vos', got None")
            masks, ids = first_mask_objects(first_mask)
        elif first_mask is not None:
            raise InvalidInputError(f"first_mask: only used by task='vos', got task={task!r}")
        return VideoSession(
            runtime=self,
            task=task,
            clip_size=clip_size,
            first_mask=masks,
            object_ids=ids,
            clip_sizes=clip_sizes,
            whole_video=bool(whole_video),
        )

    # ------------------------------------------------------------------ internals: sessions

    def _session(self, image: Any) -> ImageSession:
        if isinstance(image, ImageSession):
            if image.key[0] != self.assets.identity or image.key[1] != self.precision:
                raise InvalidInputError(
                    "image: this ImageSession comes from another bundle or precision"
                )
            return image
        return self.set_image(image)

    def _frame_session(self, frame: Any, name: str) -> ImageSession:
        """Video frames use the cache for repeated content but are not stored in it: a long
        stream would evict every image entry. The session drops them after their clip."""
        encoder = self.image_encoder
        return encoder.sessions([encoder.prepare(frame, name, video=True)], store=False)[0]

    # ------------------------------------------------------------------ internals: decoding

    def _decode(
        self,
        frames: list[EncodedImage],
        content: np.ndarray,
        position: np.ndarray,
        prompt_mode: bool,
        vocabulary: Vocabulary,
    ) -> dict[str, np.ndarray]:
        """Query decoder over one clip (B = 1, T = len(frames)); outputs with batch axis 1."""
        feeds = {
            name: np.concatenate([getattr(f, name) for f in frames], axis=0)
            if len(frames) > 1
            else getattr(frames[0], name)
            for name in ("memory_s32", "memory_s16", "memory_s8", "mask_features")
        }
        feeds["class_bank"] = vocabulary.class_bank
        feeds["query_content"] = content[None] if content.ndim == 2 else content
        feeds["query_position"] = position[None] if position.ndim == 2 else position
        feeds["prompt_mode"] = np.array(prompt_mode)
        return self._runners[QUERY_DECODER.name](feeds)

    def _learned(self, frames: list[EncodedImage], vocabulary: Vocabulary) -> dict[str, np.ndarray]:
        return self._decode(
            frames, self.assets.query_content, self.assets.query_position, False, vocabulary
        )

    def _predict(self, frames: list[EncodedImage]) -> Predictions:
        """The learned queries over one image or clip, scored with the current vocabulary."""
        vocabulary, ensemble = self._vocabulary, self._ensemble
        outputs = self._learned(frames, vocabulary)
        return Predictions(
            class_scores=self._class_logits(outputs, frames, vocabulary, ensemble),
            mask_logits=outputs["mask_logits"][0],
            iou_logits=outputs["iou_logits"][0].astype(np.float32),
            query_embeddings=outputs["query_embeddings"][0].astype(np.float32),
            vocabulary=vocabulary,
        )

    def _class_logits(
        self,
        outputs: dict[str, np.ndarray],
        frames: list[EncodedImage],
        vocabulary: Vocabulary,
        ensemble: bool,
    ) -> np.ndarray:
        """(Q, K + 1) float32: the decoder's class logits, or the open-vocabulary ensemble's
        log-probabilities (CLIP features mask-pooled over the clip) when enabled."""
        cls: np.ndarray = outputs["class_logits"][0].astype(np.float32)
        if not ensemble:
            return cls
        clip_features = np.concatenate([f.clip_features for f in frames], axis=0)  # (T, C, hc, wc)
        h4, w4 = frames[0].mask_features.shape[-2:]  # stride 4 of the padded input
        mask_logits = outputs["mask_logits"][0].astype(np.float32, copy=False)
        pooled, valid = mask_pooled_clip_features(mask_logits, clip_features, (4 * h4, 4 * w4))
        embeddings = self._runners[CLIP_HEAD.name]({"pooled_features": pooled[None]})
        clip_logits = clip_class_logits(
            embeddings["clip_embeddings"][0], vocabulary.class_bank, self._logit_scale
        )
        return open_vocab_ensemble(
            cls,
            clip_logits,
            vocabulary.seen,
            valid,
            alpha=self._post.ov_alpha,
            beta=self._post.ov_beta,
        )

    def _prompt_many(
        self, session: ImageSession, groups: list[np.ndarray], pad_to: int | None = None
    ) -> list[SegmentationResult]:
        """Several prompt sets on one image in one prompt-encoder + query-decoder call.

        The prompt axis is the concatenation of the groups, padded (with copies of the first
        box) to ``pad_to``; prompt queries attend only to themselves, so each group's masks
        equal those of a call of its own.
        """
        if PROMPT_ENCODER.name not in self._runners:
            raise BundleError("prompt: this bundle has no prompt encoder graph")
        vocabulary = self._vocabulary
        boxes = np.concatenate(groups, axis=0)
        total = boxes.shape[0]
        fixed = self._runners[PROMPT_ENCODER.name].inputs()["prompt_boxes"].shape[1]
        target = fixed if isinstance(fixed, int) else max(total, pad_to or 0)
        if total > target:
            raise InvalidInputError(
                f"prompts: this bundle's prompt encoder takes {target} prompts per call, "
                f"got {total}"
            )
        if target > total:
            boxes = np.concatenate([boxes, np.repeat(boxes[:1], target - total, axis=0)], axis=0)
        image_size = np.array([session.resized_hw], np.float32)
        queries = self._runners[PROMPT_ENCODER.name](
            {"prompt_boxes": boxes[None].astype(np.float32), "image_size": image_size}
        )
        outputs = self._decode(
            [session.encoded], queries["query_content"], queries["query_position"], True, vocabulary
        )
        mask_logits = outputs["mask_logits"][0, :total, 0]
        iou = outputs["iou_logits"][0, :total].astype(np.float32)
        cls = outputs["class_logits"][0, :total].astype(np.float32)
        results = []
        start = 0
        for group in groups:
            stop = start + group.shape[0]
            results.append(
                prompt_result(
                    session, mask_logits[start:stop], iou[start:stop], cls[start:stop], vocabulary
                )
            )
            start = stop
        return results

    def _run_chunked(
        self, runner: Any, input_name: str, values: np.ndarray, output_name: str
    ) -> np.ndarray:
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
