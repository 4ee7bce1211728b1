"""Panoptic post-processing on a PyTorch device (``omg_rt.postprocess.device``) against the host
path, its reference: the same resize, the same per-pixel winners except where two queries'
``score * sigmoid`` agree to rounding (torch's resize and sigmoid round differently from numpy's
and SciPy's by an ulp or two), the same panoptic maps. On the CPU every run (torch's CPU device
runs the same code as CUDA), on CUDA where there is one. Fresh random inputs every run (the seed is
in each message)."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess import device as device_module
from omg_rt.postprocess._common import softmax
from omg_rt.postprocess.device import DeviceLogits, resolve_post_device
from omg_rt.postprocess.instance import (
    instances_from_tiles,
    masks_to_boxes,
    select_instances,
)
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import _assign_pixels, panoptic_from_tiles, panoptic_results
from omg_rt.postprocess.semantic import semantic_from_tiles, semantic_with_scores
from omg_rt.postprocess.tiles import TiledLogits
from tests.omg_rt.test_postprocess_fast import RESIZES, SMALL, _rng, random_weight_logits

torch = pytest.importorskip("torch")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# |device - host| / max |host| of the resized logits: float32 interpolation weights computed
# in another order.
RESIZE_RTOL = 1e-6
# Values closer than this (relative) are a tie that rounding may break either way.
TIE_RTOL = 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", RESIZES)
def test_the_device_resize_is_the_host_resize(device, sizes):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    logits = (rng.standard_normal((5, *h4w4)) * 10.0 ** rng.uniform(-1, 3)).astype(np.float32)
    want = upsample_masks(logits, padded, resized, original)
    got = DeviceLogits(logits, padded, resized, original, device).dense(np.array([3, 0, 4]))
    got = got.cpu().numpy()
    assert got.shape == want[[3, 0, 4]].shape, seed
    error = np.abs(got - want[[3, 0, 4]]).max() / np.abs(want).max()
    assert error <= RESIZE_RTOL, (seed, error)


def _assert_same_assignment(got, want, full, scores, seed):
    """``got`` equals ``want`` (host reference of ``full`` (N, H, W) logits) but at near-ties."""
    (winner, confident, area), (winner0, confident0, area0) = got, want
    values = torch.sigmoid(torch.from_numpy(full)).numpy() * scores[:, None, None]
    rows, cols = np.nonzero(winner != winner0)
    mine = values[winner[rows, cols], rows, cols]
    theirs = values[winner0[rows, cols], rows, cols]
    assert np.all(np.abs(mine - theirs) <= TIE_RTOL * np.abs(theirs)), (seed, rows.size)
    assert rows.size <= winner.size // 1000, (seed, rows.size)
    same = winner == winner0
    np.testing.assert_array_equal(confident[same], confident0[same], err_msg=str(seed))
    near_zero = (np.abs(full) <= 1e-5 * np.abs(full).max()).sum((1, 2))
    assert np.all(np.abs(area - area0) <= near_zero), seed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocks", [1, 3])
def test_the_device_assignment_is_the_host_assignment(device, blocks, monkeypatch):
    # Random-weight outputs: every query kept, near-identical masks, so most pixels are
    # contested; in several query blocks, a later block takes a pixel only with a larger value.
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    _, logits = random_weight_logits(rng, 60, 20, h4w4)
    kept = np.sort(rng.choice(60, 45, replace=False))
    scores = rng.uniform(0.05, 0.2, 45).astype(np.float32)
    monkeypatch.setattr(device_module, "_BLOCK_ELEMENTS", padded[0] * padded[1] * 45 // blocks)
    full = upsample_masks(logits[kept], padded, resized, original)
    want = _assign_pixels(full, scores)
    got = DeviceLogits(logits, padded, resized, original, device).assign(kept, scores)
    assert [a.dtype for a in got] == [np.int64, np.bool_, np.int64], seed
    _assert_same_assignment(got, want, full, scores, seed)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_first_query_and_a_nan_wins_across_blocks(device, monkeypatch):
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    logits = rng.standard_normal((4, *h4w4)).astype(np.float32)
    logits[2] = logits[0]  # same value as query 0 everywhere, in a later block
    logits[3, 10, 20] = np.nan  # the last query, the lowest score, wins where it is NaN
    scores = np.array([0.5, 0.1, 0.5, 0.01], np.float32)
    monkeypatch.setattr(device_module, "_BLOCK_ELEMENTS", padded[0] * padded[1] * 2)
    full = upsample_masks(logits, padded, resized, original)
    winner0, *_ = _assign_pixels(full, scores)
    winner, confident, area = DeviceLogits(logits, padded, resized, original, device).assign(
        np.arange(4), scores)
    assert not (winner == 2).any(), seed  # query 0 won every tie with its copy
    nan = np.isnan(full[3])
    assert nan.any() and (winner[nan] == 3).all() and (winner0[nan] == 3).all(), seed


@pytest.mark.parametrize("device", DEVICES)
def test_panoptic_on_the_device_equals_the_host_panoptic(device):
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 300, 240, h4w4)
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 139)
    got = panoptic_from_tiles(cls, DeviceLogits(logits, padded, resized, original, device), 139)
    agree = (got.id_map == want.id_map).mean()
    assert agree >= 0.999, (seed, agree)
    assert [s["id"] for s in got.segments] == [s["id"] for s in want.segments], seed
    for a, b in zip(got.segments, want.segments):
        assert abs(a["area"] - b["area"]) <= 0.001 * got.id_map.size, seed



@pytest.mark.parametrize("device", DEVICES)
def test_instances_on_the_device_equal_the_host_instances(device, monkeypatch):
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 300, 240, h4w4)
    logits[7] = 60.0  # saturated sigmoid everywhere; and empty masks
    logits[8] = -5.0
    cls[[7, 8], 3] = 9.0
    monkeypatch.setattr(device_module, "_BLOCK_ELEMENTS", padded[0] * padded[1] * 7)
    probs, labels, queries = select_instances(cls, 139)
    assert {7, 8} <= set(queries.tolist()), seed
    want = instances_from_tiles(probs, labels, queries, TiledLogits(logits, *SMALL[1:]))
    got = instances_from_tiles(probs, labels, queries,
                               DeviceLogits(logits, *SMALL[1:], device))
    np.testing.assert_array_equal(got.query_indices, want.query_indices, err_msg=str(seed))
    np.testing.assert_array_equal(got.labels, want.labels, err_msg=str(seed))
    full = upsample_masks(logits[queries], padded, resized, original)
    near_zero = (np.abs(full) <= 1e-5 * np.abs(full).max()).sum((1, 2))
    assert np.all((got.masks != want.masks).sum((1, 2)) <= near_zero), seed
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, err_msg=str(seed))
    exact = (got.masks == want.masks).all((1, 2))
    np.testing.assert_array_equal(got.boxes[exact], want.boxes[exact], err_msg=str(seed))
    # areas and boxes computed on the device are those of the masks it returned (empty: zeros)
    np.testing.assert_array_equal(got.boxes, masks_to_boxes(got.masks), err_msg=str(seed))
    empty = ~got.masks.any((1, 2))
    assert empty.any() and (got.boxes[empty] == 0).all(), seed



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocks", [1, 4])
def test_semantic_on_the_device_equals_the_host_semantic(device, blocks, monkeypatch):
    """The class map and scores against the host's (``semantic_with_scores``), in several
    blocks of queries and one or several blocks of classes; the map agrees wherever the best two classes'
    scores (float64 reference) are not within rounding of each other."""
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 60, 20, h4w4)
    cls[:, 3] += 2.0  # one class wins much of the image, others the rest
    logits[5] = np.nan  # a NaN query: NaN scores everywhere it reads, the first class wins
    logits[5, : h4w4[0] // 2] = -30.0
    pixels = original[0] * original[1]
    monkeypatch.setattr(device_module, "_BLOCK_ELEMENTS", max(padded[0] * padded[1], pixels)
                        * 60 // blocks // 3)
    full = upsample_masks(logits, padded, resized, original)
    want_map, want_scores = semantic_with_scores(cls, full)
    got_map, got_scores = semantic_from_tiles(cls, DeviceLogits(logits, padded, resized,
                                                                original, device))
    assert got_map.dtype == np.int32 and got_scores.dtype == np.float32, seed
    probs = softmax(cls.astype(np.float64))[:, :-1]
    per_class = np.einsum("qc,qhw->chw", probs, 1.0 / (1.0 + np.exp(-full.astype(np.float64))))
    nan = np.isnan(per_class).any(0)  # every class NaN there: the first class wins
    top2 = np.sort(np.where(nan, 0.0, per_class), axis=0)[-2:]
    near = top2[1] - top2[0] <= TIE_RTOL * top2[1]
    assert nan.any() and (~nan).any() and not near[~nan].all(), seed
    np.testing.assert_array_equal(got_map[~near], want_map[~near], err_msg=str(seed))
    np.testing.assert_array_equal(got_map[nan], want_map[nan], err_msg=str(seed))
    same = [c for c in range(20) if ((got_map == c) == (want_map == c)).all()]
    assert len(np.unique(want_map)) > 1, seed
    np.testing.assert_allclose(got_scores[same], want_scores[same], rtol=1e-4,
                               err_msg=str(seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes", RESIZES)
def test_prompt_masks_on_the_device_equal_the_host_masks(device, sizes, monkeypatch):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    logits = (rng.standard_normal((5, *h4w4)) * 3).astype(np.float32)
    logits[3] = -4.0  # an empty mask
    iou = rng.standard_normal(5).astype(np.float32)
    monkeypatch.setattr(device_module, "_BLOCK_ELEMENTS", padded[0] * padded[1] * 2)  # 3 blocks
    want = prompt_results(logits, iou, padded, resized, original)
    for given in (logits, torch.from_numpy(logits).to(device)):  # host or device-resident
        got = prompt_results(given, iou, padded, resized, original, device=device)
        full = upsample_masks(logits, padded, resized, original)
        near = (np.abs(full) <= 1e-5 * np.abs(full).max()).sum((1, 2))
        assert np.all((got.masks != want.masks).sum((1, 2)) <= near), seed
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.boxes is not None and not got.masks[3].any(), seed
        np.testing.assert_array_equal(got.boxes, masks_to_boxes(got.masks), err_msg=str(seed))


@pytest.mark.parametrize("device", DEVICES)
def test_bool_masks_are_packed_as_numpy_packs_them(device):
    rng = np.random.default_rng()
    for width in (1, 7, 8, 9, 17, 64):
        values = rng.random((3, 5, width)) < 0.4
        got = device_module._pack_bits(torch, torch.from_numpy(values).to(device)).cpu().numpy()
        np.testing.assert_array_equal(got, np.packbits(values, axis=-1), err_msg=str(width))


@pytest.mark.parametrize("device", DEVICES)
def test_no_queries_give_empty_masks_of_the_image_size(device):
    logits = np.zeros((4, 8, 10), np.float32)
    on_device = DeviceLogits(logits, (32, 40), (30, 40), (45, 60), device)
    none = np.empty(0, np.int64)
    masks, sums, areas, boxes = on_device.instance_masks(none)
    assert masks.shape == (0, 45, 60) and masks.dtype == bool
    assert sums.shape == areas.shape == (0,) and boxes.shape == (0, 4)
    masks, boxes = on_device.binary_masks(none)
    assert masks.shape == (0, 45, 60) and boxes.shape == (0, 4) and boxes.dtype == np.float32


@pytest.mark.gpu
def test_on_cuda_a_segmenter_post_processes_there_as_the_host_does():
    from omg_rt import Segmenter
    from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, merging_model, scene

    model = merging_model()
    gpu = Segmenter.from_checkpoint(model, vocabulary=NAMES, num_things=NUM_THINGS,
                                    device="cuda")
    host = Segmenter.from_checkpoint(model, vocabulary=NAMES, num_things=NUM_THINGS,
                                     device="cuda", post_device=None)
    assert gpu.backend.on_gpu and gpu.post_device == "cuda" and host.post_device is None
    image = scene(3, (100, 140))
    want, got = host.panoptic(image), gpu.panoptic(image)
    assert want.ids.size > 0 and got.ids.tolist() == want.ids.tolist()
    assert (got.id_map == want.id_map).mean() >= 0.999
    want, got = host.instances(image), gpu.instances(image)
    assert want.ids.size > 0 and got.labels.tolist() == want.labels.tolist()
    assert (got.masks != want.masks).mean() <= 1e-3
    want, got = host.semantic(image), gpu.semantic(image)
    assert want.ids.size > 0 and got.ids.tolist() == want.ids.tolist()
    assert (got.id_map == want.id_map).mean() >= 0.999


def test_post_device_resolution():
    cuda = torch.cuda.is_available()
    assert resolve_post_device(None, True) is None
    assert resolve_post_device("auto", False) is None  # graphs on the CPU: the host's tiles
    assert resolve_post_device("auto", True) == ("cuda" if cuda else None)
    assert resolve_post_device("cpu", False) == "cpu"
    with pytest.raises(InvalidInputError, match="post_device"):
        resolve_post_device("gpu-please", False)
    if not cuda:
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            resolve_post_device("cuda", True)
    else:
        with pytest.raises(InvalidInputError, match="CUDA device"):
            resolve_post_device(f"cuda:{torch.cuda.device_count()}", True)


def test_a_segmenter_post_processes_images_and_video_on_its_post_device(tmp_path):
    from omg_rt import Segmenter
    from tests.omg_rt.test_runtime_support import merging_bundle, moving_clip, scene

    bundle = merging_bundle(tmp_path / "bundle")  # its random weights keep segments
    host = Segmenter.from_bundle(bundle, backend="onnxruntime", post_device=None)
    torch_cpu = Segmenter.from_bundle(bundle, backend="onnxruntime", post_device="cpu")
    assert host.post_device is None and torch_cpu.post_device == "cpu"
    assert not torch_cpu.backend.on_gpu  # so "auto" keeps the host path here
    assert Segmenter.from_bundle(bundle, backend="onnxruntime").post_device is None
    image = scene(7, (90, 130))
    want, got = host.panoptic(image), torch_cpu.panoptic(image)
    assert want.ids.size > 0 and (want.id_map >= 0).any()  # something to compare
    assert (got.id_map == want.id_map).mean() >= 0.999
    assert got.ids.tolist() == want.ids.tolist() and got.labels.tolist() == want.labels.tolist()
    want, got = host.instances(image), torch_cpu.instances(image)
    assert want.ids.size > 0 and got.labels.tolist() == want.labels.tolist()
    assert (got.masks != want.masks).mean() <= 1e-3
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)
    want, got = host.semantic(image), torch_cpu.semantic(image)
    assert want.ids.size > 0 and got.ids.tolist() == want.ids.tolist()
    assert (got.id_map == want.id_map).mean() >= 0.999
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4)
    clip = moving_clip(4)
    for task in ("vps", "vis", "vss"):
        want_video = host.open_video(task, clip_size=2).run(clip)
        got_video = torch_cpu.open_video(task, clip_size=2).run(clip)
        assert len(got_video) == len(want_video) == 4
        assert any(r.ids.size for r in want_video), task
        for a, b in zip(got_video, want_video):
            assert a.frame_index == b.frame_index and a.ids.tolist() == b.ids.tolist(), task
            assert (a.masks != b.masks).mean() <= 1e-3, task
