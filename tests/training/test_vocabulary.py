"""Text banks as the official gen_cls builds them: synonyms, templates, aggregation, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omg_rt.vocabulary import VILD_TEMPLATES, class_overlap, split_label
from training.model import build_model
from training.vocabulary import build_class_bank


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("tiny").eval()


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
