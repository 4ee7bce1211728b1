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
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from omg_rt.backends import BackendChoice, open_backends
from omg_rt.bundle import Bundle, Vocabulary, load_bundle
from omg_rt.cache import DEFAULT_CACHE_BYTES, EncodedImage, EncoderCache
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.postprocess._common import softmax
from omg_rt.postprocess.instance import instances_from_masks, select_instances
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.open_vocab import (
    clip_class_logits,
    mask_pooled_clip_features,
    open_vocab_ensemble,
)
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET, PanopticResult, panoptic_results
from omg_rt.postprocess.semantic import semantic_results
from omg_rt.postprocess.video import align_clips, vos_assign_ids, vos_proposals, vps_results
from omg_rt.preprocess import keep_ratio_size, normalize_and_pad
from omg_rt.results import SegmentationResult
from omg_rt.sessions import VIDEO_TASKS, ImageSession, TrackState, VideoSession
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    PIXEL_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    ModelSpec,
)
from omg_rt.tokenizer import ClipTokenizer
from omg_rt.vocabulary import build_class_bank, check_names, split_label

IMAGE_TASKS = ("panoptic", "instance", "semantic")
DEFAULT_MAX_ENCODER_BATCH = 4


@dataclass(frozen=True)
class ModelAssets:
    """Everything besides the graphs: spec, identity, sizes, learned queries, vocabulary.

    Attributes:
        spec: the model spec.
        identity: bundle identity (cache keys include it).
        input_size: (H, W) fixed padded encoder input.
        query_content, query_position: (Q, C) float32 learned queries.
        vocabulary: the default vocabulary.
        tokenizer: CLIP tokenizer for ``set_vocabulary`` (None if the bundle has none).
    """

    spec: ModelSpec
    identity: str
    input_size: tuple[int, int]
    query_content: np.ndarray
    query_position: np.ndarray
    vocabulary: Vocabulary
    tokenizer: ClipTokenizer | None

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelAssets:
        tokenizer = None
        if bundle.tokenizer_file is not None:
            tokenizer = ClipTokenizer(bundle.tokenizer_file, context_length=bundle.context_length)
        return cls(
            spec=bundle.spec,
            identity=bundle.identity,
            input_size=bundle.input_size,
            query_content=bundle.query_content,
            query_position=bundle.query_position,
            vocabulary=bundle.vocabulary,
            tokenizer=tokenizer,
        )


