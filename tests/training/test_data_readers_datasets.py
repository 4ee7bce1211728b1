"""Readers of the real dataset formats on tiny, format-faithful copies written here.

ADE20K label PNGs, DAVIS palette PNGs, VIPSeg RGB-encoded ids with its JSON (both the official
split-file shape and per-video frames) and a YouTube-VIS 2021 file: each reader returns exactly
what was written, reads nothing but its index on construction, and names the file and what it
expected when the dataset is malformed.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from omg_rt.vocabularies import VOCABULARIES
from training.data.formats import DataError, DataFormatError, id_to_rgb, rle_encode
from training.data.readers import (
    IGNORE_LABEL,
    read_ade20k,
    read_davis,
    read_image,
    read_vipseg,
    read_ytvis,
)

H, W = 32, 48


def _noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), np.uint8)


def _write_jpg(path: Path, seed: int) -> np.ndarray:
    """Writes a frame; returns it as decoded (JPEG is lossy), (H, W, 3) uint8 RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), _noise_image(seed)[..., ::-1])
    return read_image(path)


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------------- ADE20K


@pytest.fixture
def ade(tmp_path):
    return write_ade(tmp_path)


def write_ade(tmp_path: Path):
    """ADEChallengeData2016/{images,annotations}/validation with two images."""
    root = tmp_path / "ADEChallengeData2016"
    images, annotations = root / "images" / "validation", root / "annotations" / "validation"
    annotations.mkdir(parents=True)
    written = []
    for k in range(2):
        stem = f"ADE_val_{k + 1:08d}"
        image = _write_jpg(images / f"{stem}.jpg", k)
        values = np.zeros((H, W), np.uint8)  # 0 = "other"
        values[:8] = 1  # wall (stuff)
        values[8:16, :24] = 8  # bed (thing)
        values[16:24, 24:] = 150 if k == 0 else 13  # flag / person
        if k == 1:
            values[24:, :4] = IGNORE_LABEL  # an already-ignored pixel stays ignored
        Image.fromarray(values, mode="L").save(annotations / f"{stem}.png")
        written.append((image, values))
    return images, annotations, written


def test_ade20k_classes_are_the_ade_vocabulary_things_first(ade):
    images, annotations, _ = ade
    cats = read_ade20k(images, annotations).categories
    vocabulary = VOCABULARIES["ade"]
    assert cats.names == vocabulary.names and cats.num_things == 100
    assert sorted(cats.category_ids) == list(range(1, 151))
    ids = cats.category_ids
    # Things, then stuff, each in objectInfo150 (label value) order.
    assert list(ids[:100]) == sorted(ids[:100]) and list(ids[100:]) == sorted(ids[100:])
    for value, first_word in ((1, "wall"), (8, "bed"), (13, "person"), (41, "pedestal"),
                              (64, "window screen"), (146, "shower"), (150, "flag")):
        assert cats.names[cats.index(value)].split(",")[0] == first_word
    assert cats.index(8) == 0 and cats.index(1) == 100
    assert cats.index(150) == 99 and cats.index(146) == 149


def test_ade20k_reads_one_mask_per_class_and_the_ignore_label_map(ade):
    images, annotations, written = ade
    reader = read_ade20k(images, annotations)
    cats = reader.categories
    assert len(reader) == 2
    for i, (image, values) in enumerate(written):
        record = reader[i]
        assert record.file_name == f"ADE_val_{i + 1:08d}.jpg" and record.image_id == i
        assert np.array_equal(record.image, image)
        present = [v for v in (8, 13, 150, 1) if (values == v).any()]  # in class-index order
        assert record.labels.tolist() == [cats.index(v) for v in present]
        assert record.segment_ids.tolist() == present
        assert record.labels.dtype == np.int64 and not record.iscrowd.any()
        for mask, value in zip(record.masks, present):
            assert np.array_equal(mask, values == value)
        void = (values == 0) | (values == IGNORE_LABEL)
        assert np.array_equal(record.void, void)
        label_map = reader.label_map(i)
        assert label_map.dtype == np.int64 and label_map.shape == (H, W)
        assert (label_map[void] == IGNORE_LABEL).all()
        assert np.array_equal(label_map[~void],
                              np.asarray([cats.index(int(v)) for v in values[~void]]))


