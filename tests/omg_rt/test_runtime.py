"""The runtime end to end on the tiny bundle: parity of ONNX Runtime with the PyTorch reference for
every task, the encoder cache, prompt grouping, the scheduler, video sessions, typed errors, and
a torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from omg_rt.cache import EncoderCache
from omg_rt.errors import (
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    QueueFullError,
)
from omg_rt.scheduler import Scheduler
from omg_rt.segmenter import Segmenter
from tests.conftest import REPO
from tests.omg_rt.test_runtime_support import (
    NAMES,
    NUM_THINGS,
    copy_bundle,
    moving_clip,
    scene,
    tiny_bundle,
    tiny_checkpoint,
)

# ORT vs PyTorch on the same weights: float32 graphs, so masks may differ only where a logit sits
# within rounding of the threshold.
MASK_MISMATCH = 1e-3
SCORE_ATOL = 1e-4


@pytest.fixture(scope="module")
def ort() -> Segmenter:
    return Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime")


@pytest.fixture(scope="module")
def ref() -> Segmenter:
    return Segmenter.from_bundle(tiny_bundle(), backend="torch", checkpoint=tiny_checkpoint())


def _assert_same(a, b, what: str) -> None:
    assert a.task == b.task
    assert a.masks.shape == b.masks.shape, f"{what}: {a.masks.shape} vs {b.masks.shape}"
    mismatch = float((a.masks != b.masks).mean()) if a.masks.size else 0.0
    assert mismatch <= MASK_MISMATCH, f"{what}: {mismatch:.2e} of mask pixels differ"
    np.testing.assert_allclose(a.scores, b.scores, atol=SCORE_ATOL, err_msg=what)
    np.testing.assert_array_equal(a.labels, b.labels, err_msg=what)
    np.testing.assert_array_equal(a.ids, b.ids, err_msg=what)


# ---------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_image_tasks_match_the_pytorch_reference(ort, ref, task):
    for seed in (1, 2):
        image = scene(seed)
        _assert_same(ort.segment(image, task), ref.segment(image, task), f"{task} seed {seed}")


def test_instances_are_not_degenerate_so_parity_means_something(ort):
    result = ort.instances(scene(1))
    assert len(result) > 10
    assert len(np.unique(result.labels)) > 1


def test_prompts_match_the_pytorch_reference(ort, ref):
    image = scene(3)
    prompts = dict(points=[[10, 20], [100, 60]], boxes=[[5, 5, 60, 50], [40, 30, 119, 95]])
    a, b = ort.prompt(image, **prompts), ref.prompt(image, **prompts)
    assert len(a) == 4
    _assert_same(a, b, "prompt")


def test_open_vocabulary_ensemble_matches_the_pytorch_reference():
    names = ["zebra", "person", "tree,trees", "road"]
    results = []
    for seg in (
        Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime"),
        Segmenter.from_bundle(tiny_bundle(), backend="torch", checkpoint=tiny_checkpoint()),
    ):
        vocabulary = seg.set_vocabulary(names, num_things=2)
        assert seg.ensemble  # "zebra" is not a training class
        np.testing.assert_array_equal(vocabulary.seen, [False, True, False, False])
        results.append((vocabulary.class_bank, seg.instances(scene(4)), seg.panoptic(scene(4))))
    (bank_a, inst_a, pan_a), (bank_b, inst_b, pan_b) = results
    np.testing.assert_allclose(bank_a, bank_b, atol=1e-5)
    assert bank_a.shape[:2] == (4, 2)
    np.testing.assert_allclose(np.linalg.norm(bank_a, axis=-1), 1.0, atol=1e-5)
    _assert_same(inst_a, inst_b, "ov instances")
    _assert_same(pan_a, pan_b, "ov panoptic")


@pytest.mark.parametrize("task", ["vis", "vps", "vss"])
def test_video_tasks_match_the_pytorch_reference(ort, ref, task):
    clip = moving_clip(7)
    outs = []
    for seg in (ort, ref):
        session = seg.open_video(task, clip_size=3)
        results = [r for frame in clip for r in session.step(frame)] + session.finish()
        outs.append(results)
    assert [r.frame_index for r in outs[0]] == list(range(7))
    for a, b in zip(*outs, strict=True):
        _assert_same(a, b, f"{task} frame {a.frame_index}")


def test_vos_matches_the_pytorch_reference(ort, ref):
    clip = moving_clip(6)
    first = np.zeros(clip[0].shape[:2], np.int32)
    first[20:50, 5:35] = 7
    first[55:75, 80:105] = 9
    outs = []
    for seg in (ort, ref):
        session = seg.open_video("vos", first_mask=first, clip_size=3)
        outs.append([r for frame in clip for r in session.step(frame)] + session.finish())
    # run() is the same stream in one call, frame by frame in order
    again = ort.open_video("vos", first_mask=first, clip_size=3).run(clip)
    assert [r.frame_index for r in again] == list(range(len(clip)))
    for a, b in zip(again, outs[0], strict=True):
        np.testing.assert_array_equal(a.id_map, b.id_map)
    for a, b in zip(*outs, strict=True):
        _assert_same(a, b, f"vos frame {a.frame_index}")
        assert set(a.ids.tolist()) <= {7, 9}
        np.testing.assert_array_equal(a.id_map, b.id_map)


def test_torch_backend_runtime_equals_the_model_called_directly(ref):
    """The runtime's glue (preprocess, queries, decoding, post-processing) against a plain
    forward pass of the model and the post-processing functions."""
    import torch

    from omg_rt.postprocess.masks import upsample_masks
    from omg_rt.postprocess.panoptic import panoptic_results
    from training.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint())
    image = scene(5)
    handle = ref.set_image(image)
    tensor = ref.image_encoder.tensor(ref.image_encoder.prepare(image, "image"))
    with torch.no_grad():
        pred = model(torch.from_numpy(tensor), torch.from_numpy(ref.vocabulary.class_bank.copy()))[-1]
    logits = upsample_masks(
        pred.mask_logits[0, :, 0].numpy(), handle.padded_hw, handle.resized_hw, handle.original_hw
    )
    expected = panoptic_results(pred.class_logits[0].numpy(), logits, NUM_THINGS)
    got = ref.panoptic(handle)
    assert [s["id"] for s in expected.segments] == got.ids.tolist()
    void = len(NAMES)
    np.testing.assert_array_equal(np.where(expected.id_map == void, -1, expected.id_map), got.id_map)


@pytest.mark.parametrize("hw", [(60, 120), (150, 70), (33, 200), (128, 128), (20, 24)])
def test_images_are_encoded_at_their_own_shape_as_the_official_preprocessing(ort, ref, hw):
    """Keep-ratio resize into the image scale, zero padding only to a multiple of 32 (no square):
    the encoder input equals ``omg_rt.preprocess.prepare_image`` (the official pipeline), and
    ONNX Runtime matches PyTorch at that shape."""
    from omg_rt.preprocess import prepare_image

    image = scene(11, hw=(max(hw[0], 24), max(hw[1], 24)))[: hw[0], : hw[1]].copy()
    contract = ort.input_contract
    official = prepare_image(image, contract.image_scale)
    session = ort.set_image(image)
    assert session.resized_hw == official.resized_hw
    assert session.padded_hw == official.padded_hw
    assert session.encoded.mask_features.shape[-2:] == (official.padded_hw[0] // 4,
                                                         official.padded_hw[1] // 4)
    tensor = ort.image_encoder.tensor(ort.image_encoder.prepare(image, "image"))
    np.testing.assert_array_equal(tensor, official.tensor)
    _assert_same(ort.panoptic(session), ref.panoptic(image), f"panoptic {hw}")
    box = [[2, 2, hw[1] - 3, hw[0] - 3]]
    _assert_same(ort.prompt(session, boxes=box), ref.prompt(image, boxes=box), f"prompt {hw}")


def test_video_frames_use_the_video_scale_and_one_size_per_stream(ort):
    from omg_rt.preprocess import keep_ratio_size

    clip = moving_clip(2, hw=(90, 160))
    session = ort.open_video("vis", clip_size=2)
    results = session.run(clip)
    frame = ort.image_encoder.frame_session(clip[0], "frame")
    assert frame.resized_hw == keep_ratio_size((90, 160), ort.input_contract.video_scale)
    assert results[0].masks.shape[1:] == (90, 160)
    stream = ort.open_video("vis", clip_size=2)
    stream.step(clip[0])
    with pytest.raises(InvalidInputError, match=r"frame 1: expected the stream's frame size"):
        stream.step(np.zeros((64, 64, 3), np.uint8))
    assert len(stream.step(clip[1])) == 2  # the session keeps serving


def test_a_known_frame_count_cuts_tubes_as_the_official_video_split(ort):
    session = ort.open_video("vis", clip_size=3, num_frames=7)
    assert session.clip_sizes == (3, 2, 2)
    results = [len(session.step(f)) for f in moving_clip(7)]
    assert results == [0, 0, 3, 0, 2, 0, 2]
    with pytest.raises(InvalidInputError, match="opened for 7 frames"):
        session.step(moving_clip(1)[0])
    assert session.finish() == []


def test_whole_video_results_average_every_clip_and_come_at_finish(ort):
    clip = moving_clip(6)
    stream = ort.open_video("vss", clip_size=3).run(clip)
    session = ort.open_video("vss", clip_size=3, whole_video=True)
    assert [len(session.step(f)) for f in clip] == [0] * 6
    whole = session.finish()
    assert [r.frame_index for r in whole] == list(range(6))
    # the last clip's frames see the same average in both modes; the first clip's do not
    for a, b in zip(whole[3:], stream[3:], strict=True):
        np.testing.assert_array_equal(a.id_map, b.id_map)
    assert session.decoded == [] and session.memory_bytes < 1000  # released at finish


# ---------------------------------------------------------------- encoder cache


def test_cache_skips_the_encoder_for_every_reuse():
    seg = Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime")
    image = scene(6)
    handle = seg.set_image(image)
    seg.panoptic(handle)
    seg.instances(image)  # raw image again: a cache hit, not a second encoding
    seg.semantic(image.copy())
    seg.prompt(handle, points=[[30, 30]])
    seg.set_vocabulary(["person", "zebra"])
    seg.panoptic(image)
    calls = seg.graph_calls()
    assert calls["encoder"] == 1 and calls["pixel_decoder"] == 1
    assert calls["query_decoder"] == 4 and calls["prompt_decoder"] == 1
    stats = seg.cache.stats()
    assert (stats.misses, stats.hits, stats.entries) == (1, 3, 1)
    seg.panoptic(scene(7))
    assert seg.graph_calls()["encoder"] == 2


def test_cache_respects_its_byte_bound_and_evicts_least_recently_used():
    probe = Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime")
    entry = probe.set_image(scene(0)).encoded.nbytes
    bound = int(2.5 * entry)
    seg = Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime", cache_bytes=bound)
    images = [scene(10 + i) for i in range(5)]
    for image in images:
        seg.set_image(image)
        assert seg.cache.stats().bytes <= bound
    stats = seg.cache.stats()
    assert (stats.entries, stats.evictions, stats.bytes) == (2, 3, 2 * entry)
    seg.set_image(images[4])  # most recent: still there
    seg.set_image(images[0])  # evicted long ago: encoded again
    assert seg.graph_calls()["encoder"] == 6


def test_cache_is_thread_safe_under_concurrent_puts_and_gets():
    from concurrent.futures import ThreadPoolExecutor

    from omg_rt.cache import EncodedImage

    def entry(i: int) -> EncodedImage:
        a = np.full((1, 4, 8, 8), i, np.float32)
        return EncodedImage(a, a, a, a, a)

    size = entry(0).nbytes
    cache = EncoderCache(max_bytes=10 * size)

    def work(i: int) -> None:
        for j in range(200):
            cache.put((i, j % 15), entry(j))
            cache.get((i, (j * 7) % 15))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    stats = cache.stats()
    assert stats.bytes == stats.entries * size <= 10 * size
    assert stats.hits + stats.misses == 800


# ---------------------------------------------------------------- prompts and the scheduler


def test_grouped_prompts_equal_one_by_one_prompts(ort):
    image = scene(8)
    requests = [
        dict(points=[[10, 10]]),
        dict(boxes=[[20, 20, 90, 70]]),
        dict(points=[[60, 40], [100, 80]], boxes=[[0, 0, 119, 95]]),
        dict(points=[[5, 90]]),
    ]
    alone = [ort.prompt(image, **r) for r in requests]
    scheduler = Scheduler(ort, start=False)
    futures = [scheduler.submit_prompt(image, **r) for r in requests]
    scheduler.start()
    grouped = [f.result(timeout=60) for f in futures]
    scheduler.close()
    assert scheduler.stats.prompt_calls == 1
    assert scheduler.stats.largest_prompt_group == 4
    for a, b in zip(grouped, alone, strict=True):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_many_prompts_run_in_the_query_decoder_with_the_same_masks():
    # a group of folded_prompts or more prompts is cheaper in the query decoder (prompt mode)
    seg = Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime")
    limit = seg.spec.query_decoder.folded_prompts
    image = scene(9)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 95, (limit, 2)).round()
    few = seg.prompt(image, points=points[:3])
    calls = seg.graph_calls()
    assert calls["prompt_decoder"] == 1 and calls["query_decoder"] == 0
    many = seg.prompt(image, points=points)
    calls = seg.graph_calls()
    assert calls["prompt_decoder"] == 1 and calls["query_decoder"] == 1
    assert len(many) == limit
    # the same maths in both graphs: the first three prompts' masks agree
    agree = (many.masks[:3] == few.masks).mean()
    assert agree >= 0.999, agree
    np.testing.assert_allclose(many.scores[:3], few.scores, atol=1e-4)


def test_interactive_prompts_are_served_before_bulk_images(ort):
    finished: list[str] = []
    scheduler = Scheduler(ort, start=False)
    bulk = [scheduler.submit_segment(scene(20 + i), "panoptic") for i in range(3)]
    prompt = scheduler.submit_prompt(scene(30), points=[[10, 10]])
    for f in bulk:
        f.add_done_callback(lambda _: finished.append("bulk"))
    prompt.add_done_callback(lambda _: finished.append("prompt"))
    scheduler.start()
    scheduler.close()
    assert finished[0] == "prompt" and finished.count("bulk") == 3
    assert scheduler.stats.encoder_batches >= 2  # the prompt's image, then the bulk batch


def test_full_queue_rejects_with_a_clear_error_and_keeps_serving(ort):
    scheduler = Scheduler(ort, max_queue=2, start=False)
    first = [scheduler.submit_segment(scene(40), "instance") for _ in range(2)]
    with pytest.raises(QueueFullError, match="queue full .*max_queue=2"):
        scheduler.submit_prompt(scene(40), points=[[1, 1]])
    scheduler.start()
    assert all(len(f.result(timeout=60)) > 0 for f in first)
    assert scheduler.segment(scene(40), "instance") is not None
    scheduler.close()
    assert scheduler.stats.rejected == 1


def test_scheduler_rejects_bad_prompts_at_submission(ort):
    with Scheduler(ort) as scheduler:
        with pytest.raises(InvalidInputError, match="points: x coordinates must lie in"):
            scheduler.submit_prompt(scene(1), points=[[500, 5]])
        assert len(scheduler.prompt(scene(1), points=[[5, 5]])) == 1


# ---------------------------------------------------------------- video sessions


def test_video_ids_stay_stable_on_a_clip_with_moving_objects(ort):
    clip = moving_clip(15)
    session = ort.open_video("vis", clip_size=3)
    results = [r for frame in clip for r in session.step(frame)] + session.finish()
    assert len(results) == 15
    # an id names one (query slot, class) in every frame it appears in, and its mask moves
    # smoothly: the same id's masks overlap between consecutive frames
    for before, after in zip(results, results[1:]):
        common = set(before.ids.tolist()) & set(after.ids.tolist())
        assert len(common) >= 0.8 * len(before)
        for track_id in list(common)[:10]:
            a = before.masks[before.ids.tolist().index(track_id)]
            b = after.masks[after.ids.tolist().index(track_id)]
            if a.sum() > 50 and b.sum() > 50:
                assert (a & b).sum() / (a | b).sum() > 0.3
    assert set(session.tracks) == {int(i) for r in results for i in r.ids}


def test_video_alignment_recovers_a_permutation_of_queries(ort):
    """Feeding the same clip twice, the second clip's queries must align to the first's slots,
    so every frame of the repeat gets the same ids and masks."""
    clip = moving_clip(3)
    session = ort.open_video("vis", clip_size=3)
    first = [r for frame in clip for r in session.step(frame)]
    second = [r for frame in clip for r in session.step(frame)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_video_memory_stays_flat_over_a_long_stream(ort):
    session = ort.open_video("vps", clip_size=3)
    frame = moving_clip(1)[0]
    before = ort.cache.stats().entries
    sizes = []
    for i in range(30):
        session.step(np.roll(frame, i, axis=1))
        sizes.append(session.memory_bytes)
    one_frame = ort.set_image(frame).encoded.nbytes
    assert max(sizes) <= 3 * one_frame + 64 * 1024
    assert sizes[-3:] == sizes[-6:-3]  # periodic, not growing
    assert ort.cache.stats().entries <= before + 1  # frames are not kept in the cache


def test_vos_requires_a_first_mask_of_the_first_frames_size(ort):
    with pytest.raises(InvalidInputError, match="first_mask: required"):
        ort.open_video("vos")
    session = ort.open_video("vos", first_mask=np.ones((10, 10), np.int32))
    with pytest.raises(InvalidInputError, match="first_mask: expected the first frame's size"):
        session.step(scene(1))


# ---------------------------------------------------------------- errors


def test_bad_input_raises_typed_errors_and_the_segmenter_keeps_serving(ort, tmp_path):
    image = scene(9)
    cases = [
        (lambda: ort.panoptic(str(tmp_path / "missing.png")), "cannot read an image"),
        (lambda: ort.panoptic(image.astype(np.float32)), r"expected uint8 \(H, W, 3\), got float32"),
        (lambda: ort.panoptic(image[..., :2]), r"got uint8 \(96, 120, 2\)"),
        (lambda: ort.prompt(image, points=[[130, 5]]), r"points: x coordinates must lie in \[0, 120\]"),
        (lambda: ort.prompt(image, boxes=[[0, 0, 50, 200]]), r"boxes: y coordinates must lie in \[0, 96\]"),
        (lambda: ort.prompt(image, points=[[1, 2, 3]]), r"points: expected \(N, 2\)"),
        (lambda: ort.prompt(image, points=[[5, 5]], labels=[0]), "labels: .*background clicks"),
        (lambda: ort.prompt(image), "expected points and/or boxes"),
        (lambda: ort.segment(image, "depth"), "task: expected one of"),
        (lambda: ort.open_video("tracking"), "task: expected one of"),
        (lambda: ort.set_vocabulary([]), "names: expected a non-empty list"),
        (lambda: ort.set_vocabulary(["cat", ""]), "names: expected non-empty strings"),
        (lambda: ort.set_vocabulary(["cat"], num_things=3), r"num_things: expected an int in \[0, 1\]"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            call()
        assert len(ort.instances(image)) > 0  # still serving


def test_a_bundle_whose_file_was_altered_is_rejected_naming_the_file(tmp_path):
    bundle = copy_bundle(tmp_path / "b")
    graph = bundle / "query_decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="query_decoder.onnx does not match its manifest"):
        Segmenter.from_bundle(bundle, backend="onnxruntime")


def test_named_backends_that_cannot_run_say_why():
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnavailableError, match="tensorrt: `import tensorrt` fails"):
            Segmenter.from_bundle(tiny_bundle(), backend="tensorrt")
    with pytest.raises(InvalidInputError, match="checkpoint: backend='torch' needs"):
        Segmenter.from_bundle(tiny_bundle(), backend="torch")
    with pytest.raises(InvalidInputError, match="backend: expected one of"):
        Segmenter.from_bundle(tiny_bundle(), backend="tpu")
    with pytest.raises(InvalidInputError, match="precision: expected one of the bundle's"):
        Segmenter.from_bundle(tiny_bundle(), backend="onnxruntime", precision="int4")


def test_auto_backend_reports_why_faster_backends_were_skipped():
    seg = Segmenter.from_bundle(tiny_bundle(), backend="auto")
    report = dict(seg.backend_report)
    assert report[seg.backend_name] == "used"
    if seg.backend_name.startswith("onnxruntime[CPU"):
        assert "tensorrt" in report and report["tensorrt"] != "used"


def test_the_runner_validates_feeds_before_the_backend_runs(ort):
    runner = ort.backend.runners["encoder"]
    calls = runner.calls
    with pytest.raises(InvalidInputError, match=r"encoder.image: expected float32 .*got float64"):
        runner({"image": np.zeros((1, 3, 128, 128))})
    with pytest.raises(InvalidInputError, match=r"axis 2 \(H\) must be a multiple of 32"):
        runner({"image": np.zeros((1, 3, 80, 128), np.float32)})
    with pytest.raises(InvalidInputError, match=r"expected inputs \['image'\]"):
        runner({"images": np.zeros((1, 3, 128, 128), np.float32)})
    assert runner.calls == calls


# ---------------------------------------------------------------- results


def test_results_convert_to_rle_panoptic_png_and_overlay(ort):
    from pycocotools import mask as mask_utils

    image = scene(11)
    instances = ort.instances(image)
    rles = instances.to_rle()
    decoded = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    np.testing.assert_array_equal(decoded, instances.masks)
    record = json.loads(json.dumps(instances.to_json()))
    assert len(record["objects"]) == len(instances)

    panoptic = ort.panoptic(image)
    png, segments = panoptic.to_panoptic_png()
    rgb = png.astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    for info in segments:
        area = int((ids == info["id"]).sum())
        assert area == info["area"] > 0
    assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}

    overlay = instances.overlay(image)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (overlay != image).any()
    with pytest.raises(InvalidInputError, match="image: expected uint8"):
        instances.overlay(image[:10])


def test_keep_filters_instances_by_score_and_refuses_per_pixel_maps(ort):
    image = scene(11)
    instances = ort.instances(image)
    threshold = float(np.median(instances.scores))
    kept = instances.keep(threshold)
    chosen = instances.scores >= np.float32(threshold)
    assert 0 < len(kept) == chosen.sum() < len(instances)
    np.testing.assert_array_equal(kept.masks, instances.masks[chosen])
    np.testing.assert_array_equal(kept.ids, instances.ids[chosen])
    np.testing.assert_array_equal(kept.boxes, instances.boxes[chosen])
    assert len(instances.keep(0.0)) == len(instances)
    with pytest.raises(InvalidInputError, match="min_score: expected a float in"):
        instances.keep(1.5)
    with pytest.raises(InvalidInputError, match="keep: a panoptic result is a per-pixel map"):
        ort.panoptic(image).keep(0.5)


# ---------------------------------------------------------------- torch-free import


def test_import_and_onnxruntime_inference_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import omg_rt\n"
        "from omg_rt import Segmenter\n"
        f"seg = Segmenter.from_bundle({str(tiny_bundle())!r}, backend='onnxruntime')\n"
        "image = np.zeros((40, 50, 3), np.uint8)\n"
        "seg.panoptic(image); seg.prompt(image, points=[[5, 5]]); seg.set_vocabulary(['cat'])\n"
        "s = seg.open_video('vis', clip_size=2); s.step(image); s.step(image)\n"
        "print([m for m in sys.modules if m == 'torch' or m.startswith('torch.')][:5])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- TensorRT (skips here)


def test_tensorrt_profiles_cover_every_dynamic_axis_of_the_bundle():
    from omg_rt.backends.trt_profiles import (
        TARGET_RANGES,
        profile_shapes,
        runtime_ranges,
        spatial_ranges,
    )
    from omg_rt.bundle import load_bundle

    bundle = load_bundle(tiny_bundle())
    counts = {"Q": 7, "K": len(NAMES), "S": 2}
    limits = dict(max_batch=4, max_frames=5, max_prompts=64, max_classes=256, max_synonyms=20)
    spatial = spatial_ranges(bundle.input.to_dict())
    runtime = {**runtime_ranges(**limits, max_texts=256, counts=counts), **spatial}
    for ranges in (runtime, *({**r, **spatial} for r in TARGET_RANGES.values())):
        for graph, entry in bundle.graphs.items():
            inputs = {name: spec.shape for name, spec in entry.inputs.items()}
            shapes = profile_shapes(inputs, ranges, counts, graph=graph)
            dynamic = {n for n, dims in inputs.items() if any(isinstance(d, str) for d in dims)}
            assert set(shapes) == dynamic, graph
            for lo, opt, hi in shapes.values():
                assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), graph
    query_decoder = {n: s.shape for n, s in bundle.graphs["query_decoder"].inputs.items()}
    shapes = profile_shapes(query_decoder, runtime, counts)
    assert shapes["query_content"][1][:2] == (1, 7)  # one clip, opt = the learned queries
    assert shapes["memory_s32"][2][0] == 5  # up to max(max_batch, max_frames) frames
    with pytest.raises(BundleError, match="no profile rule"):
        profile_shapes({"x": ("M", 3)}, runtime, counts)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_backend_matches_onnxruntime(ort, tmp_path):
    bundle = copy_bundle(tmp_path / "b")
    start = time.perf_counter()
    try:
        trt = Segmenter.from_bundle(bundle, backend="tensorrt")
    except BackendUnavailableError as exc:
        if "NVIDIA/TensorRT#4813" in str(exc):
            pytest.skip(f"portable bundle on a TensorRT with the GridSample bug: {exc}")
        raise
    assert time.perf_counter() - start < 600
    image = scene(12)
    _assert_same(trt.instances(image), ort.instances(image), "tensorrt instances")
    _assert_same(trt.prompt(image, points=[[10, 10]]), ort.prompt(image, points=[[10, 10]]), "trt prompt")


def test_onnx_runtime_plans_memory_per_run_not_per_input_shape(ort):
    """Every image size is a new input shape: ONNX Runtime's memory pattern (one block per shape,
    planned over its first runs) made the first two runs at each size up to twice as slow."""
    for name, runner in ort.pipeline.runners.items():
        assert runner.backend.session.get_session_options().enable_mem_pattern is False, name


_RETAIN_SCRIPT = """
import os
import numpy as np
from omg_rt import native
applied = native.retain_freed_memory()
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = 256 << 20
frame = np.ones(size, np.uint8)  # a frame's large result, written
held = resident()
del frame
kept = resident()
frame = np.ones(size, np.uint8)  # the next frame's
print(int(applied), held - kept, resident() - kept)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_freed_large_arrays_stay_in_the_process_for_the_next_frame():
    """``native.retain_freed_memory`` (every Segmenter applies it): a freed 256 MB array stays
    resident and the next one reuses it (no fresh pages to fault in and zero); with the setting
    turned off glibc unmaps it and the next array is mapped anew."""
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    runs = {}
    for setting in ("1", "0"):
        done = subprocess.run([sys.executable, "-c", _RETAIN_SCRIPT], capture_output=True,
                              text=True, cwd=REPO, check=True,
                              env={**os.environ, "OMG_RT_RETAIN_FREED_MEMORY": setting})
        runs[setting] = tuple(int(v) for v in done.stdout.split())
    size = 256 << 20
    applied, released, grown = runs["1"]
    assert applied == 1 and released < size // 10 and grown < size // 10, runs
    applied, released, grown = runs["0"]
    assert applied == 0 and released > size // 2 and grown > size // 2, runs
