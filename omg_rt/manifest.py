"""The bundle format, in one place: the layout, ``manifest.json`` as typed records, the
constants and the checksums. Standard library + numpy only: ``omg-export`` builds a
:class:`Manifest` and writes it with :func:`write_manifest`; the runtime reads it with
:meth:`Manifest.from_json` (strict: unknown keys, missing keys, wrong types and other format
versions are a :class:`~omg_rt.errors.BundleError` naming the key).

Bundle layout::

    bundle/
      manifest.json            this record, written last (after every file it hashes)
      encoder.onnx             FP32 graphs at the top level (``<graph>.onnx.data`` beside a graph
      pixel_decoder.onnx         whose weights exceed 256 MiB: ONNX external data)
      prompt_encoder.onnx      (models with prompt queries)
      query_decoder.onnx
      prompt_decoder.onnx      (with the prompt encoder) prompt queries on images, few-query form
      text_encoder.onnx        (models with a CLIP text tower)
      clip_head.onnx
      fp16/<graph>.onnx        FP16 variants (FP32 I/O; graphs not converted point at the FP32 file)
      int8/<graph>.onnx        INT8 QDQ variants (encoder, pixel decoder; others point at FP32)
      tensorrt/pixel_decoder.onnx   TensorRT targets only: the deformable-attention plugin flavour
      fused/<graph>.onnx       cpu target only: pixel and query decoders with omg-rt's ONNX Runtime
                               operators (int8/fused/: the INT8 encoder and pixel decoder's)
      queries.npz              learned queries: query_content (Q, C), query_position (Q, C) float32
      vocab.npz                class_bank (K, S, D) float32, names (K,) str, num_things () int64,
                               seen (K,) bool
      tokenizer/bpe_simple_vocab_16e6.txt.gz   OpenCLIP's BPE vocabulary (torch-free tokenising)
      verify.json              the parity report (``export.verify``)
      engines/<key>/           TensorRT plans (``--engine``), key = GPU name, compute capability
                               and TensorRT version; ``engines/<key>/engines.json`` repeats the
                               manifest's engine record

Manifest keys (``format_version`` 3; :class:`Manifest` holds them):

- ``format_version``: the layout's version (:data:`FORMAT_VERSION`); other versions are refused
  with a message saying whether to re-export or to upgrade omg-rt.
- ``schema_version``: the ``ModelSpec``'s version; ``model``: the ``ModelSpec`` as a dict.
- ``input``: the sizes the graphs take (:class:`InputContract`): ``image_scale`` and
  ``video_scale`` [long, short] — images and video frames are resized keeping their ratio into
  that box, then zero-padded bottom/right (after normalisation with the model's mean/std) to a
  multiple of ``size_divisor`` (32), as the official model; ``min_hw`` / ``max_hw`` [H, W], the
  padded range exported and checked (TensorRT profiles span it; ONNX Runtime takes any multiple
  of 32); ``fixed_hw`` null (dynamic height and width) or the one padded size of a fixed build.
- ``target``: ``cpu`` | ``h100`` | ``jetson-orin``; ``deform_attn``: ``grid_sample`` (portable)
  or ``trt_plugin`` (TensorRT targets: ``tensorrt/pixel_decoder.onnx`` holds
  ``MultiscaleDeformableAttnPlugin_TRT`` nodes, the ``files`` entries stay portable).
- ``graphs``: ``{name: {"files": {precision: path}, "tensorrt_files": {precision: path} (TensorRT
  targets), "fused_files": {precision: path} (the ``cpu`` target's graphs with omg-rt's ONNX
  Runtime operators, run by the CPU provider with ``omg_rt.backends.ort_ops``: the pixel decoder
  with the same plugin nodes, the query decoder with its masked cross-attention as
  ``omg_rt::MaskedAttention`` nodes, the INT8 encoder with its GELU + quantization and its
  LayerNorm + quantization fused; optional),
  "inputs": {name: {"shape": [...], "dtype": str}}, "outputs": {...},
  "dynamic_axes": {tensor: {axis index (str): symbol}}}}`` (:class:`GraphEntry`); symbolic
  dimensions are strings (``N`` images, ``B`` batch, ``T`` frames with N = B x T, ``Q`` queries or
  prompts, ``K`` classes, ``K+1`` classes and void, ``S`` synonyms, ``H`` / ``W`` the padded
  input's height and width, ``H/s`` / ``W/s`` a map at stride s). Prompt queries are padded to
  any P with copies; a padded prompt changes no other prompt's output (diagonal self-attention).
- ``precisions``: the precisions present, ``["fp32", ...]``.
- ``opset``, ``exporter``, ``tools``: the ONNX opset, the exporter, versions of torch, onnx,
  onnxruntime, onnxslim (and tensorrt when engines were built).
- ``vocabulary``: ``names``, ``num_things``, ``seen``, ``synonyms``, ``source``, ``file``.
- ``queries``: ``file``, ``num_queries``; ``tokenizer``: ``file``, ``context_length`` (null
  without a text tower); ``verify``: ``file``, ``passed`` (null when skipped).
- ``engines``: :class:`EngineRecord` list (empty without ``--engine``).
- ``files``: ``{relative path: sha256 hex}`` of every file in the bundle except the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from omg_rt.backends.base import TensorSpec
from omg_rt.errors import BundleError
from omg_rt.files import atomic_write_text, sha256_file
from omg_rt.spec import PRECISIONS, SCHEMA_VERSION, ModelSpec, PreprocessSpec

MANIFEST = "manifest.json"
EXAMPLES = "examples"  # optional, not in the manifest: example inputs `omg-rt ui` offers
QUERIES_FILE = "queries.npz"
VOCABULARY_FILE = "vocab.npz"
VERIFY_FILE = "verify.json"
TOKENIZER_FILE = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
# The bundle layout's version (the model spec inside has its own ``schema_version``).
# 3: typed, strict manifest (no ``preprocess`` / ``prompts`` prose keys; engine records typed);
# 2: the encoder side takes any padded height and width (the ``input`` section); 1 had one
# fixed square ``input_size``.
FORMAT_VERSION = 3

T = TypeVar("T")


# ---------------------------------------------------------------------------------- reading


class _Reader:
    """Typed access to one JSON object, naming the key path in every error."""

    def __init__(self, value: Any, where: str, known: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected an object, got {value!r:.80}")
        unknown = set(value) - set(known)
        if unknown:
            raise BundleError(f"{where}: unknown keys {sorted(unknown)} (known {sorted(known)})")
        self.value, self.where = value, where

    def get(self, key: str, kind: type[T] | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.value:
            if optional:
                return None
            raise BundleError(f"{self.where}.{key}: missing")
        value = self.value[key]
        if value is None and optional:
            return None
        bad_bool = isinstance(value, bool) and kind in (int, float)
        if not isinstance(value, kind) or bad_bool:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise BundleError(f"{self.where}.{key}: expected {names}, got {value!r:.80}")
        return value

    def str_map(self, key: str, *, optional: bool = False) -> dict[str, str] | None:
        value = self.get(key, dict, optional=optional)
        if value is None:
            return None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise BundleError(f"{self.where}.{key}: expected {{str: str}}, got {value!r:.80}")
        return dict(value)

    def record(self, key: str, parse: Callable[[Any, str], T], *, optional: bool = False
               ) -> T | None:
        if optional and self.value.get(key) is None:
            return None
        if key not in self.value:
            raise BundleError(f"{self.where}.{key}: missing")
        return parse(self.value[key], f"{self.where}.{key}")


def _pair(value: Any, where: str) -> tuple[int, int]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
    ):
        raise BundleError(f"{where}: expected [int, int] > 0, got {value!r}")
    return int(value[0]), int(value[1])


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class InputContract:
    """The input sizes of a bundle's encoder, pixel decoder and query decoder, and how the
    runtime sizes an image for them — the official rule: resize keeping the aspect ratio into a
    (long, short) box, then zero-pad bottom/right to a multiple of ``size_divisor``.

    Attributes:
        image_scale: (long, short) resize box for images (official demo: (1024, 1024)).
        video_scale: (long, short) resize box for video frames (official: (1280, 736)).
        size_divisor: padded height and width are multiples of this (32).
        min_hw, max_hw: the padded (H, W) range the graphs were exported and checked for
            (TensorRT optimisation profiles span it; ONNX Runtime takes any multiple of 32).
        fixed_hw: None when height and width are dynamic; else the one padded size every
            input is padded into (fixed-shape engines).
    """

    image_scale: tuple[int, int]
    video_scale: tuple[int, int]
    size_divisor: int = 32
    min_hw: tuple[int, int] = (32, 32)
    max_hw: tuple[int, int] = (1024, 1024)
    fixed_hw: tuple[int, int] | None = None

    @classmethod
    def for_scales(
        cls, image_scale: tuple[int, int], video_scale: tuple[int, int], size_divisor: int = 32
    ) -> InputContract:
        """Dynamic sizes up to the largest padded size either scale gives, in both
        orientations (a portrait photo's height is a landscape photo's width)."""
        longest = max(*image_scale, *video_scale)
        side = -(-longest // size_divisor) * size_divisor
        return cls(
            image_scale=(int(image_scale[0]), int(image_scale[1])),
            video_scale=(int(video_scale[0]), int(video_scale[1])),
            size_divisor=size_divisor,
            min_hw=(size_divisor, size_divisor),
            max_hw=(side, side),
        )

    @classmethod
    def at_image_size(
        cls, preprocess: PreprocessSpec, image_size: int | None = None
    ) -> InputContract:
        """The contract of a model whose images are resized into the (image_size, image_size)
        box (default: the spec's image scale). Video frames use the spec's video scale, scaled
        by ``image_size / max(image scale)``: the official ConvNeXt-L at 1024 keeps
        (1280, 736); at 512 it gets (640, 368)."""
        if image_size is None:
            return cls.for_scales(
                preprocess.image_scale, preprocess.video_scale, preprocess.size_divisor
            )
        factor = image_size / max(preprocess.image_scale)
        long_edge, short_edge = (max(1, round(e * factor)) for e in preprocess.video_scale)
        return cls.for_scales(
            (image_size, image_size), (long_edge, short_edge), preprocess.size_divisor
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_scale": list(self.image_scale),
            "video_scale": list(self.video_scale),
            "size_divisor": self.size_divisor,
            "min_hw": list(self.min_hw),
            "max_hw": list(self.max_hw),
            "fixed_hw": None if self.fixed_hw is None else list(self.fixed_hw),
        }

    @classmethod
    def from_dict(cls, value: Any, where: str) -> InputContract:
        r = _Reader(value, where, ("image_scale", "video_scale", "size_divisor", "min_hw",
                                   "max_hw", "fixed_hw"))
        divisor = r.get("size_divisor", int)
        if divisor < 1:
            raise BundleError(f"{where}.size_divisor: expected an int >= 1, got {divisor!r}")
        fixed = r.get("fixed_hw", list, optional=True)
        contract = cls(
            image_scale=_pair(r.get("image_scale", list), f"{where}.image_scale"),
            video_scale=_pair(r.get("video_scale", list), f"{where}.video_scale"),
            size_divisor=divisor,
            min_hw=_pair(r.get("min_hw", list), f"{where}.min_hw"),
            max_hw=_pair(r.get("max_hw", list), f"{where}.max_hw"),
            fixed_hw=None if fixed is None else _pair(fixed, f"{where}.fixed_hw"),
        )
        if any(lo > hi for lo, hi in zip(contract.min_hw, contract.max_hw, strict=True)):
            raise BundleError(
                f"{where}: min_hw {contract.min_hw} exceeds max_hw {contract.max_hw}"
            )
        return contract


def _tensors_to_dict(specs: Mapping[str, TensorSpec]) -> dict[str, Any]:
    return {name: {"shape": list(s.shape), "dtype": s.dtype} for name, s in specs.items()}


def _tensors(value: Any, where: str) -> dict[str, TensorSpec]:
    if not isinstance(value, dict):
        raise BundleError(f"{where}: expected {{name: {{shape, dtype}}}}, got {value!r:.80}")
    specs = {}
    for name, tensor in value.items():
        r = _Reader(tensor, f"{where}.{name}", ("shape", "dtype"))
        shape = r.get("shape", list)
        if not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str)
            for d in shape
        ):
            raise BundleError(f"{where}.{name}.shape: expected ints >= 0 or symbols, got {shape}")
        specs[name] = TensorSpec(name=name, shape=tuple(shape), dtype=r.get("dtype", str))
    return specs


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph.

    Attributes:
        name: the graph's ``omg_rt.spec`` name.
        files: precision -> path relative to the bundle root.
        inputs, outputs: the graph's I/O (symbolic dimensions as strings).
        dynamic_axes: tensor -> {axis index: symbol}.
        tensorrt_files: precision -> the TensorRT flavour's path (plugin nodes), if exported.
        fused_files: precision -> the same graph with omg-rt's custom operators for ONNX
            Runtime's CPU provider (:mod:`omg_rt.backends.ort_ops`: the deformable attention's
            plugin node, the INT8 MLP's GELU + quantization and norm + quantization), if
            exported.
    """

    name: str
    files: dict[str, str]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    dynamic_axes: dict[str, dict[str, str]] = field(default_factory=dict)
    tensorrt_files: dict[str, str] | None = None
    fused_files: dict[str, str] | None = None

    def tensorrt_source(self, precision: str) -> str:
        """The file TensorRT parses: the plugin flavour where exported, else the portable one."""
        return (self.tensorrt_files or self.files)[precision]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "files": dict(self.files),
            "inputs": _tensors_to_dict(self.inputs),
            "outputs": _tensors_to_dict(self.outputs),
            "dynamic_axes": {t: dict(axes) for t, axes in self.dynamic_axes.items()},
        }
        if self.tensorrt_files is not None:
            out["tensorrt_files"] = dict(self.tensorrt_files)
        if self.fused_files is not None:
            out["fused_files"] = dict(self.fused_files)
        return out

    @classmethod
    def from_dict(cls, name: str, value: Any, where: str) -> GraphEntry:
        r = _Reader(value, where, ("files", "tensorrt_files", "fused_files", "inputs", "outputs",
                                   "dynamic_axes"))
        files = r.str_map("files")
        assert files is not None
        unknown = set(files) - set(PRECISIONS)
        if not files or unknown:
            raise BundleError(f"{where}.files: expected {{precision: path}} over {PRECISIONS}, "
                              f"got {files!r}")
        axes = r.get("dynamic_axes", dict)
        for tensor, per_axis in axes.items():
            if not isinstance(per_axis, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in per_axis.items()
            ):
                raise BundleError(f"{where}.dynamic_axes.{tensor}: expected {{axis: symbol}}")
        return cls(
            name=name,
            files=files,
            inputs=_tensors(r.get("inputs", dict), f"{where}.inputs"),
            outputs=_tensors(r.get("outputs", dict), f"{where}.outputs"),
            dynamic_axes={t: dict(a) for t, a in axes.items()},
            tensorrt_files=r.str_map("tensorrt_files", optional=True),
            fused_files=r.str_map("fused_files", optional=True),
        )


