"""Readers on generated files: generate → read → the same images, masks, labels and track ids."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from training.data.formats import (
    Categories,
    DataError,
    DataFormatError,
    id_to_rgb,
    rgb_to_id,
    rle_decode,
    rle_encode,
)
from training.data.readers import read_coco_instances, read_coco_panoptic, read_ytvis
from training.data.synthetic import SceneConfig, SceneGenerator, generate_dataset

SEED = 11
CONFIG = SceneConfig(image_size=48, enter_prob=0.3, leave_prob=0.3)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(root, "train", num_images=8, num_videos=3, frames_per_video=5,
                            seed=SEED, config=CONFIG, progress=False)


def test_panoptic_round_trip_gives_the_generated_scene(paths):
    reader = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    gen = SceneGenerator(SEED, config=CONFIG, split="train")
    assert len(reader) == 8
    assert reader.categories.names == CONFIG.thing_classes + CONFIG.stuff_classes
    assert reader.categories.num_things == CONFIG.num_things
    for i in range(len(reader)):
        record, scene = reader[i], gen.image(i)
        assert record.image.dtype == np.uint8 and record.image.shape == (48, 48, 3)
        assert np.array_equal(record.image, scene.image)
        assert np.array_equal(record.masks, scene.masks)
        assert np.array_equal(record.labels, scene.labels)
        assert record.labels.dtype == np.int64 and not record.iscrowd.any()
        assert len(set(record.segment_ids.tolist())) == len(record.segment_ids)


def test_panoptic_segments_info_matches_the_pngs(paths):
    data = json.loads(paths.panoptic_json.read_text())
    for ann in data["annotations"]:
        ids = rgb_to_id(cv2.imread(str(paths.panoptic_dir / ann["file_name"]))[..., ::-1])
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in ann["segments_info"])
        for seg in ann["segments_info"]:
            mask = ids == seg["id"]
            ys, xs = np.nonzero(mask)
            assert seg["area"] == mask.sum()
            assert seg["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]


def test_instances_round_trip_gives_the_things(paths):
    reader = read_coco_instances(paths.instances_json, paths.image_dir)
    gen = SceneGenerator(SEED, config=CONFIG, split="train")
    assert reader.categories.names == CONFIG.thing_classes
    for i in range(len(reader)):
        record, scene = reader[i], gen.image(i)
        things = scene.labels < CONFIG.num_things
        assert np.array_equal(record.masks, scene.masks[things])
        assert np.array_equal(record.labels, scene.labels[things])
        assert np.array_equal(record.image, scene.image)


def test_ytvis_round_trip_gives_the_generated_video(paths):
    reader = read_ytvis(paths.ytvis_json, paths.video_dir)
    gen = SceneGenerator(SEED, config=CONFIG, split="train")
    assert len(reader) == 3
    all_ids = []
    for v in range(len(reader)):
        record, video = reader[v], gen.video(v, 5)
        assert record.frames.shape == (5, 48, 48, 3)
        assert np.array_equal(record.frames, video.frames)
        assert np.array_equal(record.masks, video.masks)
        assert np.array_equal(record.labels, video.labels)
        all_ids += record.track_ids.tolist()
        part = reader.clip(v, [1, 3])
        assert np.array_equal(part.frames, video.frames[[1, 3]])
        assert np.array_equal(part.masks, video.masks[:, [1, 3]])
        assert np.array_equal(part.track_ids, record.track_ids)
    assert len(all_ids) == len(set(all_ids))  # track ids are unique over the dataset


def test_rle_polygon_and_uncompressed_rle_decode_to_the_same_square():
    mask = np.zeros((20, 30), bool)
    mask[5:12, 8:20] = True
    assert np.array_equal(rle_decode(rle_encode(mask), 20, 30), mask)
    # COCO polygons trace pixel edges: the square [8, 20) × [5, 12).
    polygon = [[8, 5, 20, 5, 20, 12, 8, 12]]
    assert (rle_decode(polygon, 20, 30) == mask).mean() > 0.95
    flat = mask.flatten(order="F")
    runs, value, count = [], False, 0
    for pixel in flat:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    assert np.array_equal(rle_decode({"size": [20, 30], "counts": runs}, 20, 30), mask)


def test_real_coco_instances_with_polygons_and_crowd_rle(tmp_path):
    image = np.zeros((16, 16, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    crowd = np.zeros((16, 16), bool)
    crowd[:4] = True
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 16, "width": 16}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "iscrowd": 0,
             "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
            {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 1,
             "segmentation": rle_encode(crowd)},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (tmp_path / "inst.json").write_text(json.dumps(data))
    record = read_coco_instances(tmp_path / "inst.json", tmp_path)[0]
    assert record.labels.tolist() == [1, 0]  # contiguous: person → 0, dog → 1
    assert record.iscrowd.tolist() == [False, True]
    assert record.masks[0, 3:9, 3:9].all() and not record.masks[0, 12:].any()
    assert np.array_equal(record.masks[1], crowd)


def test_categories_put_things_before_stuff():
    cats = Categories.from_coco([{"id": 5, "name": "sky", "isthing": 0},
                                 {"id": 2, "name": "dog", "isthing": 1},
                                 {"id": 9, "name": "cat", "isthing": 1}])
    assert cats.names == ("dog", "cat", "sky") and cats.num_things == 2
    assert [cats.index(i) for i in (2, 9, 5)] == [0, 1, 2]
    with pytest.raises(DataFormatError, match="category_id"):
        cats.index(3)


def test_id_rgb_encoding_round_trips():
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 16777215]])
    rgb = id_to_rgb(ids)
    assert rgb[1, 1].tolist() == [7, 0, 1]
    assert np.array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(DataError, match="ids"):
        id_to_rgb(np.array([[-1]]))


def test_readers_reject_bad_input(tmp_path, paths):
    with pytest.raises(DataError, match="json"):
        read_coco_panoptic(tmp_path / "missing.json", tmp_path, tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        read_ytvis(tmp_path / "bad.json", tmp_path)
    reader = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, tmp_path)
    with pytest.raises(DataFormatError, match="could not read"):
        reader[0]  # images are not in tmp_path: fails on access, not when indexing
    with pytest.raises(IndexError, match="index"):
        reader[len(reader)]
    video = read_ytvis(paths.ytvis_json, paths.video_dir)
    with pytest.raises(DataError, match="frame_indices"):
        video.clip(0, [0, 99])
