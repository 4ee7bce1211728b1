"""What users run — an ``omg-export`` bundle behind ``omg_rt.Segmenter`` on ONNX Runtime FP32 —
against the official OMG-Seg's own outputs on identical deterministic weights
(../shared/fixtures/official_golden, README there), at the image's own shape (keep-ratio resize,
padding to a multiple of 32; no square). Every size, prompt and frame count comes from the
fixture files. The same tolerances as the PyTorch golden tests (tests/training).

The whole-video VIS and VOS goldens also run on the PyTorch model behind the same runtime
(``backend="torch"``): the streaming ``VideoSession`` users run is what proves both.

The bundle is exported once per test session (``tests.official_golden.official_bundle``: the
ConvNeXt-L graphs, a few minutes on 2 cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omg_rt import Segmenter
from omg_rt.postprocess.video import video_split
from omg_rt.preprocess import keep_ratio_size
from tests.official_golden import (
    DEMO_NUM_THINGS,
    GOLDEN,
    PIXEL_AGREEMENT,
    RTOL,
    agreement,
    assert_per_query_close,
    load_npz,
    official_bundle,
    read_rgb,
    relative_error,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not GOLDEN.exists(), reason=f"official fixtures not found at {GOLDEN}"),
]


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return np.ascontiguousarray(np.load(GOLDEN / "vocab.npy"), dtype=np.float32)


@pytest.fixture(scope="module")
def seg(bank):
    segmenter = Segmenter.from_bundle(official_bundle(), backend="onnxruntime", threads=2)
    names = [f"class {i}" for i in range(bank.shape[0])]
    segmenter.set_class_bank(names, bank, num_things=DEMO_NUM_THINGS, ensemble=False)
    yield segmenter
    segmenter.close()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_rgb(GOLDEN / "image.png")


@pytest.fixture(scope="module")
def session(seg, image):
    return seg.set_image(image)


def _official_id_map(result, void: int) -> np.ndarray:
    return np.where(result.id_map < 0, void, result.id_map)


def test_these_goldens_run_the_fused_decoders_where_their_operators_build(seg):
    # every golden of this module then checks omg-rt's deformable-attention and masked-attention
    # operators on the real model (omg_rt.backends.ort_ops); without a C compiler they check
    # the portable graphs
    from omg_rt.backends import ort_ops
    from omg_rt.errors import BackendUnavailableError

    try:
        ort_ops.library()
    except BackendUnavailableError as exc:
        pytest.skip(f"the portable decoders run here: {exc}")
    for graph in ("pixel_decoder", "query_decoder"):
        assert seg.pipeline.runners[graph].backend.name.endswith("+omg-ops"), graph


def test_the_image_is_encoded_at_its_own_padded_shape_not_a_square(meta, session):
    golden = load_npz("golden.npz")
    assert session.original_hw == tuple(meta["input_hw"])
    assert session.resized_hw == tuple(meta["resized_hw"])
    h4, w4 = golden["mask_logits_q16"].shape[-2:]
    assert session.padded_hw == (4 * h4, 4 * w4)  # the official batch_input_shape
    assert session.encoded.mask_features.shape[-2:] == (h4, w4)


def test_image_logits_match_the_official_model(seg, session):
    golden = load_npz("golden.npz")
    p = seg.predict(session)
    cls = np.concatenate([p.class_scores, p.iou_logits[:, None]], -1)
    assert_per_query_close(cls, golden["cls_scores"])
    masks = p.mask_logits[:, 0]
    n = golden["mask_logits_q16"].shape[0]
    assert_per_query_close(masks[:n], golden["mask_logits_q16"])
    assert_per_query_close(masks.reshape(len(masks), -1).sum(1)[:, None],
                           golden["mask_logits_sum"][:, None])
    assert_per_query_close(p.query_embeddings, golden["query_feat"])


def test_panoptic_map_matches_the_official_model(seg, session, bank):
    result = seg.panoptic(session)
    official = load_npz("golden.npz")["panoptic"]
    assert agreement(_official_id_map(result, bank.shape[0]), official) >= PIXEL_AGREEMENT


def test_post_processing_on_a_device_gives_the_hosts_results_on_the_real_model(seg, session, bank):
    # What Segmenter does on a GPU (post_device), here on torch's CPU device: ConvNeXt-L's own
    # outputs at the photo's non-square padded shape, every step of the official resize.
    pytest.importorskip("torch")
    from omg_rt.assembly import instance_result, panoptic_result

    p = seg.predict(session)
    args = (session, p.class_scores, p.mask_logits[:, 0], p.vocabulary, seg.spec.postprocess)
    host, device = panoptic_result(*args), panoptic_result(*args, device="cpu")
    assert device.ids.tolist() == host.ids.tolist()
    assert (device.id_map == host.id_map).mean() >= 0.999
    official = load_npz("golden.npz")["panoptic"]
    assert agreement(_official_id_map(device, bank.shape[0]), official) >= PIXEL_AGREEMENT
    host, device = instance_result(*args), instance_result(*args, device="cpu")
    assert host.ids.size > 0 and device.labels.tolist() == host.labels.tolist()
    assert (device.masks != host.masks).mean() <= 1e-3
    np.testing.assert_allclose(device.scores, host.scores, rtol=1e-4)
    np.testing.assert_array_equal(device.boxes[(device.masks == host.masks).all((1, 2))],
                                  host.boxes[(device.masks == host.masks).all((1, 2))])


def _to_original(xy: np.ndarray, session) -> np.ndarray:
    """Resized-image pixels (the fixture's prompts) -> the user's original-image pixels."""
    (h, w), (hr, wr) = session.original_hw, session.resized_hw
    scale = np.array([w / wr, h / hr] * (xy.shape[-1] // 2), np.float64)
    return (xy.astype(np.float64) * scale).astype(np.float32)


@pytest.mark.parametrize("fixture", ["golden_prompt.npz", "golden_points.npz"])
def test_box_and_click_prompts_match_the_official_model(seg, session, fixture):
    golden = load_npz(fixture)
    if "boxes" in golden:
        official_boxes = golden["boxes"]
        prompts = {"boxes": _to_original(official_boxes, session)}
    else:  # the official point evaluation: a click is the box [x - 3, y - 3, x + 3, y + 3]
        points = golden["points"]
        official_boxes = np.concatenate([points - 3, points + 3], -1)
        prompts = {"points": _to_original(points, session)}
    boxes = seg.prompt_boxes(session, **prompts)
    np.testing.assert_allclose(boxes, official_boxes, atol=1e-3)
    result = seg.prompt(session, **prompts)
    assert agreement(result.masks, golden["final_masks"]) >= PIXEL_AGREEMENT
    # the logits behind them, through the same graphs
    content, position = seg.pipeline.prompt_queries(boxes, session.resized_hw)
    out = seg.pipeline.decode([session.encoded], content, position, True,
                              seg.vocabulary.class_bank)
    cls = np.concatenate([out["class_logits"][0], out["iou_logits"][0][:, None]], -1)
    assert relative_error(cls, golden["cls_scores"]) <= RTOL
    assert relative_error(out["mask_logits"][0, :, 0], golden["mask_logits"]) <= RTOL


def test_open_vocabulary_ensemble_matches_the_official_model(seg, session, bank):
    golden = load_npz("golden_ov.npz")
    names = list(seg.vocabulary.names)
    try:
        seg.set_class_bank(names, bank, num_things=DEMO_NUM_THINGS,
                           seen=golden["seen"].astype(bool), ensemble=True)
        p = seg.predict(session)
        assert_per_query_close(p.class_scores, golden["ov_cls"])
        result = seg.panoptic(session)
    finally:
        seg.set_class_bank(names, bank, num_things=DEMO_NUM_THINGS, ensemble=False)
    assert agreement(_official_id_map(result, bank.shape[0]), golden["panoptic"]) >= \
        PIXEL_AGREEMENT


@pytest.fixture(scope="module")
def video_meta() -> dict:
    return json.loads((GOLDEN / "video_golden.json").read_text())


@pytest.fixture(scope="module")
def frames(video_meta) -> list[np.ndarray]:
    return [read_rgb(GOLDEN / "video" / f"frame_{i:02d}.png") for i in range(video_meta["frames"])]


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def video_seg(request, bank, tmp_path_factory):
    """The YouTube-VIS setting (the first 40 classes, all things) on the exported graphs and on
    the PyTorch model itself: the same ``VideoSession`` post-processing behind both."""
    if request.param == "torch":
        from tests.official_golden import write_official_files
        from training.model.checkpoint import load_checkpoint, save_checkpoint

        work = tmp_path_factory.mktemp("official-torch")
        decoder, visual = write_official_files(work)
        model, _ = load_checkpoint(decoder, backbone_weights=visual)
        checkpoint = save_checkpoint(model, work / "checkpoint")
        del model
        segmenter = Segmenter.from_bundle(official_bundle(), backend="torch",
                                          checkpoint=checkpoint, device="cpu")
    else:
        segmenter = Segmenter.from_bundle(official_bundle(), backend="onnxruntime", threads=2)
    segmenter.set_class_bank([f"class {i}" for i in range(40)], bank[:40], num_things=40,
                             ensemble=False)
    yield segmenter
    segmenter.close()


def test_video_frames_use_the_official_video_scale_and_tubes(video_seg, video_meta, frames):
    contract = video_seg.input_contract
    resized = keep_ratio_size(frames[0].shape[:2], contract.video_scale)
    assert resized == tuple(video_meta["resized_hw"])
    session = video_seg.open_video("vis", num_frames=len(frames), whole_video=True)
    assert list(session.clip_sizes) == video_meta["tube_frames"]
    spec = video_seg.spec.postprocess
    assert [e - s for s, e in video_split(len(frames), spec.clip_size, spec.clip_size_small,
                                          spec.small_clip_threshold)] == video_meta["tube_frames"]


def test_whole_video_vis_through_the_video_session_matches_the_official_model(video_seg, frames):
    golden = load_npz("video_golden.npz")
    session = video_seg.open_video("vis", num_frames=len(frames), whole_video=True)
    results = session.run(frames)
    assert len(results) == len(frames)
    for f, frame in enumerate(results):
        assert frame.frame_index == f
        np.testing.assert_array_equal(frame.labels, golden[f"vis_labels{f}"])
        assert relative_error(frame.scores, golden[f"vis_scores{f}"]) <= RTOL
        top = golden[f"vis_top10_masks{f}"]
        order = np.argsort(-frame.scores, kind="stable")[: top.shape[0]]
        assert agreement(frame.masks[order], top) >= PIXEL_AGREEMENT


def test_whole_video_vos_through_the_video_session_matches_the_official_model(video_seg, frames):
    golden = load_npz("video_golden.npz")
    first = golden["vos_first_masks"].astype(bool)
    session = video_seg.open_video("vos", first_mask=first, num_frames=len(frames),
                                   whole_video=True)
    maps = np.stack([r.id_map for r in session.run(frames)])
    assert agreement(maps, golden["vos_maps"]) >= PIXEL_AGREEMENT
