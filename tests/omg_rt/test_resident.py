"""Device-resident intermediates (``omg_rt.arrays``, ``RESIDENT_OUTPUTS``): the PyTorch backend
leaves the backbone features, the pixel decoder's memories and the mask logits on its device;
the encoder cache, the next graph and device post-processing take them from there, the host
paths bring them over, and the results are those of host arrays. On torch's CPU device every run
(the same code as on CUDA), on CUDA where there is one."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.arrays import concat, dtype_name, is_tensor, row, to_host
from omg_rt.backends.base import RESIDENT_OUTPUTS, GraphRunner, TensorSpec
from omg_rt.errors import InvalidInputError
from omg_rt.spec import ENCODER, PIXEL_DECODER, PROMPT_ENCODER, QUERY_DECODER
from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, merging_model, moving_clip, scene

torch = pytest.importorskip("torch")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_arrays_of_either_kind():
    rng = np.random.default_rng()
    host = rng.standard_normal((3, 2, 4)).astype(np.float32)
    tensor = torch.from_numpy(host.copy())
    assert is_tensor(tensor) and not is_tensor(host) and not is_tensor([1.0])
    assert dtype_name(tensor) == dtype_name(host) == "float32"
    assert to_host(host) is host
    np.testing.assert_array_equal(to_host(tensor), host)
    np.testing.assert_array_equal(to_host(concat([tensor, tensor], axis=1)),
                                  np.concatenate([host, host], axis=1))
    assert concat([tensor]) is tensor
    # a row of a batch owns its memory (a cached image must not hold the whole batch)
    for batch in (host, tensor):
        one = row(batch, 1)
        assert tuple(one.shape) == (1, 2, 4)
        np.testing.assert_array_equal(to_host(one), host[1:2])
        one[...] = 7.0
        assert float(to_host(batch)[1, 0, 0]) != 7.0
    single = torch.from_numpy(host[:1].copy())
    assert row(single, 0).data_ptr() == single.data_ptr()  # nothing to free: no copy


class _HostOnly:
    """A backend that takes numpy only (as ONNX Runtime and TensorRT do)."""

    name = "host-only"

    def inputs(self):
        return {"prompt_boxes": TensorSpec("prompt_boxes", ("batch", "prompts", 4), "float32"),
                "image_size": TensorSpec("image_size", ("batch", 2), "float32")}

    def run(self, feeds):
        self.seen = {k: type(v) for k, v in feeds.items()}
        return {"query_content": np.zeros((1, 1, 2), np.float32),
                "query_position": np.zeros((1, 1, 2), np.float32)}

    def close(self):
        pass


def test_the_runner_checks_tensors_and_brings_them_to_a_host_backend():
    backend = _HostOnly()
    runner = GraphRunner(PROMPT_ENCODER, backend)
    boxes = torch.zeros((1, 2, 4))
    runner({"prompt_boxes": boxes, "image_size": np.array([[64, 64]], np.float32)})
    assert backend.seen == {"prompt_boxes": np.ndarray, "image_size": np.ndarray}
    with pytest.raises(InvalidInputError, match=r"prompt_boxes: expected float32"):
        runner({"prompt_boxes": boxes.double(), "image_size": np.zeros((1, 2), np.float32)})
    with pytest.raises(InvalidInputError, match=r"prompt_boxes: axis 2 must be 4"):
        runner({"prompt_boxes": torch.zeros((1, 2, 3)),
                "image_size": np.zeros((1, 2), np.float32)})


def _segmenters(device):
    from omg_rt import Segmenter

    model = merging_model()
    resident = Segmenter.from_checkpoint(model, vocabulary=NAMES, num_things=NUM_THINGS,
                                         device=device, post_device=device)
    host = Segmenter.from_checkpoint(model, vocabulary=NAMES, num_things=NUM_THINGS,
                                     device=device, post_device=None)
    return resident, host


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_backend_keeps_its_maps_on_the_device_and_the_results_stay(device):
    resident, host = _segmenters(device)
    assert {*ENCODER.outputs, *PIXEL_DECODER.outputs, *PROMPT_ENCODER.outputs,
            "mask_logits"} == RESIDENT_OUTPUTS
    image = scene(11, (100, 140))
    session = resident.set_image(image)
    encoded = session.encoded
    for name in ("mask_features", "memory_s32", "memory_s16", "memory_s8", "clip_features"):
        value = getattr(encoded, name)
        assert is_tensor(value) and value.device.type == device, name
        assert value.dtype == torch.float32 and value.shape[0] == 1, name
    # the cache counts the device bytes it holds
    assert resident.cache.stats().bytes == encoded.nbytes > 0
    predictions = resident.predict(session)
    assert is_tensor(predictions.mask_logits) and predictions.mask_logits.device.type == device
    assert isinstance(predictions.class_scores, np.ndarray)
    # every task: the device post-processing on the resident logits, or the host's after a copy
    for task in ("panoptic", "instances"):
        got, want = getattr(resident, task)(image), getattr(host, task)(image)
        assert want.ids.size > 0, task
        assert got.labels.tolist() == want.labels.tolist(), task
        assert (got.masks != want.masks).mean() <= 1e-3, task
    want = host.semantic(image)
    np.testing.assert_array_equal(resident.semantic(image).id_map, want.id_map)
    # the prompt queries go from the prompt encoder to the decoder without a host copy
    content, position = resident.pipeline.prompt_queries(
        np.array([[10, 10, 60, 50]], np.float32), session.resized_hw)
    assert is_tensor(content) and content.device.type == device and is_tensor(position)
    got = resident.prompt(image, boxes=[[10, 10, 60, 50]], points=[[90, 60]])
    want = host.prompt(image, boxes=[[10, 10, 60, 50]], points=[[90, 60]])
    assert want.masks.any() and (got.masks != want.masks).mean() <= 1e-3
    for task in ("vis", "vos"):
        clip = moving_clip(3)
        kwargs = {"first_mask": want.masks[:1]} if task == "vos" else {}
        if task == "vos":
            clip = [image, image, image]
        got_video = resident.open_video(task, clip_size=2, **kwargs).run(clip)
        want_video = host.open_video(task, clip_size=2, **kwargs).run(clip)
        assert len(got_video) == len(want_video) == 3, task
        for a, b in zip(got_video, want_video, strict=True):
            assert a.ids.tolist() == b.ids.tolist(), task
            assert (a.masks != b.masks).mean() <= 1e-3, task


@pytest.mark.parametrize("device", DEVICES)
def test_a_read_only_class_bank_goes_to_the_device_once(device):
    from omg_rt.backends.torch import open_torch_graphs

    graph = open_torch_graphs(merging_model(), device=device)[QUERY_DECODER.name]
    bank = np.random.default_rng().standard_normal((5, 2, 32)).astype(np.float32)
    writable = graph.device_feed("class_bank", bank)
    assert graph.device_feed("class_bank", bank) is not writable  # may have changed: copied
    bank.setflags(write=False)
    kept = graph.device_feed("class_bank", bank)
    assert kept.device.type == device and graph.device_feed("class_bank", bank) is kept
    np.testing.assert_array_equal(to_host(kept), bank)
    other = bank.copy()
    other.setflags(write=False)
    assert graph.device_feed("class_bank", other) is not kept
    other.setflags(write=True)  # its owner may make it writable again, and change it
    other[0] = 7.0
    np.testing.assert_array_equal(to_host(graph.device_feed("class_bank", other)), other)
    # a vocabulary's bank is such an array (a read-only copy of what it was given)
    from omg_rt import Segmenter

    seg = Segmenter.from_checkpoint(merging_model(), vocabulary=NAMES, num_things=NUM_THINGS,
                                    device=device)
    assert not seg.vocabulary.class_bank.flags.writeable
