"""Held-out evaluation: an oracle that predicts the ground truth scores (near) perfectly through the
runtime (``Segmenter.from_checkpoint``: its pre/post-processing, decoder layer and video session),
and the metrics fall when the predictions get worse.

The oracle is a real ``nn.Module`` with the model's graph methods: its encoder recognises each
input image among the prepared held-out images and passes that image's index through the pixel
decoder's features; its query decoder answers with that image's ground truth at stride 4.
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
        num_classes: K of the class logits (the readers' contiguous labels index them).
    """

    def __init__(self, images, videos, mode: str = "truth",
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = get_preset("synthetic-tiny")
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.prompt_encoder = torch.nn.Identity()  # prompts supported
        self.text_encoder = None
        self.mode = mode
        self.rng = np.random.default_rng(0)
        pre = self.config.preprocess
        self.index: dict[str, int] = {}
        self.truth: list[tuple[np.ndarray, np.ndarray]] = []
        for record in images:
            self._remember(record.image, record.masks, record.labels, pre)
        for v in range(len(videos)):
            video = videos[v]
            for t, frame in enumerate(video.frames):
                self._remember(frame, video.masks[:, t], video.labels, pre)

    def _remember(self, image, masks, labels, pre) -> None:
        """Keeps the masks where the model sees them: resized with the image, padded with it."""
        prepared = prepare_image(image, pre.image_scale, pre.mean, pre.std, pre.size_divisor)
        self.index.setdefault(_key(prepared.tensor[0]), len(self.truth))
        placed = np.zeros((len(masks), *prepared.padded_hw), bool)
        if len(masks):
            (h, w) = prepared.resized_hw
            resized = F.interpolate(torch.from_numpy(masks).float()[None], size=(h, w),
                                    mode="nearest")[0]
            placed[:, :h, :w] = resized.numpy() > 0.5
        self.truth.append((placed, labels))

    # -- the graph methods the torch backend calls ----------------------------------------
    def encode(self, images):
        n, _, h, w = images.shape
        features = [torch.zeros(n, width, h // s, w // s)
                    for width, s in zip(self.config.backbone.widths, (4, 8, 16, 32))]
        for i, frame in enumerate(images):  # the image's index rides in one feature value
            features[0][i, 0, 0, 0] = self.index[_key(frame.numpy())] + 1
        return features

    def decode_pixels(self, features):
        c = self.config.pixel_decoder.embed_dim
        n, _, h4, w4 = features[0].shape
        mask_features = torch.zeros(n, c, h4, w4)
        mask_features[:, 0, 0, 0] = features[0][:, 0, 0, 0]
        memories = [torch.zeros(n, c, h4 // s, w4 // s) for s in (8, 4, 2)]
        return mask_features, memories

    def learned_queries(self, batch_size):
        c = self.config.pixel_decoder.embed_dim
        return torch.zeros(batch_size, QUERIES, c), torch.zeros(batch_size, QUERIES, c)

    def encode_prompts(self, prompt_boxes, image_size):
        b, p = prompt_boxes.shape[:2]
        content = torch.zeros(b, p, self.config.pixel_decoder.embed_dim)
        content[..., :4] = prompt_boxes  # the boxes ride in the prompt queries
        return content, torch.zeros_like(content)

    def decode_queries(self, memories, mask_features, class_bank, query_content,
                       query_position, *, prompt_mode=False):
        truth = [self.truth[int(i) - 1] for i in mask_features[:, 0, 0, 0].tolist()]
        size = tuple(mask_features.shape[-2:])
        if prompt_mode:
            return [self._prompts(truth, query_content[..., :4], size)]
        b = query_content.shape[0]
        num_frames = mask_features.shape[0] // b
        cls = torch.full((b, QUERIES, self.num_classes + 1), -10.0)
        cls[..., -1] = 10.0
        masks = torch.full((b, QUERIES, num_frames, *size), -10.0)
        embeddings = torch.eye(QUERIES)[None].repeat(b, 1, 1)
        for i in range(b):
            clip = truth[i * num_frames : (i + 1) * num_frames]
            labels = clip[0][1]
            cls[i, : len(labels)] = -10.0
            cls[i, torch.arange(len(labels)), torch.from_numpy(labels)] = 10.0
            for t, (frame_masks, _) in enumerate(clip):
                masks[i, : len(labels), t] = _logits(frame_masks, size)
            if self.mode != "truth":
                perm = torch.from_numpy(self.rng.permutation(QUERIES))
                cls[i], masks[i] = cls[i][perm], masks[i][perm]
                embeddings[i] = (embeddings[i][perm] if self.mode == "shuffled"
                                 else torch.randn(QUERIES, QUERIES))
        return [QueryPredictions(cls, masks, torch.zeros(b, QUERIES), embeddings)]

    def decode_prompts(self, memories, mask_features, class_bank, query_content,
                       query_position):
        return self.decode_queries(memories, mask_features, class_bank, query_content,
                                   query_position, prompt_mode=True)[-1]

    def _prompts(self, truth, boxes, size):
        b, p = boxes.shape[:2]
        masks = torch.full((b, p, 1, *size), -10.0)
        for i in range(b):
            frame_masks = truth[i][0]
            for j in range(p):
                x, y = ((boxes[i, j, :2] + boxes[i, j, 2:]) / 2).long().tolist()
                hit = np.flatnonzero(frame_masks[:, y, x])
                masks[i, j, 0] = _logits(frame_masks[hit[:1]], size)[0]
        return QueryPredictions(torch.zeros(b, p, self.num_classes + 1), masks, torch.zeros(b, p),
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
    """(K, 1, D) unit-norm class embeddings (the oracle ignores them)."""
    dim = get_preset("synthetic-tiny").backbone.embed_dim
    return torch.eye(NUM_CLASSES, dim)[:, None]


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
        def decode_queries(self, *args, **kwargs):
            out = super().decode_queries(*args, **kwargs)[0]
            out.mask_logits = torch.roll(out.mask_logits, shifts=(3, 3), dims=(-2, -1))
            return [out]

    good = evaluate(Oracle(images, videos), _bank(), images, None, num_things=NUM_THINGS)
    bad = evaluate(Shifted(images, videos), _bank(), images, None, num_things=NUM_THINGS)
    assert bad["pq"] < good["pq"] - 20
    assert bad["prompt_miou"] < good["prompt_miou"] - 0.2
