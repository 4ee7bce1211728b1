"""The torch datasets: one sample dict for image, video and prompt tasks; a seeded joint sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from training.data.dataset import (
    ImageDataset,
    JointSampler,
    PromptDataset,
    VideoDataset,
    collate_samples,
)
from training.data.formats import DataError
from training.data.readers import read_coco_instances, read_coco_panoptic, read_ytvis
from training.data.synthetic import SceneConfig, generate_dataset

CONFIG = SceneConfig(image_size=48)
SIZE = 40


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    paths = generate_dataset(tmp_path_factory.mktemp("synthetic"), "train", num_images=8,
                             num_videos=3, frames_per_video=6, seed=2, config=CONFIG,
                             progress=False)
    return (read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir),
            read_coco_instances(paths.instances_json, paths.image_dir),
            read_ytvis(paths.ytvis_json, paths.video_dir))


def _check_common(sample, task, t):
    assert sample["task"] == task
    frames, masks = sample["frames"], sample["masks"]
    assert frames.dtype == torch.float32 and frames.shape == (t, 3, SIZE, SIZE)
    assert 0 <= frames.min() and frames.max() <= 255
    n = len(sample["labels"])
    assert masks.dtype == torch.bool and masks.shape == (n, t, SIZE, SIZE)
    assert sample["labels"].dtype == torch.int64 and sample["track_ids"].dtype == torch.int64
    assert sample["track_ids"].shape == (n,) and len(set(sample["track_ids"].tolist())) == n
    assert sample["valid"].shape == (t, SIZE, SIZE)
    assert masks.flatten(1).any(dim=1).all()  # no empty tracks
    assert not (masks & ~sample["valid"]).any()


def test_image_samples_are_one_frame_clips(readers):
    panoptic, instances, _ = readers
    for reader in (panoptic, instances):
        ds = ImageDataset(reader, output_size=SIZE, scale_range=(0.8, 1.25), seed=0)
        sample = ds[0]
        _check_common(sample, "panoptic", 1)
    # Panoptic samples label every valid pixel exactly once (no void in the synthetic world).
    sample = ImageDataset(panoptic, output_size=SIZE, scale_range=(1.0, 1.0))[3]
    cover = sample["masks"][:, 0].sum(dim=0)
    assert torch.equal(cover, sample["valid"][0].long())


def test_pseudo_video_copies_the_image_and_keeps_tracks(readers):
    panoptic, _, _ = readers
    ds = ImageDataset(panoptic, output_size=SIZE, scale_range=(1.2, 2.0), num_frames=2)
    shared = 0
    for i in range(len(ds)):
        sample = ds[i]
        _check_common(sample, "panoptic", 2)
        present = sample["masks"].flatten(2).any(dim=2)  # (N, 2)
        shared += int(present.all(dim=1).sum())
        # Independent crops per frame: the two frames are different views.
        assert not torch.equal(sample["frames"][0], sample["frames"][1])
    assert shared >= len(ds)  # most objects are seen in both frames as one track


def test_pair_images_pseudo_video_keeps_objects_of_each_image_apart(readers):
    panoptic, _, _ = readers
    ds = ImageDataset(panoptic, output_size=SIZE, scale_range=(0.8, 1.25), num_frames=2,
                      pair_images=True)
    sample = ds[1]
    _check_common(sample, "panoptic", 2)
    present = sample["masks"].flatten(2).any(dim=2)
    assert (present.sum(dim=1) == 1).all()  # every track lives in exactly one frame
    assert present[:, 0].any() and present[:, 1].any()


def test_video_samples_are_clips_with_stable_tracks(readers):
    _, _, ytvis = readers
    ds = VideoDataset(ytvis, num_frames=3, frame_stride=2, output_size=SIZE,
                      scale_range=(0.9, 1.1))
    for i in range(len(ds)):
        sample = ds[i]
        _check_common(sample, "video", 3)
        record = ytvis[i]
        assert set(sample["track_ids"].tolist()) <= set(record.track_ids.tolist())
    things = VideoDataset(ytvis, output_size=SIZE, things_only=True)
    for i in range(len(things)):
        assert (things[i]["labels"] < CONFIG.num_things).all()
    with pytest.raises(DataError, match="frame_stride"):
        VideoDataset(ytvis, num_frames=4, frame_stride=3)


def test_prompt_samples_aim_each_prompt_at_its_target(readers):
    panoptic, _, _ = readers
    ds = PromptDataset(panoptic, num_prompts=6, point_ratio=0.5, box_jitter=0.0,
                       output_size=SIZE, scale_range=(0.8, 1.25))
    kinds = set()
    for i in range(len(ds)):
        sample = ds[i]
        _check_common(sample, "prompt", 1)
        boxes, points = sample["prompt_boxes"], sample["prompt_points"]
        is_point, targets = sample["prompt_is_point"], sample["prompt_targets"]
        assert boxes.shape == (6, 4) and points.shape == (6, 2) and is_point.shape == (6,)
        assert targets.shape == (6, 1, SIZE, SIZE) and sample["prompt_labels"].shape == (6,)
        for p in range(6):
            mask = targets[p, 0]
            assert mask.sum() >= 16
            match = (sample["masks"][:, 0] == mask).flatten(1).all(dim=1)
            assert sample["prompt_labels"][p] == sample["labels"][match][0]
            if is_point[p]:
                x, y = points[p].long().tolist()
                assert mask[y, x]
                assert torch.allclose(boxes[p], torch.cat([points[p] - 3, points[p] + 3]))
            else:
                ys, xs = torch.nonzero(mask, as_tuple=True)
                tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                assert torch.equal(boxes[p], tight)
            kinds.add(bool(is_point[p]))
    assert kinds == {True, False}


def test_samples_depend_only_on_seed_epoch_and_index(readers):
    panoptic, _, ytvis = readers
    for make in (lambda s: ImageDataset(panoptic, output_size=SIZE, seed=s),
                 lambda s: VideoDataset(ytvis, output_size=SIZE, seed=s),
                 lambda s: PromptDataset(panoptic, output_size=SIZE, seed=s)):
        a, b, c = make(0), make(0), make(1)
        _ = a[1]
        assert torch.equal(a[2]["frames"], b[2]["frames"])
        assert torch.equal(a[2]["masks"], b[2]["masks"])
        assert not torch.equal(a[2]["frames"], c[2]["frames"])
        b.set_epoch(1)
        assert not torch.equal(a[2]["frames"], b[2]["frames"])


def test_joint_sampler_draws_whole_batches_by_ratio(readers):
    panoptic, _, ytvis = readers
    images = ImageDataset(panoptic, output_size=SIZE)
    videos = VideoDataset(ytvis, output_size=SIZE)
    joint = ConcatDataset([images, videos])
    sampler = JointSampler(joint, [3, 1], batch_size=2, num_batches=400, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 400
    from_images = [all(i < len(images) for i in b) for b in batches]
    assert all(f or all(i >= len(images) for i in b) for f, b in zip(from_images, batches,
                                                                       strict=True))
    assert 0.68 < np.mean(from_images) < 0.82
    assert list(JointSampler(joint, [3, 1], batch_size=2, num_batches=400, seed=0)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # Within a dataset, every item comes once before any repeats.
    first = [i for b in batches if b[0] < len(images) for i in b][: len(images)]
    assert sorted(first) == list(range(len(images)))


def test_loader_batches_one_task_at_a_time(readers):
    panoptic, _, ytvis = readers
    joint = ConcatDataset([ImageDataset(panoptic, output_size=SIZE, num_frames=2),
                           VideoDataset(ytvis, output_size=SIZE, num_frames=2),
                           PromptDataset(panoptic, output_size=SIZE, num_prompts=4)])
    sampler = JointSampler(joint, [1, 1, 1], batch_size=3, num_batches=6, seed=1)
    loader = DataLoader(joint, batch_sampler=sampler, collate_fn=collate_samples)
    tasks = set()
    for batch in loader:
        tasks.add(batch["task"])
        t = 1 if batch["task"] == "prompt" else 2
        assert batch["frames"].shape == (3, t, 3, SIZE, SIZE)
        assert batch["valid"].shape == (3, t, SIZE, SIZE)
        assert len(batch["masks"]) == len(batch["labels"]) == 3
    assert len(tasks) >= 2
    with pytest.raises(DataError, match="one task"):
        collate_samples([joint[0], joint[len(joint) - 1]])


def test_datasets_reject_bad_arguments(readers):
    panoptic, _, _ = readers
    joint = ConcatDataset([ImageDataset(panoptic)])
    with pytest.raises(DataError, match="ratios"):
        JointSampler(joint, [1, 1], batch_size=2, num_batches=2)
    with pytest.raises(DataError, match="num_frames"):
        ImageDataset(panoptic, num_frames=3)
    with pytest.raises(DataError, match="point_mode"):
        PromptDataset(panoptic, point_mode="middle")
