"""The synthetic world: seeded, byte-reproducible, learnable by default, videos with real motion."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from training.data.formats import DataError
from training.data.synthetic import (
    STUFF_STYLES,
    THING_STYLES,
    SceneConfig,
    SceneGenerator,
    generate_dataset,
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_files_whatever_the_worker_count(tmp_path):
    kwargs = dict(num_images=6, num_videos=2, frames_per_video=4, seed=3, progress=False)
    generate_dataset(tmp_path / "a", "train", workers=1, **kwargs)
    generate_dataset(tmp_path / "b", "train", workers=2, **kwargs)
    a, b = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert len(a) == 3 + 6 * 2 + 2 * 4  # 3 JSONs, image + panoptic PNG per image, frames
    assert a == b


def test_different_seeds_give_different_scenes():
    a, b = SceneGenerator(0).image(0), SceneGenerator(1).image(0)
    assert not np.array_equal(a.image, b.image)


def test_splits_made_with_one_seed_hold_different_scenes(tmp_path):
    train = SceneGenerator(0, split="train").image(0)
    val = SceneGenerator(0, split="val").image(0)
    assert not np.array_equal(train.image, val.image)
    generate_dataset(tmp_path, "train", num_images=2, seed=0, progress=False)
    generate_dataset(tmp_path, "val", num_images=2, seed=0, progress=False)
    a = (tmp_path / "images" / "train" / "000001.png").read_bytes()
    b = (tmp_path / "images" / "val" / "000001.png").read_bytes()
    assert a != b


def test_item_depends_only_on_seed_and_index():
    gen = SceneGenerator(5)
    later = gen.image(7)
    for i in range(7):
        gen.image(i)
    again = SceneGenerator(5).image(7)
    assert np.array_equal(later.image, again.image)
    assert np.array_equal(later.segment_map, again.segment_map)


def test_categories_list_things_first_with_isthing_and_real_word_names():
    cfg = SceneConfig()
    cats = cfg.categories()
    assert [c["name"] for c in cats] == list(cfg.thing_classes + cfg.stuff_classes)
    assert [c["isthing"] for c in cats] == [1] * cfg.num_things + [0] * len(cfg.stuff_classes)
    assert [c["id"] for c in cats] == list(range(1, len(cats) + 1))
    assert all(c["name"].isalpha() and c["name"].islower() for c in cats)


def test_default_world_is_small_and_colour_separable():
    cfg = SceneConfig()
    assert 3 <= cfg.num_things <= 5 and 2 <= len(cfg.stuff_classes) <= 3
    colours = [THING_STYLES[n] for n in cfg.thing_classes] + [
        STUFF_STYLES[n] for n in cfg.stuff_classes]
    gaps = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colours, 2)]
    assert min(gaps) > 4 * cfg.colour_jitter  # jitter never makes two classes look alike


def test_scenes_follow_the_config():
    cfg = SceneConfig()
    gen = SceneGenerator(0, config=cfg)
    for i in range(40):
        scene = gen.image(i)
        labels = scene.labels
        things = labels[labels < cfg.num_things]
        assert cfg.min_things <= len(things) <= cfg.max_things
        assert np.all(labels[: len(things)] < cfg.num_things)  # things first, then stuff
        assert len(set(labels[len(things):].tolist())) == len(labels) - len(things)
        assert scene.segment_map.min() == 0  # every pixel belongs to a segment
        masks = scene.masks
        assert np.array_equal(masks.sum(axis=0), np.ones(masks.shape[1:]))
        for k in range(len(things)):  # a thing's pixels carry its class colour
            colour = scene.image[masks[k]].mean(axis=0)
            expected = THING_STYLES[cfg.thing_classes[labels[k]]]
            assert np.abs(colour - expected).max() <= cfg.colour_jitter + 3 * cfg.noise_std


def test_occlusion_is_mild():
    cfg = SceneConfig(max_things=6, min_things=4)
    gen = SceneGenerator(2, config=cfg)
    for i in range(20):
        scene = gen.image(i)
        things = scene.labels < cfg.num_things
        areas = scene.masks[things].sum(axis=(1, 2))
        # Every shape covers >= 1.3 r² unoccluded (the star is the thinnest); at most 30% hidden.
        min_radius = cfg.thing_size[0] * cfg.image_size / 2
        assert areas.min() > 0.6 * min_radius**2


def test_config_rejects_bad_values_with_the_argument_name():
    with pytest.raises(DataError, match="thing_classes"):
        SceneConfig(thing_classes=("blob",))
    with pytest.raises(DataError, match="thing_size"):
        SceneConfig(thing_size=(0.5, 0.2))
    with pytest.raises(DataError, match="enter_prob"):
        SceneConfig(enter_prob=0.8, leave_prob=0.5)
    with pytest.raises(DataError, match="seed"):
        SceneGenerator(-1)
    with pytest.raises(DataError, match="num_images"):
        generate_dataset("/nonexistent", "train", num_images=-1)


def test_difficulty_is_configurable():
    cfg = SceneConfig(thing_classes=("circle", "square", "triangle", "star", "hexagon", "cross",
                                     "diamond"), stuff_classes=("sky", "water", "sand", "road"),
                      max_things=8, max_stuff_regions=4, image_size=64)
    scenes = [SceneGenerator(0, config=cfg).image(i) for i in range(30)]
    seen = set(np.concatenate([s.labels for s in scenes]).tolist())
    assert seen == set(range(11))
    assert scenes[0].image.shape == (64, 64, 3)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_videos_have_moving_entering_and_leaving_objects_that_keep_their_look():
    cfg = SceneConfig(enter_prob=0.4, leave_prob=0.4)
    gen = SceneGenerator(0, config=cfg)
    entered = left = moved = 0
    for v in range(12):
        video = gen.video(v, 8)
        assert video.frames.shape == (8, cfg.image_size, cfg.image_size, 3)
        for mask, label in zip(video.masks, video.labels, strict=True):
            if label >= cfg.num_things:
                continue
            present = mask.any(axis=(1, 2))
            assert present.any()
            entered += (not present[0]) and present[-1]
            left += present[0] and (not present[-1])
            if present[0] and present[-1]:
                moved += np.linalg.norm(_centroid(mask[0]) - _centroid(mask[-1])) > 3
            # One object keeps one colour across frames (the id follows the object).
            colours = np.stack([video.frames[t][mask[t]].mean(axis=0)
                                for t in np.flatnonzero(present) if mask[t].sum() > 20])
            assert np.ptp(colours, axis=0).max() < 4 * cfg.noise_std
        # Each pixel belongs to exactly one track in every frame.
        assert np.array_equal(video.masks.sum(axis=0), np.ones(video.masks.shape[1:]))
    assert entered >= 2 and left >= 2 and moved >= 5


def test_ytvis_file_lists_tracks_with_null_where_absent(tmp_path):
    paths = generate_dataset(tmp_path, "val", num_images=0, num_videos=3, frames_per_video=5,
                             seed=0, config=SceneConfig(enter_prob=0.5, leave_prob=0.5),
                             progress=False)
    data = json.loads(paths.ytvis_json.read_text())
    assert [v["length"] for v in data["videos"]] == [5, 5, 5]
    ids = [a["id"] for a in data["annotations"]]
    assert len(ids) == len(set(ids))
    for ann in data["annotations"]:
        assert len(ann["segmentations"]) == 5
        for seg, area in zip(ann["segmentations"], ann["areas"], strict=True):
            assert (seg is None) == (area is None)
    assert any(None in a["segmentations"] for a in data["annotations"])
    assert all((paths.video_dir / f).is_file() for v in data["videos"] for f in v["file_names"])