def test_ade20k_is_lazy_and_names_the_bad_file(ade):
    images, annotations, _ = ade
    reader = read_ade20k(images, annotations)
    (images / "ADE_val_00000001.jpg").unlink()  # after indexing: only reader[0] may notice
    assert reader.label_map(0).shape == (H, W)
    with pytest.raises(DataFormatError, match="ADE_val_00000001.jpg"):
        reader[0]
    bad = np.full((H, W), 151, np.uint8)
    Image.fromarray(bad, mode="L").save(annotations / "ADE_val_00000002.png")
    with pytest.raises(DataFormatError, match=r"ADE_val_00000002.png: expected label values "
                                              r"0..150 .*\[151\]"):
        reader.label_map(1)
    with pytest.raises(IndexError, match="index"):
        reader[2]


def test_ade20k_rejects_an_image_without_its_label_png(ade):
    images, annotations, _ = ade
    (annotations / "ADE_val_00000002.png").unlink()
    with pytest.raises(DataFormatError, match="missing ADE_val_00000002.png"):
        read_ade20k(images, annotations)
    with pytest.raises(DataError, match="annotation_dir"):
        read_ade20k(images, annotations.parent / "nope")


# ---------------------------------------------------------------------------------- DAVIS


def _davis_palette() -> list[int]:
    """The PASCAL VOC colour map DAVIS uses: index 1 is (128, 0, 0), 255 is (224, 224, 192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _write_palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = Image.fromarray(ids.astype(np.uint8), mode="P")
    png.putpalette(_davis_palette())
    png.save(path)


@pytest.fixture
def davis(tmp_path):
    return write_davis(tmp_path)


def write_davis(tmp_path: Path):
    """DAVIS 2017 val: 'bear' (objects 1, 2; 2 leaves in frame 2; a void band in frame 1) and
    'cows' (object 3 only), 3 frames each."""
    root = tmp_path / "DAVIS"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\ncows\n")
    written = {}
    for v, name in enumerate(("bear", "cows")):
        frames, ids = [], []
        for t in range(3):
            frames.append(_write_jpg(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg",
                                     10 * v + t))
            frame_ids = np.zeros((H, W), np.uint8)
            if name == "bear":
                frame_ids[_box(2, 12, 2 + 4 * t, 14 + 4 * t)] = 1
                if t < 2:
                    frame_ids[_box(20, 30, 30, 44)] = 2
                if t == 1:
                    frame_ids[:, 0] = 255  # void
            else:
                frame_ids[_box(5, 25, 10, 30)] = 3
            _write_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", frame_ids)
            ids.append(frame_ids)
        written[name] = (np.stack(frames), np.stack(ids))
    return root, written


def test_davis_reads_palette_indices_as_object_tracks(davis):
    root, written = davis
    reader = read_davis(root)
    assert len(reader) == 2 and reader.video_names == ["bear", "cows"]
    assert reader.categories.names == ("object",)
    for i, name in enumerate(("bear", "cows")):
        frames, ids = written[name]
        record = reader[i]
        assert record.video_id == i
        assert record.file_names == [f"{name}/{t:05d}.jpg" for t in range(3)]
        assert np.array_equal(record.frames, frames)
        objects = [1, 2] if name == "bear" else [3]  # the indices, not the palette colours
        assert record.track_ids.tolist() == objects
        assert record.labels.tolist() == [0] * len(objects) and not record.iscrowd.any()
        assert record.masks.shape == (len(objects), 3, H, W)
        for mask, obj in zip(record.masks, objects):
            assert np.array_equal(mask, ids == obj)
        assert np.array_equal(record.void, ids == 255)
    bear = reader[0]
    assert not bear.masks[1, 2].any()  # object 2 left in the last frame
    assert bear.void[1, :, 0].all() and not bear.masks[:, 1, :, 0].any()


def test_davis_first_frame_ids_decode_only_frame_zero(davis):
    root, written = davis
    reader = read_davis(root)
    (root / "Annotations" / "480p" / "bear" / "00001.png").unlink()
    first = reader.first_frame_ids(0)
    assert first.dtype == np.int32 and np.array_equal(first, written["bear"][1][0])
    with pytest.raises(DataFormatError, match="bear/00001.png"):
        reader[0]


def test_davis_void_is_background_in_the_first_frame_ids(davis):
    root, _ = davis
    ids = np.zeros((H, W), np.uint8)
    ids[_box(0, 10, 0, 10)] = 4
    ids[:, -1] = 255
    _write_palette_png(root / "Annotations" / "480p" / "cows" / "00000.png", ids)
    first = read_davis(root).first_frame_ids(1)
    assert sorted(np.unique(first).tolist()) == [0, 4]


def test_davis_is_lazy(davis):
    root, _ = davis
    reader = read_davis(root)
    (root / "JPEGImages" / "480p" / "cows" / "00002.jpg").unlink()
    assert reader[0].frames.shape == (3, H, W, 3)
    with pytest.raises(DataFormatError, match="cows/00002.jpg"):
        reader[1]


def test_davis_rejects_malformed_datasets(davis):
    root, _ = davis
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\ncows\nghost\n")
    with pytest.raises(DataFormatError, match=r"480p/ghost: expected the frames .* 'ghost' "
                                              r"listed in .*val.txt"):
        read_davis(root)
    with pytest.raises(DataFormatError, match=r"ImageSets/2017/test-dev.txt: expected the DAVIS "
                                              "video list"):
        read_davis(root, split="test-dev")
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\ncows\n")
    (root / "Annotations" / "480p" / "cows" / "00000.png").unlink()
    with pytest.raises(DataFormatError, match="cows/00000.png: expected the first-frame"):
        read_davis(root)
    # An RGB PNG holds colours, not object ids.
    rgb = np.zeros((H, W, 3), np.uint8)
    Image.fromarray(rgb, mode="RGB").save(root / "Annotations" / "480p" / "cows" / "00000.png")
    reader = read_davis(root)
    with pytest.raises(DataFormatError, match=r"cows/00000.png: expected a palette PNG .* "
                                              r"got mode 'RGB'"):
        reader.first_frame_ids(1)


# --------------------------------------------------------------------------------- VIPSeg

VIPSEG_CATEGORIES = [  # a slice of panoVIPSeg_categories.json, in its order
    {"id": 0, "name": "wall", "isthing": 0},
    {"id": 28, "name": "sky", "isthing": 0},
    {"id": 48, "name": "car", "isthing": 1},
    {"id": 60, "name": "person", "isthing": 1},
]
# Contiguous, things first: car 0, person 1, wall 2, sky 3.
PERSON_A, PERSON_B, CAR = 6100 + 256 * 3, 70_000, 4801  # ids using all three RGB channels


def _vipseg_frames() -> list[tuple[np.ndarray, dict[int, int]]]:
    """Three frames of one video: (ids, {segment id: category_id})."""
    frames = []
    for t in range(3):
        ids = np.zeros((H, W), np.int64)  # 0 = void
        ids[:8] = 1  # wall
        sky = 29 if t != 1 else 31  # the sky segment gets a new id in frame 1: still one track
        ids[8:12] = sky
        ids[_box(14, 24, 2 + 3 * t, 12 + 3 * t)] = PERSON_A
        segments = {1: 0, sky: 28, PERSON_A: 60}
        if t < 2:
            ids[_box(14, 30, 30, 40)] = PERSON_B
            segments[PERSON_B] = 60
        if t == 2:
            ids[_box(26, 32, 0, 10)] = CAR
            segments[CAR] = 48
        frames.append((ids, segments))
    return frames


def write_vipseg(root: Path, official: bool) -> dict[str, list]:
    """Writes video 'v1' (the frames above) and 'v2' (one wall-only frame) in the brief's
    nested shape (imgs/, panomasks/) or the official split-file shape (images/, panomasksRGB/
    plus a raw panomasks/ the reader must not take)."""
    image_dir = root / ("images" if official else "imgs")
    mask_dir = root / ("panomasksRGB" if official else "panomasks")
    videos = {"v1": _vipseg_frames(), "v2": [(np.ones((H, W), np.int64), {1: 0})]}
    json_videos, json_annotations, written = [], [], {}
    for v, (name, frames) in enumerate(videos.items()):
        images, anns = [], []
        for t, (ids, segments) in enumerate(frames):
            stem = f"{t:08d}"
            images.append(_write_jpg(image_dir / name / f"{stem}.jpg", 100 + 10 * v + t))
            (mask_dir / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(id_to_rgb(ids), mode="RGB").save(mask_dir / name / f"{stem}.png")
            if official:  # the raw class-coded PNGs sit next to the RGB ones
                (root / "panomasks" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(
                    root / "panomasks" / name / f"{stem}.png")
            anns.append({"image_id": stem, "file_name": f"{stem}.png",
                         "segments_info": [{"id": i, "category_id": c, "iscrowd": 0}
                                           for i, c in segments.items()]})
        written[name] = [np.stack(images), frames]
        if official:
            json_videos.append({"video_id": name, "images": [
                {"id": a["image_id"], "file_name": a["file_name"], "height": H, "width": W}
                for a in anns]})
            json_annotations.append({"video_id": name, "annotations": anns})
        else:
            json_videos.append({"video_id": name, "annotations": anns})
    data = {"categories": VIPSEG_CATEGORIES, "videos": json_videos}
    if official:
        data["annotations"] = json_annotations
    (root / "panoptic_gt_VIPSeg_val.json").write_text(json.dumps(data))
    return written


@pytest.mark.parametrize("official", [False, True], ids=["nested", "official"])
def test_vipseg_reads_one_track_per_segment_across_frames(tmp_path, official):
    written = write_vipseg(tmp_path, official)
    reader = read_vipseg(tmp_path)
    assert reader.categories.names == ("car", "person", "wall", "sky")
    assert reader.categories.num_things == 2
    assert len(reader) == 2 and reader.video_names == ["v1", "v2"] and reader.num_frames(0) == 3
    record = reader[0]
    frames, truth = written["v1"]
    assert record.file_names == [f"v1/{t:08d}.jpg" for t in range(3)]
    assert np.array_equal(record.frames, frames)
    # First appearance order: wall, sky (one track, its first id), person A, person B, car.
    assert record.track_ids.tolist() == [1, 29, PERSON_A, PERSON_B, CAR]
    assert record.labels.tolist() == [2, 3, 1, 1, 0]
    assert not record.iscrowd.any()
    ids = np.stack([f[0] for f in truth])  # (T, H, W)
    sky = (ids == 29) | (ids == 31)
    for mask, expected in zip(record.masks, [ids == 1, sky, ids == PERSON_A, ids == PERSON_B,
                                             ids == CAR]):
        assert np.array_equal(mask, expected)
    assert not record.masks[3, 2].any() and not record.masks[4, :2].any()  # leave / enter
    assert np.array_equal(record.void, ids == 0)
    wall_only = reader[1]
    assert wall_only.track_ids.tolist() == [1] and wall_only.masks.shape == (1, 1, H, W)


def test_vipseg_is_lazy(tmp_path):
    write_vipseg(tmp_path, official=False)
    reader = read_vipseg(tmp_path)
    (tmp_path / "panomasks" / "v1" / "00000001.png").unlink()
    assert reader[1].masks.all()
    with pytest.raises(DataFormatError, match="v1/00000001.png"):
        reader[0]


def test_vipseg_rejects_ids_the_json_does_not_list(tmp_path):
    write_vipseg(tmp_path, official=False)
    ids = np.ones((H, W), np.int64)
    ids[0, 0] = 555
    Image.fromarray(id_to_rgb(ids), mode="RGB").save(tmp_path / "panomasks" / "v2" /
                                                     "00000000.png")
    with pytest.raises(DataFormatError, match=r"v2/00000000.png: ids \[555\] are not in this "
                                              r"frame's segments_info"):
        read_vipseg(tmp_path)[1]


def test_vipseg_rejects_an_unknown_category_when_indexing(tmp_path):
    write_vipseg(tmp_path, official=False)
    path = tmp_path / "panoptic_gt_VIPSeg_val.json"
    data = json.loads(path.read_text())
    data["videos"][1]["annotations"][0]["segments_info"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"panoptic_gt_VIPSeg_val.json: video 'v2' frame "
                                              r"'00000000.png': segment 1: expected a "
                                              r"category_id listed in 'categories', got 99"):
        read_vipseg(tmp_path)


def test_vipseg_rejects_raw_class_coded_masks_and_missing_fields(tmp_path):
    write_vipseg(tmp_path, official=False)
    raw = np.ones((H, W), np.uint8)  # the raw panomasks: class values, one channel
    Image.fromarray(raw, mode="L").save(tmp_path / "panomasks" / "v2" / "00000000.png")
    with pytest.raises(DataFormatError, match=r"v2/00000000.png: expected RGB-encoded VIPSeg "
                                              r"panoptic ids .* got mode 'L'"):
        read_vipseg(tmp_path)[1]
    path = tmp_path / "panoptic_gt_VIPSeg_val.json"
    data = json.loads(path.read_text())
    del data["videos"][0]["annotations"][0]["file_name"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="video 'v1': expected an object with a "
                                              "'file_name' field"):
        read_vipseg(tmp_path)
    with pytest.raises(DataError, match="json"):
        read_vipseg(tmp_path, split="train")


# ---------------------------------------------------------------------- YouTube-VIS 2021

YTVIS_2021_NAMES = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe",
    "horse", "leopard", "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit",
    "shark", "skateboard", "snake", "snowboard", "squirrel", "surfboard", "tennis_racket",
    "tiger", "train", "truck", "turtle", "whale", "zebra",
)  # ids 1..40 in this order (YouTube-VIS 2021's categories)


def test_ytvis_2021_file_reads_with_the_2019_reader(tmp_path):
    frames = [_write_jpg(tmp_path / "JPEGImages" / "0a1b2c" / f"{t * 5:05d}.jpg", 200 + t)
              for t in range(3)]
    person = [_box(2, 20, 4 + 5 * t, 20 + 5 * t) for t in range(3)]
    zebra = [_box(22, 30, 30, 46), None, _box(20, 32, 26, 46)]  # occluded in frame 1
    tracks = [(11, 26, person), (12, 40, zebra)]
    data = {
        "info": {"description": "YouTube-VOS 2021"}, "licenses": [],
        "categories": [{"supercategory": "object", "id": k + 1, "name": name}
                       for k, name in enumerate(YTVIS_2021_NAMES)],
        "videos": [{"id": 7, "width": W, "height": H, "length": 3,
                    "file_names": [f"0a1b2c/{t * 5:05d}.jpg" for t in range(3)]}],
        "annotations": [
            {"id": track_id, "video_id": 7, "category_id": category, "iscrowd": 0,
             "height": H, "width": W,
             "segmentations": [None if m is None else rle_encode(m) for m in masks],
             "areas": [None if m is None else int(m.sum()) for m in masks],
             "bboxes": [None if m is None else [0, 0, 1, 1] for m in masks]}
            for track_id, category, masks in tracks],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    reader = read_ytvis(tmp_path / "instances.json", tmp_path / "JPEGImages")
    assert reader.categories.names == YTVIS_2021_NAMES and reader.categories.num_things == 40
    record = reader[0]
    assert record.video_id == 7 and np.array_equal(record.frames, np.stack(frames))
    assert record.track_ids.tolist() == [11, 12]
    assert record.labels.tolist() == [25, 39]  # person (id 26), zebra (id 40)
    assert np.array_equal(record.masks[0], np.stack(person))
    assert np.array_equal(record.masks[1, 0], zebra[0]) and not record.masks[1, 1].any()
    assert np.array_equal(record.masks[1, 2], zebra[2])
    data["annotations"][1]["category_id"] = 41
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"instances.json: track 12: expected a "
                                              r"category_id listed in 'categories', got 41"):
        read_ytvis(tmp_path / "instances.json", tmp_path / "JPEGImages")
