"""Reading an exported bundle: its manifest (:class:`omg_rt.manifest.Manifest`, the format's
one description), its checksums, its queries and vocabulary, and the :class:`ModelAssets`
(everything besides the graphs) the runtime takes from it.

Every file listed in the manifest is checked against its sha256 on load (``verify=True``); a
missing or altered file raises :class:`~omg_rt.errors.BundleError` naming it.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omg_rt.errors import BundleError
from omg_rt.manifest import (
    MANIFEST,
    GraphEntry,
    InputContract,
    Manifest,
    Vocabulary,
    verify_files,
)
from omg_rt.spec import GRAPHS, ModelSpec
from omg_rt.tokenizer import ClipTokenizer

__all__ = ["Bundle", "InputContract", "ModelAssets", "Vocabulary", "load_bundle"]

@dataclass(frozen=True)
class Bundle:
    """A loaded (and verified) bundle: its manifest and the arrays it points at.

    Attributes:
        root: the bundle directory.
        manifest: the parsed ``manifest.json`` (:class:`~omg_rt.manifest.Manifest`).
        identity: sha256 (hex, 16 chars) of ``manifest.json``, which lists every file's sha256:
            the encoder cache keys include it, so two bundles never share entries.
        vocabulary: the default vocabulary (``vocab.npz``).
        query_content, query_position: (Q, C) float32 learned queries (``queries.npz``).
    """

    root: Path
    manifest: Manifest
    identity: str
    vocabulary: Vocabulary
    query_content: np.ndarray
    query_position: np.ndarray

    @property
    def spec(self) -> ModelSpec:
        return self.manifest.model

    @property
    def input(self) -> InputContract:
        """The sizes the graphs take and how images are sized for them."""
        return self.manifest.input

    @property
    def graphs(self) -> dict[str, GraphEntry]:
        return self.manifest.graphs

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.manifest.precisions

    @property
    def tokenizer_file(self) -> Path | None:
        """The BPE vocabulary's path, or None without a text tower."""
        rel = self.manifest.tokenizer_file
        return None if rel is None else self.root / rel

    @property
    def context_length(self) -> int:
        """Token ids per text for the text encoder."""
        return self.manifest.tokenizer_context_length or self.spec.text.context_length

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
    manifest = Manifest.from_json(raw, str(manifest_path))
    files = manifest.files
    if verify:
        verify_files(root, files)
    for rel in manifest.used_files():
        if rel not in files:
            raise BundleError(
                f"{manifest_path}: {rel} is used but not listed in 'files' (no checksum)"
            )
    known = {g.name for g in GRAPHS}
    unknown = set(manifest.graphs) - known
    if unknown:
        raise BundleError(
            f"{manifest_path}: unknown graphs {sorted(unknown)} (known {sorted(known)})"
        )
    vocabulary = _load_vocabulary(root, manifest)
    with _npz(root / manifest.queries_file) as queries:
        content = np.ascontiguousarray(queries["query_content"], dtype=np.float32)
        position = np.ascontiguousarray(queries["query_position"], dtype=np.float32)
    if content.shape != position.shape or content.shape[0] != manifest.num_queries:
        raise BundleError(
            f"{root / manifest.queries_file}: expected ({manifest.num_queries}, C) queries, got "
            f"{content.shape} and {position.shape}"
        )
    return Bundle(
        root=root,
        manifest=manifest,
        identity=hashlib.sha256(raw).hexdigest()[:16],
        vocabulary=vocabulary,
        query_content=content,
        query_position=position,
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


def _load_vocabulary(root: Path, manifest: Manifest) -> Vocabulary:
    """The manifest's names / things / seen with the bank of its ``vocab.npz``."""
    info = manifest.vocabulary
    path = root / info.file
    with _npz(path) as vocab:
        bank = np.ascontiguousarray(vocab["class_bank"], dtype=np.float32)
    if bank.ndim != 3 or bank.shape[:2] != (len(info.names), info.synonyms):
        raise BundleError(
            f"{path}: class_bank: expected (K, S, D) with K = {len(info.names)} names and "
            f"S = {info.synonyms} synonyms, got {bank.shape}"
        )
    return Vocabulary(
        names=info.names,
        num_things=info.num_things,
        seen=np.asarray(info.seen, dtype=bool),
        class_bank=bank,
        source=info.source,
    )
