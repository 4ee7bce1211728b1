"""The bundle's vocabulary: class names, thing count, open-vocabulary "seen" flags and text bank.

``--vocab`` accepts:

- a shipped key: ``coco``, ``ade``, ``vipseg``, ``ytvis`` (``export.vocabularies``);
- a names file: ``.txt`` with one class per line (synonyms separated by ``,``; thing classes
  first, then a line ``---``, then stuff classes; without ``---`` every class is a thing), or
  ``.json`` ``{"names": [...], "num_things": n}``;
- a precomputed bank, the ``[K, S, D]`` tensor the official ``gen_cls`` caches (``.pth``) or a
  ``.npy``: its names come from a names file beside it (``<bank>.names.txt`` / ``.json``), else
  from the shipped vocabulary its official file name mentions (``..._CocoPanopticOVDataset.pth``),
  else from the one shipped vocabulary with K classes;
- in Python, any object with ``names``, ``num_things`` and optionally ``bank`` and ``seen``.

Banks built from names use the model's CLIP text tower (``training.vocabulary``, whose rules are
``omg_rt.vocabulary``'s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from omg_rt.errors import InvalidInputError
from omg_rt.manifest import Vocabulary
from omg_rt.vocabularies import VOCABULARIES
from omg_rt.vocabulary import VILD_TEMPLATES, class_overlap, split_label
from training.model import OMGSeg
from training.vocabulary import build_class_bank

BANK_SUFFIXES = (".pth", ".pt", ".npy")
NAME_SUFFIXES = (".txt", ".json")
# Official bank file names carry the dataset class name (``{clip model}_{dataset}.pth``).
_OFFICIAL_DATASETS = {
    "CocoPanopticOVDataset": "coco",
    "ADEPanopticOVDataset": "ade",
    "VIPSegDataset": "vipseg",
    "YouTubeVISDataset_2019": "ytvis",
}


def training_vocabulary_words() -> list[str]:
    """The class strings of every shipped vocabulary: the official joint training vocabulary
    (COCO, ADE20K, YouTube-VIS, VIPSeg, Cityscapes) covers them all."""
    return [name for vocab in VOCABULARIES.values() for name in vocab.names]


def resolve_vocabulary(vocab: Any, model: OMGSeg, *, progress: bool = True) -> Vocabulary:
    """Turn a ``--vocab`` value into a :class:`Vocabulary` (bank computed if needed).

    Raises:
        InvalidInputError: unknown key, unreadable file, inconsistent names / bank / num_things,
            or names given for a model without a text encoder.
    """
    embed_dim = model.config.backbone.embed_dim
    if isinstance(vocab, str) and vocab in VOCABULARIES:
        shipped = VOCABULARIES[vocab]
        return _finish(shipped.names, shipped.num_things, None, None, f"builtin:{vocab}", model,
                       embed_dim, progress)
    if isinstance(vocab, (str, Path)):
        path = Path(vocab)
        if not path.exists():
            raise InvalidInputError(
                f"vocab: expected one of {sorted(VOCABULARIES)}, a names file "
                f"({'/'.join(NAME_SUFFIXES)}) or a bank file ({'/'.join(BANK_SUFFIXES)}), "
                f"got {str(vocab)!r} (no such file)")
        if path.suffix in BANK_SUFFIXES:
            bank = load_bank(path)
            names, num_things = _names_for_bank(path, bank.shape[0])
            return _finish(names, num_things, bank, None, f"bank:{path.name}", model, embed_dim,
                           progress)
        if path.suffix in NAME_SUFFIXES:
            names, num_things = read_names(path)
            return _finish(names, num_things, None, None, f"names:{path.name}", model, embed_dim,
                           progress)
        raise InvalidInputError(
            f"vocab: expected a {'/'.join(NAME_SUFFIXES + BANK_SUFFIXES)} file, got {path.name}")
    if hasattr(vocab, "names") and hasattr(vocab, "num_things"):
        given_bank = getattr(vocab, "bank", None)
        given_seen = getattr(vocab, "seen", None)
        return _finish(tuple(vocab.names), int(vocab.num_things),
                       None if given_bank is None else _as_bank(given_bank, "vocab.bank"),
                       None if given_seen is None else np.asarray(given_seen, dtype=bool),
                       "python", model,
                       embed_dim, progress)
    raise InvalidInputError(
        f"vocab: expected a vocabulary key, a path or an object with names/num_things, got "
        f"{type(vocab).__name__}")


def load_bank(path: Path) -> np.ndarray:
    """A (K, S, D) bank from an official ``.pth`` (a bare tensor) or a ``.npy``."""
    if path.suffix == ".npy":
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"vocab: {path} is not a readable .npy file ({exc})") from exc
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad bank file
            raise InvalidInputError(f"vocab: {path} is not a weights-only torch file ({exc})") \
                from exc
    return _as_bank(data, f"vocab ({path.name})")


def _as_bank(data: Any, what: str) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().float().cpu().numpy()
    if not isinstance(data, np.ndarray) or data.ndim != 3 or not np.issubdtype(data.dtype,
                                                                                np.floating):
        shape = getattr(data, "shape", None)
        raise InvalidInputError(
            f"{what}: expected a float (K, S, D) class bank, got "
            f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    return np.ascontiguousarray(data, dtype=np.float32)


def read_names(path: Path) -> tuple[tuple[str, ...], int]:
    """(names, num_things) from a ``.txt`` (``---`` separates things from stuff) or ``.json``."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            names, num_things = tuple(str(n) for n in data["names"]), int(data["num_things"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(
                f"vocab: {path} must be JSON {{\"names\": [...], \"num_things\": n}} ({exc})"
            ) from exc
        return names, num_things
    lines = [line.strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if "---" in lines:
        split = lines.index("---")
        things, stuff = lines[:split], lines[split + 1 :]
    else:
        things, stuff = lines, []
    return tuple(things + stuff), len(things)


def _names_for_bank(path: Path, k: int) -> tuple[tuple[str, ...], int]:
    for suffix in NAME_SUFFIXES:
        sidecar = path.with_name(path.stem + ".names" + suffix)
        if sidecar.exists():
            return read_names(sidecar)
    for dataset, key in _OFFICIAL_DATASETS.items():
        if path.stem.endswith(dataset):
            shipped = VOCABULARIES[key]
            return shipped.names, shipped.num_things
    matches = [v for v in VOCABULARIES.values() if len(v.names) == k]
    if len(matches) == 1:
        return matches[0].names, matches[0].num_things
    raise InvalidInputError(
        f"vocab: no class names for the {k}-class bank {path.name}; write them to "
        f"{path.stem}.names.txt beside it (one class per line, '---' before the stuff classes)")


def _finish(names: Sequence[str], num_things: int, bank: np.ndarray | None,
            seen: np.ndarray | None, source: str, model: OMGSeg, embed_dim: int,
            progress: bool) -> Vocabulary:
    names = tuple(names)
    k = len(names)
    if k == 0:
        raise InvalidInputError("vocab: expected at least one class name, got none")
    if not 0 <= num_things <= k:
        raise InvalidInputError(f"vocab: num_things expected 0..{k}, got {num_things}")
    if bank is None:
        if getattr(model, "text_encoder", None) is None:
            raise InvalidInputError(
                f"vocab: {source} needs the CLIP text tower to embed its names, and this "
                "checkpoint has none (the official decoder-only file with a visual-only CLIP "
                "file); give a precomputed bank (.pth/.npy) or --backbone-weights with the text "
                "tower")
        prompts = sum(len(split_label(n)) for n in names) * len(VILD_TEMPLATES)
        with tqdm(total=prompts, desc="text bank", unit="prompt", disable=not progress) as bar:
            bank = build_class_bank(model, names, progress=bar.update).numpy()
    if bank.shape[0] != k or bank.shape[2] != embed_dim:
        raise InvalidInputError(
            f"vocab: expected a ({k}, S, {embed_dim}) bank for {k} classes of this model, got "
            f"{tuple(bank.shape)}")
    norms = np.linalg.norm(bank, axis=-1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise InvalidInputError(
            f"vocab: expected unit-norm bank rows (as gen_cls writes them), got norms in "
            f"[{norms.min():.4f}, {norms.max():.4f}]")
    if seen is None:
        seen = np.asarray(class_overlap(training_vocabulary_words(), names), dtype=bool)
    if seen.shape != (k,):
        raise InvalidInputError(f"vocab: seen expected bool ({k},), got {seen.shape}")
    return Vocabulary(names=tuple(names), num_things=int(num_things), seen=seen,
                      class_bank=np.ascontiguousarray(bank, np.float32), source=source)


def save_vocabulary(vocabulary: Vocabulary, path: Path) -> None:
    """``vocab.npz``: class_bank (K, S, D) float32, names (K,) str, num_things () int64,
    seen (K,) bool."""
    np.savez(path, class_bank=vocabulary.class_bank, names=np.asarray(vocabulary.names, dtype=str),
             num_things=np.int64(vocabulary.num_things), seen=vocabulary.seen)
