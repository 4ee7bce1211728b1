"""Reading an exported bundle: its manifest, its checksums, its queries and vocabulary, and the
:class:`ModelAssets` (everything besides the graphs) the runtime takes from it.

A bundle is a directory written by ``omg-export`` (``export.build_bundle``)::

    manifest.json        format_version, schema_version, model (ModelSpec), input (the sizes
                         the graphs take: :class:`InputContract`), preprocess,
                         graphs {name: {files per precision, inputs, outputs}}, precisions,
                         vocabulary {names, num_things, seen, file}, tokenizer {file,
                         context_length}, files {relative path: sha256}
    encoder.onnx ...     fp32 graphs (fp16/, int8/ for the other precisions)
    queries.npz          query_content (Q, C), query_position (Q, C): the learned queries
    vocab.npz            class_bank (K, S, D), names, num_things, seen
    tokenizer/bpe_simple_vocab_16e6.txt.gz
    engines/             TensorRT plans, per device and TensorRT version

Every file listed in ``files`` is checked against its sha256 on load (``verify=True``); a
missing or altered file raises :class:`~omg_rt.errors.BundleError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omg_rt.backends.base import TensorSpec
from omg_rt.errors import BundleError
from omg_rt.files import sha256_file
from omg_rt.spec import GRAPHS, SCHEMA_VERSION, ModelSpec, PreprocessSpec
from omg_rt.tokenizer import ClipTokenizer

MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
# The bundle layout's version (the model spec inside has its own ``schema_version``).
# 2: the encoder side takes any padded height and width (the ``input`` section); 1 had one
# fixed square ``input_size``.
FORMAT_VERSION = 2


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
    def at_image_size(cls, preprocess: PreprocessSpec, image_size: int | None = None
                      ) -> InputContract:
        """The contract of a model whose images are resized into the (image_size, image_size)
        box (default: the spec's image scale). Video frames use the spec's video scale, scaled
        by ``image_size / max(image scale)``: the official ConvNeXt-L at 1024 keeps
        (1280, 736); at 512 it gets (640, 368)."""
        if image_size is None:
            return cls.for_scales(preprocess.image_scale, preprocess.video_scale,
                                  preprocess.size_divisor)
        factor = image_size / max(preprocess.image_scale)
        long_edge, short_edge = (max(1, round(e * factor)) for e in preprocess.video_scale)
        return cls.for_scales((image_size, image_size), (long_edge, short_edge),
                              preprocess.size_divisor)

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
        if not isinstance(value, dict):
            raise BundleError(f"{where}: input: expected an object, got {value!r}")
        known = {"image_scale", "video_scale", "size_divisor", "min_hw", "max_hw", "fixed_hw"}
        unknown = set(value) - known
        if unknown:
            raise BundleError(f"{where}: input: unknown keys {sorted(unknown)}")

        def pair(key: str, optional: bool = False) -> tuple[int, int] | None:
            v = value.get(key)
            if v is None and optional:
                return None
            if not (
                isinstance(v, list)
                and len(v) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            ):
                raise BundleError(f"{where}: input.{key}: expected [int, int] > 0, got {v!r}")
            return int(v[0]), int(v[1])

        divisor = value.get("size_divisor")
        if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
            raise BundleError(f"{where}: input.size_divisor: expected an int >= 1, got {divisor!r}")
        contract = cls(
            image_scale=pair("image_scale"),  # type: ignore[arg-type]
            video_scale=pair("video_scale"),  # type: ignore[arg-type]
            size_divisor=divisor,
            min_hw=pair("min_hw"),  # type: ignore[arg-type]
            max_hw=pair("max_hw"),  # type: ignore[arg-type]
            fixed_hw=pair("fixed_hw", optional=True),
        )
        if any(lo > hi for lo, hi in zip(contract.min_hw, contract.max_hw)):
            raise BundleError(
                f"{where}: input: min_hw {contract.min_hw} exceeds max_hw {contract.max_hw}"
            )
        return contract


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its file per precision and its I/O as the manifest records it."""

    name: str
    files: dict[str, str]  # precision -> path relative to the bundle root
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


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


@dataclass(frozen=True)
class Bundle:
    """A loaded (and verified) bundle.

    Attributes:
        root: the bundle directory.
        manifest: the parsed ``manifest.json``.
        spec: the model spec it was exported from.
        identity: sha256 (hex, 16 chars) of ``manifest.json``, which lists every file's sha256:
            the encoder cache keys include it, so two bundles never share entries.
        input: the sizes the graphs take and how images are sized for them.
        graphs: name -> :class:`GraphEntry`.
        precisions: the precisions exported.
        vocabulary: the default vocabulary (``vocab.npz``).
        query_content, query_position: (Q, C) float32 learned queries (``queries.npz``).
        tokenizer_file: path of the BPE vocabulary, or None.
        context_length: token ids per text for the text encoder.
    """

    root: Path
    manifest: dict[str, Any]
    spec: ModelSpec
    identity: str
    input: InputContract
    graphs: dict[str, GraphEntry]
    precisions: tuple[str, ...]
    vocabulary: Vocabulary
    query_content: np.ndarray
    query_position: np.ndarray
    tokenizer_file: Path | None
    context_length: int
    files: dict[str, str] = field(default_factory=dict)

    def graph_file(self, name: str, precision: str) -> Path:
        """The file of graph ``name`` at ``precision`` (BundleError if the bundle lacks it)."""
        entry = self.graphs.get(name)
        if entry is None:
            raise BundleError(
                f"{self.root}: manifest has no graph {name!r} (has {sorted(self.graphs)})"
            )
        rel = entry.files.get(precision)
        if rel is None:
            raise BundleError(
                f"{self.root}: graph {name!r} was not exported at precision {precision!r} "
                f"(has {sorted(entry.files)})"
            )
        return self.root / rel


@dataclass(frozen=True)
class ModelAssets:
    """Everything besides the graphs: spec, identity, sizes, learned queries, vocabulary.

    Attributes:
        spec: the model spec.
        identity: bundle identity (cache keys include it).
        input: the sizes the graphs take and how images are sized for them.
        query_content, query_position: (Q, C) float32 learned queries.
        vocabulary: the default vocabulary.
        tokenizer: CLIP tokenizer for ``set_vocabulary`` (None if the bundle has none).
    """

    spec: ModelSpec
    identity: str
    input: InputContract
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
            input=bundle.input,
            query_content=bundle.query_content,
            query_position=bundle.query_position,
            vocabulary=bundle.vocabulary,
            tokenizer=tokenizer,
        )


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read a bundle directory.

    Args:
        path: the bundle directory (or its ``manifest.json``).
        verify: check every listed file's sha256 (a few seconds for ConvNeXt-L graphs).

    Raises:
        BundleError: unreadable manifest, unsupported schema, missing file, checksum mismatch,
            or a file the manifest needs but does not list.
    """
    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST})")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    layout = manifest.get("format_version", 1)
    if layout != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {layout!r} is not supported (this runtime reads "
            f"{FORMAT_VERSION}: " + ("an older bundle with a fixed square input; re-export it "
            "with omg-export)" if isinstance(layout, int) and layout < FORMAT_VERSION
            else "a newer bundle; upgrade omg-rt)")
        )
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported "
            f"(this runtime reads {SCHEMA_VERSION})"
        )
    try:
        spec = ModelSpec.from_dict(_require(manifest, "model", dict, manifest_path))
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: invalid model spec ({exc})") from exc

    files = _require(manifest, "files", dict, manifest_path)
    if verify:
        _verify_files(root, files)

    contract = InputContract.from_dict(manifest.get("input"), str(manifest_path))

    graphs = {
        name: _graph_entry(name, entry, manifest_path)
        for name, entry in _require(manifest, "graphs", dict, manifest_path).items()
    }
    for entry in graphs.values():
        for rel in entry.files.values():
            _check_listed(rel, files, manifest_path)
    known = {g.name for g in GRAPHS}
    unknown = set(graphs) - known
    if unknown:
        raise BundleError(
            f"{manifest_path}: unknown graphs {sorted(unknown)} (known {sorted(known)})"
        )

    precisions = tuple(manifest.get("precisions") or ("fp32",))
    vocabulary = _load_vocabulary(root, manifest, files, manifest_path)
    queries_rel = "queries.npz"
    _check_listed(queries_rel, files, manifest_path)
    with _npz(root / queries_rel) as queries:
        content = np.ascontiguousarray(queries["query_content"], dtype=np.float32)
        position = np.ascontiguousarray(queries["query_position"], dtype=np.float32)

    tokenizer = manifest.get("tokenizer") or {}
    tokenizer_file = None
    if tokenizer.get("file"):
        _check_listed(tokenizer["file"], files, manifest_path)
        tokenizer_file = root / tokenizer["file"]
    context_length = int(tokenizer.get("context_length", spec.text.context_length))

    return Bundle(
        root=root,
        manifest=manifest,
        spec=spec,
        identity=hashlib.sha256(raw).hexdigest()[:16],
        input=contract,
        graphs=graphs,
        precisions=precisions,
        vocabulary=vocabulary,
        query_content=content,
        query_position=position,
        tokenizer_file=tokenizer_file,
        context_length=context_length,
        files=dict(files),
    )


def _require(mapping: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise BundleError(
            f"{where}: {key}: expected a JSON {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _check_listed(rel: str, files: dict[str, str], where: Path) -> None:
    if rel not in files:
        raise BundleError(f"{where}: {rel} is used but not listed in 'files' (no checksum)")


def _verify_files(root: Path, files: dict[str, str]) -> None:
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


def _tensor_specs(value: Any, where: str) -> dict[str, TensorSpec]:
    """Manifest I/O -> specs; accepts {name: {shape, dtype}} or [{name, shape, dtype}, ...]."""
    items: list[tuple[str, dict[str, Any]]]
    if isinstance(value, dict):
        items = [(name, spec) for name, spec in value.items()]
    elif isinstance(value, list):
        items = [(spec.get("name", ""), spec) for spec in value if isinstance(spec, dict)]
    else:
        raise BundleError(f"{where}: expected a list or object of tensors, got {value!r}")
    specs = {}
    for name, spec in items:
        if not isinstance(spec, dict) or "shape" not in spec or "dtype" not in spec:
            raise BundleError(f"{where}: tensor {name!r} needs 'shape' and 'dtype', got {spec!r}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else str(d) for d in spec["shape"])
        specs[name] = TensorSpec(name=name, shape=shape, dtype=str(spec["dtype"]))
    return specs


def _graph_entry(name: str, entry: Any, where: Path) -> GraphEntry:
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: graphs.{name}: expected an object, got {entry!r}")
    files: dict[str, str] = {}
    for key in ("files", "file"):
        value = entry.get(key)
        if isinstance(value, dict):
            files.update({str(k): str(v) for k, v in value.items()})
        elif isinstance(value, str):
            files.setdefault("fp32", value)
    for precision in PRECISIONS:
        if isinstance(entry.get(precision), str):
            files[precision] = entry[precision]
    if not files:
        raise BundleError(f"{where}: graphs.{name}: no file per precision")
    return GraphEntry(
        name=name,
        files=files,
        inputs=_tensor_specs(entry.get("inputs", {}), f"{where}: graphs.{name}.inputs"),
        outputs=_tensor_specs(entry.get("outputs", {}), f"{where}: graphs.{name}.outputs"),
    )


class _npz:
    """``np.load`` of an .npz as a context manager with a BundleError for unreadable files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Any:
        try:
            self.data = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{self.path}: unreadable npz ({exc})") from exc
        return _KeyChecked(self.data, self.path)

    def __exit__(self, *exc: object) -> None:
        self.data.close()