@dataclass(frozen=True)
class EngineRecord:
    """TensorRT plans built into the bundle for one GPU model and TensorRT version.

    Attributes:
        key: the plans' folder under ``engines/`` (``omg_rt.backends.trt_build.engine_key``).
        gpu, compute_capability, tensorrt: what the plans were built on and with.
        target: the export target the profiles were sized for.
        files: graph -> precision -> plan path.
        profiles: graph -> input -> [min, opt, max] shapes.
        timing_cache: path of TensorRT's timing cache.
    """

    key: str
    gpu: str
    compute_capability: tuple[int, int]
    tensorrt: str
    target: str
    files: dict[str, dict[str, str]]
    profiles: dict[str, dict[str, list[list[int]]]]
    timing_cache: str

    def matches(self, gpu: str, capability: tuple[int, int], tensorrt: str) -> bool:
        return (
            self.compute_capability == tuple(capability)
            and self.tensorrt == tensorrt
            and self.gpu.strip("\x00 ") == gpu
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "gpu": self.gpu,
            "compute_capability": list(self.compute_capability),
            "tensorrt": self.tensorrt,
            "target": self.target,
            "files": {g: dict(p) for g, p in self.files.items()},
            "profiles": self.profiles,
            "timing_cache": self.timing_cache,
        }

    @classmethod
    def from_dict(cls, value: Any, where: str) -> EngineRecord:
        r = _Reader(value, where, ("key", "gpu", "compute_capability", "tensorrt", "target",
                                   "files", "profiles", "timing_cache"))
        files = r.get("files", dict)
        for graph, per_precision in files.items():
            if not isinstance(per_precision, dict) or not all(
                isinstance(v, str) for v in per_precision.values()
            ):
                raise BundleError(f"{where}.files.{graph}: expected {{precision: path}}")
        capability = r.get("compute_capability", list)
        if len(capability) != 2 or not all(isinstance(c, int) for c in capability):
            raise BundleError(f"{where}.compute_capability: expected [major, minor]")
        return cls(
            key=r.get("key", str),
            gpu=r.get("gpu", str),
            compute_capability=(int(capability[0]), int(capability[1])),
            tensorrt=r.get("tensorrt", str),
            target=r.get("target", str),
            files={g: dict(p) for g, p in files.items()},
            profiles=r.get("profiles", dict),
            timing_cache=r.get("timing_cache", str),
        )


