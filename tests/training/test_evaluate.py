"""Held-out evaluation: an oracle that predicts the ground truth scores (near) perfectly through the
runtime's pre/post-processing, and the metrics fall when the predictions get worse.

The oracle is a real ``nn.Module`` returning ``QueryPredictions``: it recognises each input
image among the prepared held-out images and answers with that image's ground truth at stride 4.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omg_rt.preprocess import prepare_image
from training.data import SceneConfig, generate_dataset, read_coco_panoptic, read_ytvis
from training.evaluate import evaluate
from training.model.query_decoder import QueryPredictions
from training.presets import get_preset

NUM_CLASSES, NUM_THINGS, QUERIES = 7, 4, 16


class Oracle(torch.nn.Module):
    """Predicts each segment / track with one query (class logit 10, mask logits +-10).

    Args:
        mode: "truth"; "shuffled" (query order permuted per call, embeddings permuted with them:
            the runtime's alignment must undo it); "forgetful" (query order permuted per call
            with fresh embeddings: ids cannot be linked across clips).
    """

    def __init__(self, images, videos, mode: str = "truth") -> None:
        super().__init__()
        self.config = get_preset("synthetic-tiny")
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.mode = mode
        self.rng = np.random.default_rng(0)
        pre = self.config.preprocess
        self.frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for record in images:
            self._remember(record.image, record.masks, record.labels, pre)
        for v in range(len(videos)):
            video = videos[v]
            for t, frame in enumerate(video.frames):
                self._remember(frame, video.masks[:, t], video.labels, pre)

    def _remember(self, image, masks, labels, pre) -> None:
        tensor = prepare_image(image, pre.image_scale, pre.mean, pre.std, pre.size_divisor).tensor
        self.frames[_key(tensor[0])] = (masks, labels)

    def forward(self, images, class_bank, *, num_frames=1, prompt_boxes=None, image_size=None):
        b = images.shape[0] // num_frames
        h4, w4 = images.shape[-2] // 4, images.shape[-1] // 4
        truth = [self.frames[_key(frame.numpy())] for frame in images]
        if prompt_boxes is not None:
            return [self._prompts(truth, prompt_boxes, (h4, w4))]
        cls = torch.full((b, QUERIES, NUM_CLASSES + 1), -10.0)
        cls[..., -1] = 10.0
        masks = torch.full((b, QUERIES, num_frames, h4, w4), -10.0)
        embeddings = torch.eye(QUERIES)[None].repeat(b, 1, 1)
        for i in range(b):
            clip = truth[i * num_frames : (i + 1) * num_frames]
            labels = clip[0][1]
            cls[i, : len(labels)] = -10.0
            cls[i, torch.arange(len(labels)), torch.from_numpy(labels)] = 10.0
            for t, (frame_masks, _) in enumerate(clip):
                masks[i, : len(labels), t] = _logits(frame_masks, (h4, w4))
            if self.mode != "truth":
                perm = torch.from_numpy(self.rng.permutation(QUERIES))
                cls[i], masks[i] = cls[i][perm], masks[i][perm]
                embeddings[i] = (embeddings[i][perm] if self.mode == "shuffled"
                                 else torch.randn(QUERIES, QUERIES))
        return [QueryPredictions(cls, masks, torch.zeros(b, QUERIES), embeddings)]

    def _prompts(self, truth, boxes, size):
        b, p = boxes.shape[:2]
        masks = torch.full((b, p, 1, *size), -10.0)
        for i in range(b):
            frame_masks = truth[i][0]
            for j in range(p):
                x, y = ((boxes[i, j, :2] + boxes[i, j, 2:]) / 2).long().tolist()
                hit = np.flatnonzero(frame_masks[:, y, x])
                masks[i, j, 0] = _logits(frame_masks[hit[:1]], size)[0]
        return QueryPredictions(torch.zeros(b, p, NUM_CLASSES + 1), masks, torch.zeros(b, p),
                                torch.zeros(b, p, QUERIES))


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def _logits(masks: np.ndarray, size) -> torch.Tensor:
    area = F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[None], size)[0]
    return (area - 0.5) * 20.0


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    paths = generate_dataset(tmp_path_factory.mktemp("val"), "val", num_images=6, num_videos=2,
                             frames_per_video=7, seed=3, config=SceneConfig(image_size=64),
                             progress=False)
    images = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    videos = read_ytvis(paths.ytvis_json, paths.video_dir)
    return images, videos


def _bank() -> torch.Tensor:
    return torch.zeros(NUM_CLASSES, 1, 8)


def test_an_oracle_scores_near_perfectly(held_out):
    images, videos = held_out
    metrics = evaluate(Oracle(images, videos), _bank(), images, videos, num_things=NUM_THINGS,
                       batch_size=4)
    assert metrics["pq"] > 90 and metrics["rq"] == pytest.approx(100.0)
    assert metrics["prompt_miou"] > 0.8  # the ceiling of 16 x 16 masks on 64 px images
    assert metrics["id_consistency"] == pytest.approx(1.0)
    assert 0.5 < metrics["id_consistency_all"] < 1.0  # frames with a few visible pixels count
    assert metrics["video_track_iou"] > 0.75
    assert metrics["num_images"] == 6 and metrics["num_videos"] == 2
    assert metrics["num_prompts"] == sum(len(images[i].labels) for i in range(6))


def test_video_ids_survive_a_query_reordering_that_the_embeddings_follow(held_out):
    images, videos = held_out
    shuffled = evaluate(Oracle(images, videos, "shuffled"), _bank(), None, videos,
                        num_things=NUM_THINGS)
    assert shuffled["id_consistency"] == pytest.approx(1.0)
    forgetful = evaluate(Oracle(images, videos, "forgetful"), _bank(), None, videos,
                         num_things=NUM_THINGS)
    assert forgetful["id_consistency"] < 0.9
    # distinct / look-alike tracks split the tracks: their weighted mean is the whole
    n, n_alike = forgetful["num_tracks"], forgetful["num_tracks_lookalike"]
    assert 0 < n_alike < n  # the held-out videos have both kinds
    parts = [(forgetful["id_consistency_distinct"], n - n_alike),
             (forgetful["id_consistency_lookalike"], n_alike)]
    assert sum(v * k for v, k in parts if k) / n == pytest.approx(forgetful["id_consistency"])
    assert "pq" not in forgetful  # no image split given


def test_worse_masks_lower_pq_and_prompt_miou(held_out):
    images, videos = held_out

    class Shifted(Oracle):
        def forward(self, images, *args, **kwargs):
            out = super().forward(images, *args, **kwargs)[0]
            out.mask_logits = torch.roll(out.mask_logits, shifts=(3, 3), dims=(-2, -1))
            return [out]

    good = evaluate(Oracle(images, videos), _bank(), images, None, num_things=NUM_THINGS)
    bad = evaluate(Shifted(images, videos), _bank(), images, None, num_things=NUM_THINGS)
    assert bad["pq"] < good["pq"] - 20
    assert bad["prompt_miou"] < good["prompt_miou"] - 0.2
