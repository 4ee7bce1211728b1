"""Text banks as the official gen_cls builds them: synonyms, templates, aggregation, padding; the
on-disk bank cache."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omg_rt.vocabulary import VILD_TEMPLATES, class_bank_key, class_overlap, split_label
from tests.conftest import seeded_tiny
from training.model import build_model
from training.vocabulary import build_class_bank, text_encoder_sha256


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def tiny():
    return seeded_tiny(0)


def test_split_label_follows_the_official_rules():
    assert split_label("parasol_or_umbrella") == ["parasol", "umbrella"]
    assert split_label("Microwave_oven") == ["microwave oven"]
    assert split_label("tv remote, remote control") == ["tv remote", "remote control"]
    assert split_label("bag/package") == ["bag", "package"]


def test_there_are_the_fourteen_vild_templates():
    assert len(VILD_TEMPLATES) == 14 and all("{}" in t for t in VILD_TEMPLATES)


def test_bank_is_unit_norm_and_padded_with_the_first_synonym(tiny):
    names = ["cat,kitty,kitten", "dog", "sky,clouds"]
    bank = build_class_bank(tiny, names)
    assert bank.shape == (3, 3, tiny.config.backbone.embed_dim)
    assert torch.allclose(bank.norm(dim=-1), torch.ones(3, 3), atol=1e-5)
    assert torch.equal(bank[1, 1], bank[1, 0]) and torch.equal(bank[1, 2], bank[1, 0])
    assert torch.equal(bank[2, 2], bank[2, 0])
    assert not torch.equal(bank[0, 1], bank[0, 0])


def test_bank_row_is_the_normalised_mean_of_normalised_template_embeddings(tiny):
    bank = build_class_bank(tiny, ["giant_panda"])
    texts = [t.format("giant panda") for t in VILD_TEMPLATES]
    embeddings = F.normalize(tiny.text_encoder(tiny.text_encoder.tokenize(texts)), dim=-1)
    expected = F.normalize(embeddings.mean(0), dim=-1)
    torch.testing.assert_close(bank[0, 0], expected, rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_the_bank(tiny):
    names = ["cat,kitty", "dog", "car,cars"]
    torch.testing.assert_close(build_class_bank(tiny, names, batch_size=5),
                               build_class_bank(tiny, names), rtol=1e-5, atol=1e-6)


def test_bank_needs_a_text_encoder_and_names():
    model = build_model("tiny", with_text_encoder=False)
    with pytest.raises(ValueError, match="text encoder"):
        build_class_bank(model, ["cat"])
    with pytest.raises(ValueError, match="names"):
        build_class_bank(build_model("tiny"), [])


def test_class_overlap_is_the_official_word_rule():
    train = ["person,child", "car,cars", "sky"]
    assert class_overlap(train, ["child,kid", "truck", "sky,clouds", "cars"]) == [
        True, False, True, True]


class CountingEncoder:
    """The real text encoder, counting its forward calls (every other attribute delegated)."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __call__(self, token_ids):
        self.calls += 1
        return self.encoder(token_ids)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def counting(model):
    return SimpleNamespace(config=model.config, text_encoder=CountingEncoder(model.text_encoder))


def cached_files(cache_dir):
    return sorted((cache_dir / "vocab").glob("*.npy"))


NAMES = ["cat,kitten", "dog"]


def test_a_cache_hit_returns_the_identical_bank_without_running_the_text_encoder(tiny, tmp_path):
    model = counting(tiny)
    first = build_class_bank(model, NAMES, cache_dir=tmp_path)
    assert model.text_encoder.calls > 0
    [path] = cached_files(tmp_path)
    assert path.name == f"{class_bank_key('tiny', text_encoder_sha256(tiny.text_encoder), NAMES)}.npy"
    model.text_encoder.calls = 0
    second = build_class_bank(model, NAMES, cache_dir=tmp_path)
    assert model.text_encoder.calls == 0
    assert second.dtype == torch.float32 and torch.equal(second, first)
    assert torch.equal(first, build_class_bank(tiny, NAMES))  # the cache changes nothing


def test_without_a_cache_dir_nothing_is_written_and_the_environment_can_name_one(
        tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("OMG_RT_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    build_class_bank(tiny, NAMES)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("OMG_RT_CACHE", str(tmp_path / "env"))
    model = counting(tiny)
    build_class_bank(model, NAMES)
    build_class_bank(model, NAMES)
    assert len(cached_files(tmp_path / "env")) == 1 and model.text_encoder.calls == 1


def test_a_changed_name_or_text_encoder_weight_changes_the_key(tiny, tmp_path):
    build_class_bank(tiny, NAMES, cache_dir=tmp_path)
    build_class_bank(tiny, ["cat,kitten", "dogs"], cache_dir=tmp_path)
    assert len(cached_files(tmp_path)) == 2
    changed = copy.deepcopy(tiny)
    changed.text_encoder.tower.text_projection.data[0, 0] += 1e-3
    assert text_encoder_sha256(changed.text_encoder) != text_encoder_sha256(tiny.text_encoder)
    model = counting(changed)
    bank = build_class_bank(model, NAMES, cache_dir=tmp_path)
    assert model.text_encoder.calls > 0 and len(cached_files(tmp_path)) == 3
    assert not torch.equal(bank, build_class_bank(tiny, NAMES, cache_dir=tmp_path))


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning_not_used(tiny, tmp_path):
    first = build_class_bank(tiny, NAMES, cache_dir=tmp_path)
    [path] = cached_files(tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    model = counting(tiny)
    with pytest.warns(RuntimeWarning, match="class bank cache .*rebuilding"):
        rebuilt = build_class_bank(model, NAMES, cache_dir=tmp_path)
    assert model.text_encoder.calls > 0 and torch.equal(rebuilt, first)
    assert np.array_equal(np.load(path), first.numpy())  # the file was rewritten whole
