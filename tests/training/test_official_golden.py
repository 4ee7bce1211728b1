"""Our model against the official OMG-Seg's own outputs on identical deterministic weights
(../shared/fixtures/official_golden, README there). Sizes, prompts and frame counts come from the
fixture files. These run the full ConvNeXt-L on the CPU (about a minute in all)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.open_vocab import open_vocab_ensemble
from omg_rt.postprocess.panoptic import panoptic_results
from omg_rt.postprocess.video import (
    align_clips,
    average_clip_logits,
    video_split,
    vis_results,
    vos_results,
)
from omg_rt.preprocess import VIDEO_SCALE, prepare_image
from tests.official_golden import (
    GOLDEN,
    PIXEL_AGREEMENT,
    RTOL,
    agreement,
    assert_per_query_close,
    load_npz,
    official_state_dicts,
    read_rgb,
    relative_error,
    write_official_files,
)
from training.model.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GOLDEN.exists(), reason=f"official fixtures not found at {GOLDEN}"),
]
@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    decoder, visual = write_official_files(tmp_path_factory.mktemp("official"))
    model, spec = load_checkpoint(decoder, backbone_weights=visual)
    return model


@pytest.fixture(scope="module")
@torch.no_grad()
def golden_image(official):
    meta = json.loads((GOLDEN / "golden.json").read_text())
    prepared = prepare_image(read_rgb(GOLDEN / "image.png"), scale=(1024, 1024))
    assert prepared.original_hw == tuple(meta["input_hw"])
    assert prepared.resized_hw == tuple(meta["resized_hw"])
    features = official.encode(torch.from_numpy(prepared.tensor))
    mask_features, memories = official.decode_pixels(features)
    bank = torch.from_numpy(np.load(GOLDEN / "vocab.npy"))
    assert bank.shape[0] == meta["num_classes"]
    out = official.decode_queries(memories, mask_features, bank, *official.learned_queries(1))[-1]
    return prepared, features, mask_features, memories, bank, out


def _full_size(prepared, mask_logits: np.ndarray) -> np.ndarray:
    return upsample_masks(
        mask_logits, prepared.padded_hw, prepared.resized_hw, prepared.original_hw
    )


def test_regenerated_weights_match_the_fixture_fingerprints():
    decoder, visual = official_state_dicts()
    assert len(decoder) == 310 and len(visual) == 345
    total = sum(float(t.double().sum()) for t in decoder.values())
    squares = sum(float((t.double() ** 2).sum()) for t in decoder.values())
    assert total == pytest.approx(11196.992960, abs=1e-4)
    assert squares == pytest.approx(548461.739746, abs=1e-3)
    assert sum(float(t.double().sum()) for t in visual.values()) == pytest.approx(
        32506.303157, abs=1e-4
    )


def test_panoptic_mode_logits_match_the_official_model(golden_image):
    out = golden_image[-1]
    golden = load_npz("golden.npz")
    cls = torch.cat([out.class_logits[0], out.iou_logits[0, :, None]], -1).numpy()
    assert cls.shape == golden["cls_scores"].shape
    assert_per_query_close(cls, golden["cls_scores"])
    masks = out.mask_logits[0, :, 0].numpy()
    n = golden["mask_logits_q16"].shape[0]
    assert relative_error(masks[:n], golden["mask_logits_q16"]) <= RTOL
    sums = masks.reshape(masks.shape[0], -1).sum(1)
    assert_per_query_close(sums[:, None], golden["mask_logits_sum"][:, None])
    assert_per_query_close(out.query_embeddings[0].numpy(), golden["query_feat"])


@pytest.mark.parametrize("fixture", ["golden_prompt.npz", "golden_points.npz"])
def test_prompt_mode_logits_match_the_official_model(official, golden_image, fixture):
    prepared, _, mask_features, memories, bank, _ = golden_image
    golden = load_npz(fixture)
    if "boxes" in golden:
        boxes = torch.from_numpy(golden["boxes"]).float()
    else:  # clicks as the official point evaluation feeds them: +-3 px pseudo boxes
        points = torch.from_numpy(golden["points"]).float()
        boxes = torch.cat([points - 3, points + 3], dim=-1)
    size = torch.tensor(prepared.resized_hw, dtype=torch.float32)
    queries = official.encode_prompts(boxes[None], size)
    out = official.decode_queries(memories, mask_features, bank, *queries, prompt_mode=True)[-1]
    cls = torch.cat([out.class_logits[0], out.iou_logits[0, :, None]], -1).numpy()
    assert relative_error(cls, golden["cls_scores"]) <= RTOL
    assert relative_error(out.mask_logits[0, :, 0].numpy(), golden["mask_logits"]) <= RTOL
    result = prompt_results(
        out.mask_logits[0, :, 0].numpy(),
        out.iou_logits[0].numpy(),
        prepared.padded_hw,
        prepared.resized_hw,
        prepared.original_hw,
    )
    assert agreement(result.masks, golden["final_masks"]) >= PIXEL_AGREEMENT


# the demo vocabulary (th139_st101): 139 thing classes, then 101 stuff classes
DEMO_NUM_THINGS = 139


def test_panoptic_map_matches_the_official_model(golden_image):
    prepared, *_, out = golden_image
    masks = _full_size(prepared, out.mask_logits[0, :, 0].numpy())
    result = panoptic_results(out.class_logits[0].numpy(), masks, DEMO_NUM_THINGS)
    assert agreement(result.id_map, load_npz("golden.npz")["panoptic"]) >= PIXEL_AGREEMENT


def test_open_vocabulary_ensemble_matches_the_official_model(official, golden_image):
    prepared, features, _, _, bank, out = golden_image
    golden = load_npz("golden_ov.npz")
    clip_logits, valid = official.clip_class_logits(
        features[-1], out.mask_logits, bank, prepared.padded_hw
    )
    ov = open_vocab_ensemble(
        out.class_logits[0].numpy(),
        clip_logits[0].numpy(),
        golden["seen"].astype(bool),
        valid[0].numpy(),
    )
    assert relative_error(ov, golden["ov_cls"]) <= RTOL
    masks = _full_size(prepared, out.mask_logits[0, :, 0].numpy())
    result = panoptic_results(ov.astype(np.float32), masks, DEMO_NUM_THINGS)
    assert agreement(result.id_map, golden["panoptic"]) >= PIXEL_AGREEMENT


def test_whole_video_inference_matches_the_official_model(official):
    meta = json.loads((GOLDEN / "video_golden.json").read_text())
    golden = load_npz("video_golden.npz")
    frames = [read_rgb(GOLDEN / "video" / f"frame_{i:02d}.png") for i in range(meta["frames"])]
    prepared = [prepare_image(f, scale=VIDEO_SCALE) for f in frames]
    assert prepared[0].resized_hw == tuple(meta["resized_hw"])
    assert prepared[0].padded_hw == tuple(meta["batch_input_hw"])
    bank = torch.from_numpy(np.load(GOLDEN / "vocab.npy")[:40])  # YouTube-VIS: 40 things
    tubes = video_split(len(frames))
    assert [end - start for start, end in tubes] == meta["tube_frames"]

    cls_per_tube, iou_per_tube, embeddings, masks_per_tube = [], [], [], []
    for k, (start, end) in enumerate(tubes):
        images = torch.from_numpy(np.concatenate([p.tensor for p in prepared[start:end]]))
        mask_features, memories = official.decode_pixels(official.encode(images))
        out = official.decode_queries(memories, mask_features, bank, *official.learned_queries(1))[
            -1
        ]
        cls = torch.cat([out.class_logits[0], out.iou_logits[0, :, None]], -1).numpy()
        assert_per_query_close(cls, golden[f"tube{k}_cls"])
        tube = out.mask_logits[0].numpy()  # (Q, t, H/4, W/4)
        assert relative_error(tube[:4, :, ::2, ::2], golden[f"tube{k}_mask_q4"]) <= RTOL
        sums = tube.reshape(tube.shape[0], -1).sum(1)
        assert_per_query_close(sums[:, None], golden[f"tube{k}_mask_sum"][:, None])
        query = out.query_embeddings[0].numpy()
        assert_per_query_close(query, golden[f"tube{k}_query"])
        cls_per_tube.append(out.class_logits[0].numpy())
        iou_per_tube.append(out.iou_logits[0].numpy())
        embeddings.append(query)
        masks_per_tube.append(tube)

    perms = align_clips(embeddings)
    np.testing.assert_array_equal(perms[1], golden["match1"])
    cls = average_clip_logits(cls_per_tube, perms)
    iou = average_clip_logits(iou_per_tube, perms)
    frame_logits = [
        masks[perm][:, t]
        for masks, perm in zip(masks_per_tube, perms)
        for t in range(masks.shape[1])
    ]

    def full_size(i):
        return _full_size(prepared[i], frame_logits[i])

    vis = vis_results(cls, (full_size(i) for i in range(len(frames))), num_things=40)
    for f, frame in enumerate(vis):
        scores = golden[f"vis_scores{f}"]
        np.testing.assert_array_equal(frame.instances.labels, golden[f"vis_labels{f}"])
        assert relative_error(frame.instances.scores, scores) <= RTOL
        top = golden[f"vis_top10_masks{f}"]
        order = np.argsort(-frame.instances.scores, kind="stable")[: top.shape[0]]
        assert agreement(frame.instances.masks[order], top) >= PIXEL_AGREEMENT

    first = golden["vos_first_masks"].astype(bool)
    vos = vos_results(iou, (full_size(i) for i in range(len(frames))), first)
    assert agreement(np.stack(vos), golden["vos_maps"]) >= PIXEL_AGREEMENT