@dataclass(frozen=True)
class _Prepared:
    key: tuple
    original_hw: tuple[int, int]
    resized: np.ndarray  # (Hr, Wr, 3) uint8

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.resized.shape[0]), int(self.resized.shape[1])


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
        batch_axis = self._runners[ENCODER.name].inputs()["image"].shape[0]
        self.max_encoder_batch = (
            batch_axis if isinstance(batch_axis, int) else max(1, int(max_encoder_batch))
        )
        self._fixed_batch = isinstance(batch_axis, int)
        post = self.spec.postprocess
        self._post = post
        self._logit_scale = np.exp(np.float32(self.spec.query_decoder.logit_scale_log))
        self._mean, self._std = self.spec.preprocess.mean, self.spec.preprocess.std
        self._size_divisor = self.spec.preprocess.size_divisor

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        precision: str = "fp32",
        *,
        checkpoint: str | os.PathLike | None = None,
        device: str = "auto",
        providers: Any = "auto",
        threads: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
        verify: bool = True,
        tensorrt_options: dict | None = None,
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
        path: str | os.PathLike | Any,
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
            image_size: padded square input size (default: the spec's image scale).
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
        size = image_size or max(spec.preprocess.image_scale)
        size = -(-int(size) // spec.preprocess.size_divisor) * spec.preprocess.size_divisor
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
            input_size=(size, size),
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
    def input_size(self) -> tuple[int, int]:
        return self.assets.input_size

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
        k = len(names)
        if num_things is None:
            num_things = k
        if (
            isinstance(num_things, bool)
            or not isinstance(num_things, int | np.integer)
            or not (0 <= num_things <= k)
        ):
            raise InvalidInputError(f"num_things: expected an int in [0, {k}], got {num_things!r}")
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
        seen = self._seen(names)
        vocabulary = Vocabulary(
            names=tuple(names), num_things=int(num_things), seen=seen, class_bank=bank
        )
        with self._lock:
            self._vocabulary = vocabulary
            self._ensemble = bool((~seen).any()) if ensemble is None else bool(ensemble)
        return vocabulary

    def _seen(self, names: list[str]) -> np.ndarray:
        """A class is seen when one of its synonyms is verbatim a seen training synonym."""
        base = self.assets.vocabulary
        training = {
            s
            for name, ok in zip(base.names, base.seen, strict=True)
            if ok
            for s in split_label(name)
        }
        return np.array([bool(training & set(split_label(n))) for n in names], dtype=bool)

    # ------------------------------------------------------------------ images

    def set_image(self, image: np.ndarray | str | os.PathLike) -> ImageSession:
        """Run (or fetch from the cache) the encoder and pixel decoder for one image.

        Args:
            image: (H, W, 3) uint8 RGB, or an image file path.

        Returns:
            an :class:`ImageSession` handle for the task and prompt methods.
        """
        return self._sessions([self._prepare(image, "image")])[0]

    def set_images(self, images: Sequence[np.ndarray | str | os.PathLike]) -> list[ImageSession]:
        """:meth:`set_image` for several images, encoder misses batched."""
        return self._sessions([self._prepare(img, f"images[{i}]") for i, img in enumerate(images)])

    def panoptic(self, image: Any) -> SegmentationResult:
        """Panoptic segmentation (official merge: things with instance ids, stuff merged)."""
        session = self._session(image)
        cls, mask_logits = self._image_predictions(session)
        return self._panoptic_result(session, cls, mask_logits[:, 0])

    def instances(self, image: Any) -> SegmentationResult:
        """Instance segmentation (official top-k over queries x thing classes)."""
        session = self._session(image)
        cls, mask_logits = self._image_predictions(session)
        return self._instance_result(session, cls, mask_logits[:, 0], ids=None)

    def semantic(self, image: Any) -> SegmentationResult:
        """Semantic segmentation (Mask2Former per-pixel class argmax)."""
        session = self._session(image)
        cls, mask_logits = self._image_predictions(session)
        return self._semantic_result(session, cls, mask_logits[:, 0])

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
        prompt_boxes = self.prompt_boxes(session, points=points, labels=labels, boxes=boxes)
        return self._prompt_many(session, [prompt_boxes])[0]

    def prompt_boxes(
        self,
        session: ImageSession | _Prepared,
        *,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
    ) -> np.ndarray:
        """Validate prompts and turn them into (P, 4) float32 boxes in resized-image pixels
        (a click becomes [x - r, y - r, x + r, y + r], r = 3, in resized pixels, as official)."""
        h, w = session.original_hw
        parts = []
        pts = _prompt_array(points, "points", 2)
        if pts is not None:
            if labels is not None:
                lab = np.asarray(labels)
                if lab.shape != (pts.shape[0],):
                    raise InvalidInputError(
                        f"labels: expected ({pts.shape[0]},) (one per point), got {lab.shape}"
                    )
                if not np.all(lab == 1):
                    raise InvalidInputError(
                        f"labels: OMG-Seg clicks are independent foreground prompts; expected all "
                        f"1, got {lab.tolist()} (background clicks are not supported)"
                    )
            _inside(pts[:, 0], w, "points", "x", (h, w))
            _inside(pts[:, 1], h, "points", "y", (h, w))
            parts.append(pts)
        elif labels is not None:
            raise InvalidInputError("labels: given without points")
        bxs = _prompt_array(boxes, "boxes", 4)
        sy = session.resized_hw[0] / h
        sx = session.resized_hw[1] / w
        r = self.spec.query_decoder.point_box_radius
        out = []
        if pts is not None:
            scaled = pts * np.array([sx, sy], np.float32)
            out.append(np.concatenate([scaled - r, scaled + r], axis=1))
        if bxs is not None:
            _inside(bxs[:, [0, 2]].ravel(), w, "boxes", "x", (h, w))
            _inside(bxs[:, [1, 3]].ravel(), h, "boxes", "y", (h, w))
            if np.any(bxs[:, 2] < bxs[:, 0]) or np.any(bxs[:, 3] < bxs[:, 1]):
                raise InvalidInputError(
                    f"boxes: expected x0 <= x1 and y0 <= y1, got {bxs.tolist()}"
                )
            out.append(bxs * np.array([sx, sy, sx, sy], np.float32))
        if not out:
            raise InvalidInputError("prompt: expected points and/or boxes, got neither")
        return np.concatenate(out, axis=0).astype(np.float32)

    # ------------------------------------------------------------------ video

    def open_video(
        self,
        task: str = "vis",
        *,
        first_mask: np.ndarray | None = None,
        clip_size: int | None = None,
    ) -> VideoSession:
        """Start a streaming video session.

        Args:
            task: ``vis`` (instances with track ids), ``vps`` (panoptic with stable ids), ``vss``
                (semantic) or ``vos`` (follow the objects of ``first_mask``).
            first_mask: VOS: (H, W) integer id map of frame 0 (0 = background), or (M, H, W)
                bool masks (ids 1..M).
            clip_size: frames decoded together (default: the spec's ``clip_size``; 1 when the
                query decoder takes a single frame).
        """
        if task not in VIDEO_TASKS:
            raise InvalidInputError(f"task: expected one of {VIDEO_TASKS}, got {task!r}")
        frames_axis = self._runners[QUERY_DECODER.name].inputs()["memory_s32"].shape[0]
        if clip_size is None:
            clip_size = self._post.clip_size
        if isinstance(clip_size, bool) or not isinstance(clip_size, int) or clip_size < 1:
            raise InvalidInputError(f"clip_size: expected an int >= 1, got {clip_size!r}")
        if isinstance(frames_axis, int):
            clip_size = frames_axis  # the exported decoder takes exactly this many frames
        masks, ids = None, ()
        if task == "vos":
            if first_mask is None:
                raise InvalidInputError("first_mask: required for task='vos', got None")
            masks, ids = _first_mask(first_mask)
        elif first_mask is not None:
            raise InvalidInputError(f"first_mask: only used by task='vos', got task={task!r}")
        return VideoSession(
            runtime=self, task=task, clip_size=clip_size, first_mask=masks, object_ids=ids
        )

    # ------------------------------------------------------------------ internals: encoding

    def _prepare(self, image: Any, name: str) -> _Prepared:
        image = _read_image(image, name)
        hin, win = self.input_size
        long_edge, short_edge = max(hin, win), min(hin, win)
        hr, wr = keep_ratio_size(image.shape[:2], (long_edge, short_edge))
        if hr > hin or wr > win:  # a portrait image in a landscape input: fit it instead
            factor = min(hin / image.shape[0], win / image.shape[1])
            hr, wr = int(image.shape[0] * factor + 0.5), int(image.shape[1] * factor + 0.5)
        resized = cv2.resize(image, (wr, hr), interpolation=cv2.INTER_LINEAR)
        digest = hashlib.blake2b(resized.tobytes(), digest_size=16)
        digest.update(np.asarray(resized.shape, np.int64).tobytes())
        key = (self.assets.identity, self.precision, digest.hexdigest())
        return _Prepared(key=key, original_hw=image.shape[:2], resized=resized)

    def _tensor(self, prepared: _Prepared) -> np.ndarray:
        """(1, 3, Hin, Win) float32: normalised, zero padded to the fixed input size."""
        tensor = normalize_and_pad(prepared.resized, self._mean, self._std, self._size_divisor)
        hin, win = self.input_size
        out = np.zeros((1, 3, hin, win), np.float32)
        h, w = min(tensor.shape[2], hin), min(tensor.shape[3], win)
        out[:, :, :h, :w] = tensor[:, :, :h, :w]
        return out

    def _encode(self, prepared: list[_Prepared]) -> list[EncodedImage]:
        """Encoder + pixel decoder, batched up to ``max_encoder_batch``."""
        encoded: list[EncodedImage] = []
        step = self.max_encoder_batch
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
            images = np.concatenate([self._tensor(p) for p in chunk], axis=0)
            n = images.shape[0]
            if self._fixed_batch and n < step:  # pad a fixed-batch engine with zeros
                images = np.concatenate(
                    [images, np.zeros((step - n, *images.shape[1:]), np.float32)], axis=0
                )
            features = self._runners[ENCODER.name]({"image": images})
            pixels = self._runners[PIXEL_DECODER.name](
                {name: features[name] for name in PIXEL_DECODER.inputs}
            )
            for i in range(n):
                encoded.append(
                    EncodedImage(
                        mask_features=_row(pixels["mask_features"], i),
                        memory_s32=_row(pixels["memory_s32"], i),
                        memory_s16=_row(pixels["memory_s16"], i),
                        memory_s8=_row(pixels["memory_s8"], i),
                        clip_features=_row(features["features_s32"], i),
                    )
                )
        return encoded

    def _sessions(self, prepared: list[_Prepared], *, store: bool = True) -> list[ImageSession]:
        found: list[EncodedImage | None] = [self.cache.get(p.key) for p in prepared]
        missing: dict[tuple, list[int]] = {}
        for i, value in enumerate(found):
            if value is None:
                missing.setdefault(prepared[i].key, []).append(i)
        if missing:
            todo = [prepared[idx[0]] for idx in missing.values()]
            for p, value in zip(todo, self._encode(todo), strict=True):
                if store:
                    self.cache.put(p.key, value)
                for i in missing[p.key]:
                    found[i] = value
        return [
            ImageSession(
                key=p.key,
                original_hw=(int(p.original_hw[0]), int(p.original_hw[1])),
                resized_hw=(int(p.resized.shape[0]), int(p.resized.shape[1])),
                padded_hw=self.input_size,
                encoded=value,  # type: ignore[arg-type]
            )
            for p, value in zip(prepared, found, strict=True)
        ]

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
        return self._sessions([self._prepare(frame, name)], store=False)[0]

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

    def _class_logits(
        self,
        outputs: dict[str, np.ndarray],
        frames: list[EncodedImage],
        vocabulary: Vocabulary,
        ensemble: bool,
    ) -> np.ndarray:
        """(Q, K + 1) float32 class scores: the decoder's logits, or the open-vocabulary
        ensemble's log-probabilities (CLIP mask pooling over the clip) when enabled."""
        cls = outputs["class_logits"][0].astype(np.float32)
        if not ensemble:
            return cls
        clip_features = np.concatenate([f.clip_features for f in frames], axis=0)  # (T, C, hc, wc)
        pooled, valid = mask_pooled_clip_features(
            outputs["mask_logits"][0].astype(np.float32, copy=False), clip_features, self.input_size
        )
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

    def _image_predictions(self, session: ImageSession) -> tuple[np.ndarray, np.ndarray]:
        vocabulary, ensemble = self._vocabulary, self._ensemble
        outputs = self._learned([session.encoded], vocabulary)
        cls = self._class_logits(outputs, [session.encoded], vocabulary, ensemble)
        return cls, outputs["mask_logits"][0]  # (Q, K + 1), (Q, T, h4, w4)

    def _full(self, session: ImageSession, mask_logits: np.ndarray) -> np.ndarray:
        """(N, h4, w4) stride-4 logits -> (N, H, W) at the original size."""
        return upsample_masks(
            np.ascontiguousarray(mask_logits, dtype=np.float32),
            session.padded_hw,
            session.resized_hw,
            session.original_hw,
        )

    def _panoptic_result(
        self,
        session: ImageSession,
        cls: np.ndarray,
        mask_logits: np.ndarray,
        *,
        video_ids: bool = False,
        task: str = "panoptic",
        frame_index: int | None = None,
    ) -> SegmentationResult:
        vocabulary = self._vocabulary
        k = cls.shape[1] - 1
        probs = softmax(cls)
        labels = probs.argmax(-1)
        scores = probs[np.arange(cls.shape[0]), labels]
        # Only non-void queries above the threshold can paint: resizing just those is exact.
        kept = np.flatnonzero(
            (labels != k) & (scores > np.float32(self._post.object_mask_threshold))
        )
        full = self._full(session, mask_logits[kept])
        if video_ids:
            result = vps_results(
                cls[kept],
                [full],
                vocabulary.num_things,
                object_mask_thr=self._post.object_mask_threshold,
                iou_thr=self._post.overlap_threshold,
                query_ids=kept,
            )[0]
        else:
            result = panoptic_results(
                cls[kept],
                full,
                vocabulary.num_things,
                object_mask_thr=self._post.object_mask_threshold,
                iou_thr=self._post.overlap_threshold,
            )
        return _from_panoptic(result, vocabulary, task, frame_index, k)

    def _instance_result(
        self,
        session: ImageSession,
        cls: np.ndarray,
        mask_logits: np.ndarray,
        *,
        ids: str | None,
        task: str = "instance",
        frame_index: int | None = None,
    ) -> SegmentationResult:
        vocabulary = self._vocabulary
        probs, labels, queries = select_instances(
            cls, vocabulary.num_things, self._post.max_per_image
        )
        inst = instances_from_masks(
            probs, labels, queries, self._full(session, mask_logits[queries])
        )
        n = inst.scores.shape[0]
        if ids == "query":  # video: (aligned query slot, class) is the persistent track
            identity = inst.labels + (queries + 1) * _id_offset(cls.shape[1] - 1)
        else:
            identity = np.arange(1, n + 1, dtype=np.int64)
        return SegmentationResult(
            task=task,
            masks=inst.masks,
            scores=inst.scores,
            labels=inst.labels,
            ids=identity.astype(np.int64),
            class_names=vocabulary.names,
            boxes=inst.boxes,
            is_thing=np.ones(n, bool),
            frame_index=frame_index,
        )

    def _semantic_result(
        self,
        session: ImageSession,
        cls: np.ndarray,
        mask_logits: np.ndarray,
        *,
        task: str = "semantic",
        frame_index: int | None = None,
    ) -> SegmentationResult:
        vocabulary = self._vocabulary
        label_map = semantic_results(cls, self._full(session, mask_logits))
        classes = np.unique(label_map)
        masks = label_map[None] == classes[:, None, None]
        from omg_rt.postprocess.instance import masks_to_boxes

        return SegmentationResult(
            task=task,
            masks=masks,
            scores=np.ones(classes.shape[0], np.float32),
            labels=classes.astype(np.int64),
            ids=classes.astype(np.int64),
            class_names=vocabulary.names,
            boxes=masks_to_boxes(masks),
            id_map=label_map.astype(np.int32),
            is_thing=classes < vocabulary.num_things,
            frame_index=frame_index,
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
            pr = prompt_results(
                np.ascontiguousarray(mask_logits[start:stop], dtype=np.float32),
                iou[start:stop],
                session.padded_hw,
                session.resized_hw,
                session.original_hw,
            )
            from omg_rt.postprocess.instance import masks_to_boxes

            n = stop - start
            results.append(
                SegmentationResult(
                    task="prompt",
                    masks=pr.masks,
                    scores=pr.scores.astype(np.float32),
                    labels=cls[start:stop, :-1].argmax(-1).astype(np.int64),
                    ids=np.arange(1, n + 1, dtype=np.int64),
                    class_names=vocabulary.names,
                    boxes=masks_to_boxes(pr.masks),
                    is_thing=np.ones(n, bool),
                )
            )
            start = stop
        return results

    def _decode_video_clip(
        self, video: VideoSession, frames: list[tuple[int, ImageSession]]
    ) -> list[SegmentationResult]:
        """Decode one clip, align it to the previous one, return its frames' results."""
        vocabulary, ensemble = self._vocabulary, self._ensemble
        encoded = [s.encoded for _, s in frames]
        real = len(encoded)
        if real < video.clip_size and isinstance(
            self._runners[QUERY_DECODER.name].inputs()["memory_s32"].shape[0], int
        ):  # a fixed-T decoder: repeat the last frame, drop its outputs
            encoded = encoded + [encoded[-1]] * (video.clip_size - real)
        outputs = self._learned(encoded, vocabulary)
        cls = self._class_logits(outputs, encoded, vocabulary, ensemble)
        embeddings = outputs["query_embeddings"][0].astype(np.float32)
        if video.target_embeddings is None:
            perm = np.arange(embeddings.shape[0])
        else:
            perm = align_clips([video.target_embeddings, embeddings])[1]
        video.target_embeddings = embeddings[perm]
        aligned_cls = cls[perm]
        aligned_iou = outputs["iou_logits"][0].astype(np.float32)[perm]
        video.class_logit_sum = (
            aligned_cls.copy()
            if video.class_logit_sum is None
            else video.class_logit_sum + aligned_cls
        )
        video.iou_logit_sum = (
            aligned_iou.copy() if video.iou_logit_sum is None else video.iou_logit_sum + aligned_iou
        )
        n_clips = np.float32(video.clips_done + 1)
        avg_cls = (video.class_logit_sum / n_clips).astype(np.float32)
        avg_iou = (video.iou_logit_sum / n_clips).astype(np.float32)
        mask_logits = outputs["mask_logits"][0][perm]  # (Q, T, h4, w4), aligned slots

        results = []
        for t, (index, session) in enumerate(frames):
            frame_logits = mask_logits[:, t]
            if video.task == "vis":
                result = self._instance_result(
                    session, avg_cls, frame_logits, ids="query", task="vis", frame_index=index
                )
            elif video.task == "vps":
                result = self._panoptic_result(
                    session, avg_cls, frame_logits, video_ids=True, task="vps", frame_index=index
                )
            elif video.task == "vss":
                result = self._semantic_result(
                    session, avg_cls, frame_logits, task="vss", frame_index=index
                )
            else:
                result = self._vos_result(video, session, avg_iou, frame_logits, index)
            _update_tracks(video, result)
            results.append(result)
        return results

    def _vos_result(
        self,
        video: VideoSession,
        session: ImageSession,
        avg_iou: np.ndarray,
        frame_logits: np.ndarray,
        index: int,
    ) -> SegmentationResult:
        assert video.first_mask is not None  # open_video checked it
        if video.vos_slots is None:
            proposals = vos_proposals(avg_iou, self._post.num_proposals)
            proposal_masks = self._full(session, frame_logits[proposals]) > 0
            assignment = vos_assign_ids(proposal_masks, video.first_mask, video.object_ids)
            video.vos_slots = [(int(proposals[slot]), oid) for slot, oid in assignment.items()]
        slots = [s for s, _ in video.vos_slots]
        object_ids = [o for _, o in video.vos_slots]
        full = self._full(session, frame_logits[slots])
        id_map = np.zeros(session.original_hw, np.int32)
        for j, oid in enumerate(object_ids):  # later slots painted on top (official order)
            id_map[full[j] > 0] = oid
        order = np.argsort(object_ids)
        ids = np.asarray(object_ids, np.int64)[order]
        masks = id_map[None] == ids[:, None, None]
        from omg_rt.postprocess._common import sigmoid
        from omg_rt.postprocess.instance import masks_to_boxes

        return SegmentationResult(
            task="vos",
            masks=masks,
            scores=sigmoid(avg_iou[np.asarray(slots, np.int64)[order]]).astype(np.float32),
            labels=np.full(len(ids), -1, np.int64),
            ids=ids,
            boxes=masks_to_boxes(masks),
            id_map=id_map,
            is_thing=np.ones(len(ids), bool),
            frame_index=index,
        )

    def _run_chunked(
        self, runner: Any, input_name: str, values: np.ndarray, output_name: str
    ) -> np.ndarray:
        """Run a one-input graph over rows, honouring a fixed batch size (padding the tail)."""
        batch = runner.inputs()[input_name].shape[0]
        if not isinstance(batch, int):
            return runner({input_name: values})[output_name]
        outs = []
        for start in range(0, values.shape[0], batch):
            chunk = values[start : start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            outs.append(runner({input_name: chunk})[output_name][:n])
        return np.concatenate(outs, axis=0)


# ---------------------------------------------------------------------- helpers


def _id_offset(num_classes: int) -> int:
    """Track id = label + (slot + 1) * offset: 1000 as panoptic ids, or the next power of ten
    for vocabularies of 1000 classes or more."""
    offset = INSTANCE_OFFSET
    while offset <= num_classes:
        offset *= 10
    return offset


def _row(array: np.ndarray, i: int) -> np.ndarray:
    return np.ascontiguousarray(array[i : i + 1], dtype=np.float32)


def _read_image(image: Any, name: str) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if data is None:
            raise InvalidInputError(f"{name}: cannot read an image from {str(path)!r}")
        return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(
            f"{name}: expected uint8 (H, W, 3) RGB array or a path, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(
            f"{name}: expected uint8 (H, W, 3) RGB, got {image.dtype} {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInputError(f"{name}: expected a non-empty image, got {tuple(image.shape)}")
    return image


def _prompt_array(value: Any, name: str, width: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name}: expected numbers of shape (N, {width}), got {value!r}"
        ) from exc
    if array.ndim == 1 and array.shape[0] == width:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
        raise InvalidInputError(
            f"{name}: expected (N, {width}) with N >= 1, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name}: expected finite coordinates, got {array.tolist()}")
    return array.astype(np.float32)


def _inside(values: np.ndarray, limit: int, name: str, axis: str, hw: tuple[int, int]) -> None:
    bad = values[(values < 0) | (values > limit)]
    if bad.size:
        raise InvalidInputError(
            f"{name}: {axis} coordinates must lie in [0, {limit}] for an image of (h, w) = {hw}, "
            f"got {bad.tolist()}"
        )


def _first_mask(first_mask: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    if not isinstance(first_mask, np.ndarray):
        raise InvalidInputError(
            f"first_mask: expected an (H, W) int id map or (M, H, W) bool masks, "
            f"got {type(first_mask).__name__}"
        )
    if first_mask.ndim == 3 and first_mask.dtype == bool:
        masks = first_mask
        ids = tuple(range(1, masks.shape[0] + 1))
    elif first_mask.ndim == 2 and first_mask.dtype.kind in "iu":
        ids = tuple(int(v) for v in np.unique(first_mask) if v > 0)
        masks = first_mask[None] == np.asarray(ids)[:, None, None]
    else:
        raise InvalidInputError(
            f"first_mask: expected an (H, W) int id map or (M, H, W) bool masks, got "
            f"{first_mask.dtype} {first_mask.shape}"
        )
    if not ids or not masks.reshape(masks.shape[0], -1).any(1).all():
        raise InvalidInputError("first_mask: expected at least one non-empty object mask")
    return np.ascontiguousarray(masks), ids


def _from_panoptic(
    result: PanopticResult,
    vocabulary: Vocabulary,
    task: str,
    frame_index: int | None,
    void: int,
) -> SegmentationResult:
    from omg_rt.postprocess.instance import masks_to_boxes

    ids = np.array([s["id"] for s in result.segments], np.int64)
    masks = result.id_map[None] == ids[:, None, None]
    id_map = np.where(result.id_map == void, -1, result.id_map).astype(np.int32)
    return SegmentationResult(
        task=task,
        masks=masks,
        scores=np.array([s["score"] for s in result.segments], np.float32),
        labels=np.array([s["category_id"] for s in result.segments], np.int64),
        ids=ids,
        class_names=vocabulary.names,
        boxes=masks_to_boxes(masks),
        id_map=id_map,
        is_thing=np.array([s["isthing"] for s in result.segments], bool),
        frame_index=frame_index,
    )


def _update_tracks(video: VideoSession, result: SegmentationResult) -> None:
    index = result.frame_index if result.frame_index is not None else video.frames_seen
    for track_id, label, score in zip(result.ids, result.labels, result.scores, strict=True):
        tid = int(track_id)
        state = video.tracks.get(tid)
        if state is None:
            video.tracks[tid] = TrackState(
                track_id=tid,
                query_slot=_query_slot(video, tid),
                label=int(label),
                score=float(score),
                first_frame=index,
                last_frame=index,
            )
        else:
            state.label, state.score, state.last_frame = int(label), float(score), index


def _query_slot(video: VideoSession, track_id: int) -> int:
    if video.task == "vos" and video.vos_slots:
        return next((s for s, o in video.vos_slots if o == track_id), -1)
    if video.task in ("vis", "vps") and video.class_logit_sum is not None:
        offset = _id_offset(video.class_logit_sum.shape[1] - 1)
        return track_id // offset - 1 if video.task == "vis" else track_id // INSTANCE_OFFSET - 1
    return -1
