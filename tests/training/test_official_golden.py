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
    video_split,
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
    assert_panoptic_logits_match(golden_image[-1])


@pytest.mark.gpu
def test_the_model_on_cuda_with_its_gpu_kernels_matches_the_official_model(official, golden_image):
    """What the torch backend runs on a GPU: CUDA float32 (no TF32), the Triton deformable
    attention and PyTorch's fused masked attention (``kernels`` under ``auto``)."""
    import kernels
    from omg_rt.backends.torch import exact_fp32_on_cuda

    exact_fp32_on_cuda()
    prepared, *_ = golden_image
    image = torch.from_numpy(prepared.tensor).cuda()
    assert kernels.get_impl() == "auto", "the GPU paths run on CUDA only under 'auto'"
    try:
        model = official.cuda()
        mask_features, memories = model.decode_pixels(model.encode(image))
        bank = torch.from_numpy(np.load(GOLDEN / "vocab.npy")).cuda()
        out = model.decode_queries(memories, mask_features, bank, *model.learned_queries(1))[-1]
    finally:
        official.cpu()
    out = type(out)(**{k: None if v is None else v.cpu() for k, v in vars(out).items()})
    assert_panoptic_logits_match(out)
    masks = _full_size(prepared, out.mask_logits[0, :, 0].numpy())
    result = panoptic_results(out.class_logits[0].numpy(), masks, DEMO_NUM_THINGS)
    assert agreement(result.id_map, load_npz("golden.npz")["panoptic"]) >= PIXEL_AGREEMENT


def assert_panoptic_logits_match(out) -> None:
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


@pytest.mark.parametrize("folded", [False, True], ids=["prompt_mode", "decode_prompts"])
@pytest.mark.parametrize("fixture", ["golden_prompt.npz", "golden_points.npz"])
def test_prompt_mode_logits_match_the_official_model(official, golden_image, fixture, folded):
    # both prompt paths: the decoder in prompt mode, and the few-query form of the prompt graph
    prepared, _, mask_features, memories, bank, _ = golden_image
    golden = load_npz(fixture)
    if "boxes" in golden:
        boxes = torch.from_numpy(golden["boxes"]).float()
    else:  # clicks as the official point evaluation feeds them: +-3 px pseudo boxes
        points = torch.from_numpy(golden["points"]).float()
        boxes = torch.cat([points - 3, points + 3], dim=-1)
    size = torch.tensor(prepared.resized_hw, dtype=torch.float32)
    queries = official.encode_prompts(boxes[None], size)
    if folded:
        out = official.decode_prompts(memories, mask_features, bank, *queries)
    else:
        out = official.decode_queries(
            memories, mask_features, bank, *queries, prompt_mode=True
        )[-1]
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


def test_video_tubes_and_their_alignment_match_the_official_model(official):
    meta = json.loads((GOLDEN / "video_golden.json").read_text())
    golden = load_npz("video_golden.npz")
    frames = [read_rgb(GOLDEN / "video" / f"frame_{i:02d}.png") for i in range(meta["frames"])]
    prepared = [prepare_image(f, scale=VIDEO_SCALE) for f in frames]
    assert prepared[0].resized_hw == tuple(meta["resized_hw"])
    assert prepared[0].padded_hw == tuple(meta["batch_input_hw"])
    bank = torch.from_numpy(np.load(GOLDEN / "vocab.npy")[:40])  # YouTube-VIS: 40 things
    tubes = video_split(len(frames))
    assert [end - start for start, end in tubes] == meta["tube_frames"]

    embeddings = []
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
        embeddings.append(query)

    perms = align_clips(embeddings)
    np.testing.assert_array_equal(perms[1], golden["match1"])
    # the VIS scores / labels / masks and VOS maps of the whole video: through VideoSession on
    # this model and on its exported graphs (tests/omg_rt/test_official_runtime.py)
