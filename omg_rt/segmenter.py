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
from dataclasses import replace
from typing import Any

import numpy as np

from omg_rt import native
from omg_rt.assembly import instance_result, panoptic_result, prompt_result, semantic_result
from omg_rt.backends import BackendChoice, open_backends
from omg_rt.bundle import ModelAssets, load_bundle
from omg_rt.cache import DEFAULT_CACHE_BYTES, EncoderCache
from omg_rt.encoding import ImageEncoder, ResizedImage
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.inputs import first_mask_objects, prompt_boxes
from omg_rt.manifest import InputContract, Vocabulary
from omg_rt.pipeline import Pipeline, Predictions
from omg_rt.postprocess.device import resolve_post_device
from omg_rt.postprocess.video import video_split
from omg_rt.results import SegmentationResult
from omg_rt.sessions import ImageSession
from omg_rt.spec import IMAGE_TASKS, TEXT_ENCODER, VIDEO_TASKS
from omg_rt.tokenizer import ClipTokenizer
from omg_rt.video import VideoSession
from omg_rt.vocabulary import build_class_bank, check_names, check_num_things, seen_classes

DEFAULT_MAX_ENCODER_BATCH = 4


class Segmenter:
    """OMG-Seg behind one backend. Thread-safe; errors from bad input leave it serving.

    Use :meth:`from_bundle` or :meth:`from_checkpoint` rather than the constructor.

    Args:
        assets: spec, sizes, queries and vocabulary.
        backend: the opened graphs.
        precision: the graphs' precision (part of the cache key).
        cache_bytes: encoder-cache bound in bytes.
        max_encoder_batch: images per encoder call when the encoder's batch axis is dynamic.
        post_device: where panoptic, instance and semantic masks are resized and merged
            (images and video): ``"auto"`` (a GPU when the graphs run on one and PyTorch sees
            it, else the host), None (the host, numpy), or a torch device
            (:func:`omg_rt.postprocess.device.resolve_post_device`).
    """

    def __init__(
        self,
        assets: ModelAssets,
        backend: BackendChoice,
        *,
        precision: str = "fp32",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
        post_device: str | None = "auto",
    ) -> None:
        native.retain_freed_memory()  # large per-frame arrays reuse freed memory
        self.assets = assets
        self.spec = assets.spec
        self.backend = backend
        self.precision = precision
        self.cache = EncoderCache(cache_bytes)
        self._vocabulary = assets.vocabulary
        self._ensemble = False
        self._lock = threading.Lock()
        self._post = self.spec.postprocess
        self.post_device = resolve_post_device(post_device, backend.on_gpu)
        self.pipeline = Pipeline(
            backend.runners,
            query_content=assets.query_content,
            query_position=assets.query_position,
            postprocess=self._post,
            logit_scale=float(np.exp(np.float32(self.spec.query_decoder.logit_scale_log))),
            max_batch=max_encoder_batch,
            folded_prompts=self.spec.query_decoder.folded_prompts,
        )
        self.image_encoder = ImageEncoder(
            self.pipeline,
            contract=assets.input,
            preprocess=self.spec.preprocess,
            cache_prefix=(assets.identity, precision),
            cache=self.cache,
        )
        self.max_encoder_batch = self.image_encoder.max_batch

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
        post_device: str | None = "auto",
        verify: bool = True,
        tensorrt_options: dict[str, Any] | None = None,
        fused_ops: bool = True,
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
            post_device: where masks are post-processed (see the class).
            verify: check every file's sha256 against the manifest.
            tensorrt_options: see :class:`omg_rt.backends.tensorrt.TensorRTOptions`.
            fused_ops: ONNX Runtime on the CPU runs the bundle's fused pixel decoder where
                omg-rt's custom operator builds (:mod:`omg_rt.backends.ort_ops`); False: the
                portable graph always (the values of a Triton repository's graphs, bit for bit).
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
        options["fused_ops"] = fused_ops
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
            post_device=post_device,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | Any,
        backend: str = "torch",
        *,
        vocabulary: Sequence[str] | None = None,
        num_things: int | None = None,
        class_bank: np.ndarray | None = None,
        image_size: int | None = None,
        device: str = "auto",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_encoder_batch: int = DEFAULT_MAX_ENCODER_BATCH,
        post_device: str | None = "auto",
        cuda_graphs: bool = True,
    ) -> Segmenter:
        """The PyTorch model as a runtime (the reference backend).

        Args:
            path: a checkpoint (``training.model.checkpoint.load_checkpoint``), or an ``OMGSeg``
                model object.
            backend: only ``torch``.
            vocabulary: class names (comma-separated synonyms); the class bank comes from the
                model's text encoder unless ``class_bank`` is given. Required.
            num_things: classes ``[0, num_things)`` are things (default: all).
            class_bank: (K, S, D) float32 unit-norm text embeddings of ``vocabulary`` (see
                :meth:`set_class_bank`), instead of the model's text encoder.
            image_size: images are resized keeping their ratio into (image_size, image_size)
                and padded to a multiple of 32 (default: the spec's image scale).
            device: torch device of the model; cache_bytes, max_encoder_batch, post_device: as
                :meth:`from_bundle`.
            cuda_graphs: on a GPU, replay the prompt encoder and decoder from CUDA graphs
                (captured per image shape and power-of-two prompt count); False launches their
                kernels one by one.
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
        choice = open_backends("torch", model=model, device=device,
                               options={"cuda_graphs": cuda_graphs})
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
            assets, choice, cache_bytes=cache_bytes, max_encoder_batch=max_encoder_batch,
            post_device=post_device,
        )
        if class_bank is None:
            segmenter.set_vocabulary(names, num_things=num_things, ensemble=False)
        else:
            segmenter.set_class_bank(names, class_bank, num_things=num_things, ensemble=False)
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
    def ensemble(self) -> bool:
        """Whether class scores are the open-vocabulary ensemble's (see :meth:`set_vocabulary`)."""
        return self._ensemble

    @property
    def input_contract(self) -> InputContract:
        """The sizes the graphs take and how images and frames are resized for them."""
        return self.assets.input

    def graph_calls(self) -> dict[str, int]:
        """How often each graph ran (the cache's effect, measurable)."""
        return {name: runner.calls for name, runner in self.backend.runners.items()}

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
        tokenizer = self.assets.tokenizer
        if TEXT_ENCODER.name not in self.pipeline.runners or tokenizer is None:
            raise BundleError(
                "set_vocabulary: this bundle has no text encoder graph or tokenizer "
                "(re-export with the text tower)"
            )

        def embed(texts: list[str]) -> np.ndarray:
            return self.pipeline.embed_texts(tokenizer(texts))

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
        p = self._predict([session])
        return panoptic_result(
            session, p.class_scores, p.mask_logits[:, 0], p.vocabulary, self._post,
            device=self.post_device,
        )

    def instances(self, image: Any) -> SegmentationResult:
        """Instance segmentation (official top-k over queries x thing classes)."""
        session = self._session(image)
        p = self._predict([session])
        return instance_result(
            session, p.class_scores, p.mask_logits[:, 0], p.vocabulary, self._post,
            device=self.post_device,
        )

    def semantic(self, image: Any) -> SegmentationResult:
        """Semantic segmentation (Mask2Former per-pixel class argmax); a class's score is its
        mean mask-weighted class probability over its pixels."""
        session = self._session(image)
        p = self._predict([session])
        return semantic_result(session, p.class_scores, p.mask_logits[:, 0], p.vocabulary,
                               device=self.post_device)

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
        return self.prompt_groups(session, [group])[0]

    def prompt_groups(
        self, image: Any, groups: Sequence[np.ndarray], *, pad_to: int | None = None
    ) -> list[SegmentationResult]:
        """Several prompt sets on one image in one prompt-encoder + prompt-decoder call (what
        the :class:`~omg_rt.scheduler.Scheduler` batches concurrent requests into).

        Args:
            image: an image, a path, or an :class:`ImageSession`.
            groups: (P_i, 4) float32 boxes in resized-image pixels (:meth:`prompt_boxes`).
            pad_to: pad the prompt axis to this many prompts (fewer distinct graph shapes);
                prompt queries attend only to themselves, so padding changes no mask.

        Returns:
            one result per group, as :meth:`prompt` gives it.
        """
        session = self._session(image)
        vocabulary = self._vocabulary
        outputs = self.pipeline.predict_prompts(
            session.encoded, session.resized_hw, groups, vocabulary.class_bank, pad_to=pad_to
        )
        return [
            prompt_result(session, p.mask_logits, p.iou_logits, p.class_logits, vocabulary,
                          device=self.post_device)
            for p in outputs
        ]

    def predict(self, image: Any) -> Predictions:
        """The learned queries' raw outputs for one image (class scores over the current
        vocabulary, stride-4 mask logits of the padded input, IoU logits, query embeddings):
        what the task methods post-process."""
        return self._predict([self._session(image)])

    def predict_clip(self, frames: Sequence[ImageSession]) -> Predictions:
        """The learned queries over one clip of frames decoded together (T = len(frames)); a
        decoder with a fixed frame axis gets the last frame repeated, its outputs dropped."""
        if not frames:
            raise InvalidInputError("frames: expected at least one frame, got none")
        encoded = [self._session(f).encoded for f in frames]
        fixed = self.pipeline.fixed_clip_size
        if fixed is not None and len(encoded) < fixed:
            encoded = encoded + [encoded[-1]] * (fixed - len(encoded))
        p = self.pipeline.predict(encoded, self._vocabulary, ensemble=self._ensemble)
        if p.mask_logits.shape[1] == len(frames):
            return p
        return replace(p, mask_logits=p.mask_logits[:, : len(frames)])

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
        explicit = self.pipeline.fixed_clip_size or clip_size
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

    def _predict(self, frames: list[ImageSession]) -> Predictions:
        with self._lock:
            vocabulary, ensemble = self._vocabulary, self._ensemble
        return self.pipeline.predict([f.encoded for f in frames], vocabulary, ensemble=ensemble)