@dataclass(frozen=True)
class Vocabulary:
    """Class names and their text bank.

    Attributes:
        names: K class names (comma-separated synonyms allowed, as the official vocabularies).
        num_things: classes ``[0, num_things)`` are things, the rest stuff.
        seen: (K,) bool, True for classes of the training vocabulary (open-vocab ensemble).
        class_bank: (K, S, D) float32, unit-norm text embeddings, S synonyms per class.
        source: where the names came from (``builtin:coco``, ``names:FILE``, ...; the exporter
            records it in the manifest), "" when unknown.

    The one vocabulary type: the exporter builds it (``export.vocab.resolve_vocabulary``) and
    writes it to ``vocab.npz``; the runtime reads it back.
    """

    names: tuple[str, ...]
    num_things: int
    seen: np.ndarray
    class_bank: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        # a read-only copy: backends keep a device copy of the bank for as long as the same
        # (unchangeable) array comes back
        bank = np.array(self.class_bank)
        bank.setflags(write=False)
        object.__setattr__(self, "class_bank", bank)


@dataclass(frozen=True)
class VocabularyRecord:
    """The manifest's description of ``vocab.npz`` (the bank itself stays in the file)."""

    names: tuple[str, ...]
    num_things: int
    seen: tuple[bool, ...]
    synonyms: int
    source: str = ""
    file: str = VOCABULARY_FILE

    @classmethod
    def of(cls, vocabulary: Vocabulary) -> VocabularyRecord:
        return cls(
            names=tuple(vocabulary.names),
            num_things=int(vocabulary.num_things),
            seen=tuple(bool(s) for s in vocabulary.seen),
            synonyms=int(vocabulary.class_bank.shape[1]),
            source=vocabulary.source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "num_things": self.num_things,
                "seen": list(self.seen), "synonyms": self.synonyms, "source": self.source,
                "file": self.file}

    @classmethod
    def from_dict(cls, value: Any, where: str) -> VocabularyRecord:
        r = _Reader(value, where, ("names", "num_things", "seen", "synonyms", "source", "file"))
        names = r.get("names", list)
        seen = r.get("seen", list)
        if not all(isinstance(n, str) for n in names) or not all(
            isinstance(s, bool) for s in seen
        ) or len(seen) != len(names):
            raise BundleError(f"{where}: expected names [str] and seen [bool] of equal length")
        num_things = r.get("num_things", int)
        if not 0 <= num_things <= len(names):
            raise BundleError(f"{where}.num_things: expected 0..{len(names)}, got {num_things}")
        return cls(names=tuple(names), num_things=num_things, seen=tuple(seen),
                   synonyms=r.get("synonyms", int), source=r.get("source", str),
                   file=r.get("file", str))


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` (see the module docstring for each key)."""

    model: ModelSpec
    input: InputContract
    target: str
    deform_attn: str
    graphs: dict[str, GraphEntry]
    precisions: tuple[str, ...]
    opset: int
    exporter: str
    tools: dict[str, str]
    vocabulary: VocabularyRecord
    num_queries: int
    tokenizer_context_length: int | None
    verify_passed: bool | None
    engines: tuple[EngineRecord, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    queries_file: str = QUERIES_FILE
    tokenizer_file: str | None = TOKENIZER_FILE
    verify_file: str = VERIFY_FILE
    format_version: int = FORMAT_VERSION
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        tokenizer = None
        if self.tokenizer_file is not None:
            tokenizer = {"file": self.tokenizer_file,
                         "context_length": self.tokenizer_context_length}
        return {
            "format_version": self.format_version,
            "schema_version": self.schema_version,
            "model": self.model.to_dict(),
            "input": self.input.to_dict(),
            "target": self.target,
            "deform_attn": self.deform_attn,
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "precisions": list(self.precisions),
            "opset": self.opset,
            "exporter": self.exporter,
            "tools": dict(self.tools),
            "vocabulary": self.vocabulary.to_dict(),
            "queries": {"file": self.queries_file, "num_queries": self.num_queries},
            "tokenizer": tokenizer,
            "verify": {"file": self.verify_file, "passed": self.verify_passed},
            "engines": [e.to_dict() for e in self.engines],
            "files": dict(self.files),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)  # insertion order: graph I/O in call order

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and check a manifest (BundleError naming the key on any problem)."""
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(value).__name__}")
        return cls.from_dict(value, where)

    @classmethod
    def from_dict(cls, value: dict[str, Any], where: str) -> Manifest:
        layout = value.get("format_version", 1)
        if layout != FORMAT_VERSION:
            older = isinstance(layout, int) and layout < FORMAT_VERSION
            raise BundleError(
                f"{where}: format_version {layout!r} is not supported (this runtime reads "
                f"{FORMAT_VERSION}: "
                + ("an older bundle; re-export it with omg-export)" if older
                   else "a newer bundle; upgrade omg-rt)")
            )
        version = value.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{where}: schema_version {version!r} is not supported "
                f"(this runtime reads {SCHEMA_VERSION})"
            )
        r = _Reader(value, where, ("format_version", "schema_version", "model", "input",
                                   "target", "deform_attn", "graphs", "precisions", "opset",
                                   "exporter", "tools", "vocabulary", "queries", "tokenizer",
                                   "verify", "engines", "files"))
        try:
            model = ModelSpec.from_dict(r.get("model", dict))
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{where}: invalid model spec ({exc})") from exc
        graphs = {
            name: GraphEntry.from_dict(name, entry, f"{where}: graphs.{name}")
            for name, entry in r.get("graphs", dict).items()
        }
        precisions = tuple(r.get("precisions", list))
        if not precisions or set(precisions) - set(PRECISIONS):
            raise BundleError(f"{where}: precisions: expected some of {PRECISIONS}, "
                              f"got {list(precisions)}")
        queries = _Reader(r.get("queries", dict), f"{where}: queries", ("file", "num_queries"))
        verify = _Reader(r.get("verify", dict), f"{where}: verify", ("file", "passed"))
        tokenizer = r.get("tokenizer", dict, optional=True)
        tok = None if tokenizer is None else _Reader(tokenizer, f"{where}: tokenizer",
                                                      ("file", "context_length"))
        engines = r.get("engines", list)
        files = r.str_map("files")
        assert files is not None
        return cls(
            model=model,
            input=InputContract.from_dict(r.get("input", dict), f"{where}: input"),
            target=r.get("target", str),
            deform_attn=r.get("deform_attn", str),
            graphs=graphs,
            precisions=precisions,
            opset=r.get("opset", int),
            exporter=r.get("exporter", str),
            tools=r.str_map("tools") or {},
            vocabulary=VocabularyRecord.from_dict(r.get("vocabulary", dict),
                                                  f"{where}: vocabulary"),
            num_queries=queries.get("num_queries", int),
            queries_file=queries.get("file", str),
            tokenizer_file=None if tok is None else tok.get("file", str),
            tokenizer_context_length=None if tok is None else tok.get("context_length", int),
            verify_passed=verify.get("passed", bool, optional=True),
            verify_file=verify.get("file", str),
            engines=tuple(EngineRecord.from_dict(e, f"{where}: engines[{i}]")
                          for i, e in enumerate(engines)),
            files=files,
        )

    def used_files(self) -> list[str]:
        """Every file the manifest points at (each must be listed in ``files``)."""
        used = [self.queries_file, self.vocabulary.file]
        if self.tokenizer_file is not None:
            used.append(self.tokenizer_file)
        for graph in self.graphs.values():
            for files in (graph.files, graph.tensorrt_files or {}, graph.fused_files or {}):
                used += list(files.values())
        return used


# ---------------------------------------------------------------------------------- files


def file_hashes(bundle: Path) -> dict[str, str]:
    """sha256 of every file under ``bundle`` except the manifest, by POSIX relative path."""
    return {
        path.relative_to(bundle).as_posix(): sha256_file(path)
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    """Hash every file of ``bundle`` into ``manifest.files`` and write ``manifest.json``
    atomically (last, so a bundle with a manifest is complete). Returns what was written."""
    written = replace(manifest, files=file_hashes(bundle))
    atomic_write_text(bundle / MANIFEST, written.to_json())
    return written


def verify_files(root: Path, files: Mapping[str, str]) -> None:
    """Check every listed file against its sha256 (BundleError naming the first bad one).
    Files the manifest does not list (plans built on first use) are allowed."""
    for rel, expected in sorted(files.items()):
        target = root / rel
        if not target.is_file():
            raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
        got = sha256_file(target)
        if got != expected:
            raise BundleError(
                f"{root}: {rel} does not match its manifest checksum "
                f"(expected sha256 {expected[:16]}..., got {got[:16]}...); "
                f"the file was altered or truncated — re-export the bundle"
            )


def check_files(bundle: Path) -> list[str]:
    """Every file of an exported bundle whose sha256 differs from its manifest, or that is
    missing or not listed (a freshly exported bundle has none)."""
    path = bundle / MANIFEST
    files = Manifest.from_json(path.read_bytes(), str(path)).files
    actual = file_hashes(bundle)
    problems = [f"{p}: missing" for p in files if p not in actual]
    problems += [f"{p}: sha256 mismatch" for p in files if p in actual and actual[p] != files[p]]
    problems += [f"{p}: not in the manifest" for p in actual if p not in files]
    return problems
