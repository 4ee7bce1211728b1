"""The torch-free text-bank rules (prompts, aggregation, padding) and the on-disk bank cache."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.vocabulary import (
    CACHE_ENV,
    VILD_TEMPLATES,
    aggregate_class_bank,
    build_class_bank,
    class_bank_key,
    class_bank_path,
    expand_prompts,
    read_cached_bank,
    resolve_cache_dir,
    split_label,
    write_cached_bank,
)

D = 8


def fake_embed(texts: list[str]) -> np.ndarray:
    """(N, D) float32, a fixed pseudo-random vector per text (not normalised)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        rows.append(np.random.default_rng(seed).normal(size=D) * 3.0)
    return np.asarray(rows, dtype=np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_prompts_are_every_synonym_in_every_template_synonym_major():
    texts, counts = expand_prompts(["cat,kitten", "traffic_light"], templates=("a {}", "{}!"))
    assert texts == ["a cat", "cat!", "a kitten", "kitten!", "a traffic light", "traffic light!"]
    assert counts == [2, 1]
    texts, counts = expand_prompts(["dog"])
    assert texts == [t.format("dog") for t in VILD_TEMPLATES] and counts == [1]


def test_empty_synonyms_are_dropped_and_names_are_checked():
    assert split_label("cat,, kitten,") == ["cat", "kitten"]
    with pytest.raises(InvalidInputError, match="names: expected non-empty strings"):
        expand_prompts(["cat", " , "])
    with pytest.raises(InvalidInputError, match="names: expected a non-empty list"):
        expand_prompts([])


def test_bank_rows_are_the_normalised_mean_of_normalised_template_embeddings():
    names = ["cat,kitten,kitty", "dog", "sky,clouds"]
    bank = build_class_bank(names, fake_embed)
    assert bank.shape == (3, 3, D) and bank.dtype == np.float32
    for k, name in enumerate(names):
        synonyms = split_label(name)
        for s in range(3):
            word = synonyms[s] if s < len(synonyms) else synonyms[0]  # padding repeats synonym 0
            per_template = unit(fake_embed([t.format(word) for t in VILD_TEMPLATES]))
            np.testing.assert_allclose(bank[k, s], unit(per_template.mean(0)), atol=1e-6)
    assert np.array_equal(bank[1, 2], bank[1, 0]) and np.array_equal(bank[2, 2], bank[2, 0])


def test_batching_does_not_change_a_single_bit():
    names = ["cat,kitten", "dog", "car,cars,automobile"]
    reference = build_class_bank(names, fake_embed)
    for batch_size in (1, 5, 14, 1000):
        assert np.array_equal(build_class_bank(names, fake_embed, batch_size=batch_size),
                              reference)
    texts, counts = expand_prompts(names)
    assert np.array_equal(aggregate_class_bank(fake_embed(texts), counts, 14), reference)


def test_aggregation_rejects_the_wrong_number_of_embeddings():
    with pytest.raises(InvalidInputError, match=r"embeddings: expected \(42, D\)"):
        aggregate_class_bank(np.ones((41, D), np.float32), [2, 1], 14)


def test_cache_dir_is_the_argument_else_the_environment_never_a_default(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert resolve_cache_dir(None) is None
    assert resolve_cache_dir(tmp_path) == tmp_path
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(CACHE_ENV, "")
    assert resolve_cache_dir(None) is None


def test_the_key_changes_with_model_weights_names_order_and_templates():
    base = class_bank_key("tiny", "ab" * 32, ["cat", "dog"])
    assert base == class_bank_key("tiny", "ab" * 32, ("cat", "dog"))
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        class_bank_key("omg-convl", "ab" * 32, ["cat", "dog"]),
        class_bank_key("tiny", "cd" * 32, ["cat", "dog"]),
        class_bank_key("tiny", "ab" * 32, ["cat", "dogs"]),
        class_bank_key("tiny", "ab" * 32, ["dog", "cat"]),
        class_bank_key("tiny", "ab" * 32, ["cat,dog"]),
        class_bank_key("tiny", "ab" * 32, ["cat", "dog"], templates=VILD_TEMPLATES[:13]),
    }
    assert base not in others and len(others) == 6
    assert class_bank_path(Path("/cache"), base) == Path("/cache/vocab") / f"{base}.npy"


def test_a_written_bank_reads_back_bit_identical_and_no_temporary_file_remains(tmp_path):
    names = ["cat,kitten", "dog"]
    bank = build_class_bank(names, fake_embed)
    path = class_bank_path(tmp_path, "k")
    assert read_cached_bank(path, names) is None  # a miss is silent
    write_cached_bank(path, bank)
    assert os.listdir(path.parent) == ["k.npy"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    loaded = read_cached_bank(path, names)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, bank)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_k", "wrong_dtype", "not_unit",
                                    "nan", "pickle"])
def test_a_damaged_cache_file_is_reported_and_ignored(tmp_path, damage):
    names = ["cat,kitten", "dog"]
    bank = build_class_bank(names, fake_embed)
    path = class_bank_path(tmp_path, "k")
    write_cached_bank(path, bank)
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "wrong_k":
        np.save(path, bank[:1])
    elif damage == "wrong_dtype":
        np.save(path, bank.astype(np.float64))
    elif damage == "not_unit":
        np.save(path, bank * 2)
    elif damage == "nan":
        bad = bank.copy()
        bad[0, 0, 0] = np.nan
        np.save(path, bad)
    else:
        np.save(path, np.array([{"bank": 1}], dtype=object), allow_pickle=True)
    with pytest.warns(RuntimeWarning, match="class bank cache .*rebuilding"):
        assert read_cached_bank(path, names) is None


def test_an_unwritable_cache_warns_and_leaves_nothing_behind(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder should be
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_cached_bank(class_bank_path(blocker, "k"), np.ones((1, 1, D), np.float32))
    assert any("not written" in str(w.message) for w in caught)
    assert os.listdir(tmp_path) == ["file"]