class _KeyChecked:
    def __init__(self, data: Any, path: Path) -> None:
        self.data, self.path = data, path

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.data.files:
            raise BundleError(f"{self.path}: missing array {key!r} (has {self.data.files})")
        try:
            array: np.ndarray = self.data[key]
            return array
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{self.path}: array {key!r} is unreadable ({exc})") from exc

    def get(self, key: str) -> np.ndarray | None:
        return self[key] if key in self.data.files else None


def _load_vocabulary(
    root: Path, manifest: dict[str, Any], files: dict[str, str], where: Path
) -> Vocabulary:
    info = manifest.get("vocabulary") or {}
    rel = info.get("file", "vocab.npz")
    _check_listed(rel, files, where)
    with _npz(root / rel) as vocab:
        bank = np.ascontiguousarray(vocab["class_bank"], dtype=np.float32)
        names_array = vocab.get("names")
        num_things_array = vocab.get("num_things")
        seen_array = vocab.get("seen")
    names = tuple(
        str(n) for n in (info.get("names") or (names_array if names_array is not None else []))
    )
    if bank.ndim != 3 or len(names) != bank.shape[0]:
        raise BundleError(
            f"{root / rel}: class_bank: expected (K, S, D) with K = {len(names)} names, "
            f"got {bank.shape}"
        )
    num_things = info.get("num_things")
    if num_things is None:
        num_things = int(num_things_array) if num_things_array is not None else len(names)
    seen = info.get("seen")
    if seen is None:
        seen = seen_array if seen_array is not None else np.ones(len(names), bool)
    seen = np.asarray(seen, dtype=bool).reshape(-1)
    if seen.shape != (len(names),):
        raise BundleError(f"{root / rel}: seen: expected ({len(names)},) bool, got {seen.shape}")
    return Vocabulary(names=names, num_things=int(num_things), seen=seen, class_bank=bank)
