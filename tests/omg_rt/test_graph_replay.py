"""CUDA-graph replay of the prompt graphs (``omg_rt.backends.torch.GraphReplay``).

A click's prompt encoder and decoder are hundreds of small kernels; on a GPU they are captured
once per image shape and power-of-two prompt count and replayed. What a replay needs of the model
is checked on the CPU every run (no host synchronisation inside, and the same ops whatever the
prompt values), as are the padding and buffer handling (``capture=False``: the same code around
an eager call); the capture itself where there is a GPU.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from omg_rt.spec import PROMPT_DECODER, PROMPT_ENCODER
from tests.conftest import seeded_tiny
from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, merging_model, scene

torch = pytest.importorskip("torch")

from omg_rt.backends.torch import (  # noqa: E402 - after the torch skip
    REPLAYED_GRAPHS,
    GraphReplay,
    graph_functions,
    prompt_bucket,
)

# ops that make the host wait for the device (forbidden while a CUDA graph is captured) or whose
# output shape depends on the data (a captured graph has fixed shapes)
HOST_SYNC = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "unique",
             "_unique2", "masked_select", "where(cond)"}


class _Ops(torch.utils._python_dispatch.TorchDispatchMode):
    """Every ATen op called, with its output shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []
        self.devices: set[str] = set()  # of every tensor but 0-d ones (scalars)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else (out,)
        shapes = tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))
        name = func.overloadpacket.__name__
        self.ops.append(("where(cond)" if name == "where" and len(args) == 1 else name, shapes))
        tensors = [t for t in (*args, *(kwargs or {}).values(), *outs)
                   if isinstance(t, torch.Tensor) and t.ndim > 0]
        self.devices.update(t.device.type for t in tensors)
        return out


def _prompt_feeds(model, prompts: int, seed: int, hw=(96, 128)) -> dict[str, dict]:
    """Random but well-formed feeds of both prompt graphs for one (hw) image."""
    g = torch.Generator().manual_seed(seed)
    c = model.config.pixel_decoder.embed_dim
    d = model.config.backbone.embed_dim
    h, w = hw
    x0 = torch.rand((1, prompts, 2), generator=g) * torch.tensor([w / 2, h / 2])
    boxes = torch.cat([x0, x0 + 8 + torch.rand((1, prompts, 2), generator=g) * 20], -1)
    bank = torch.nn.functional.normalize(torch.randn((len(NAMES), 2, d), generator=g), dim=-1)
    decoder = {
        name: torch.randn((1, c, h // stride, w // stride), generator=g)
        for name, stride in zip(PROMPT_DECODER.inputs[:4], (32, 16, 8, 4), strict=True)
    }
    decoder |= {"class_bank": bank,
                "query_content": torch.randn((1, prompts, c), generator=g),
                "query_position": torch.randn((1, prompts, c), generator=g)}
    encoder = {"prompt_boxes": boxes, "image_size": torch.tensor([[float(h), float(w)]])}
    return {PROMPT_ENCODER.name: encoder, PROMPT_DECODER.name: decoder}


def _close(got, want, rtol=1e-5):
    assert got.shape == want.shape
    scale = max(float(want.abs().max()), 1e-6)
    assert float((got - want).abs().max()) <= rtol * scale


def test_prompt_buckets_are_the_next_power_of_two():
    assert [prompt_bucket(n) for n in range(1, 18)] == [
        1, 2, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 32]
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_bucket(0)


def test_the_prompt_graphs_can_be_captured():
    """No op inside waits for the device, sizes its output by the data or makes a host tensor,
    and the ops are the same whatever the prompts' values: what a CUDA graph replays."""
    model = seeded_tiny(0)
    fns = graph_functions(model)
    for graph in (PROMPT_ENCODER, PROMPT_DECODER):
        seen = []
        for seed in (1, 2):
            feeds = _prompt_feeds(model, 3, seed)[graph.name]
            with torch.inference_mode(), _Ops() as ops:
                fns[graph](**feeds)
            seen.append(ops.ops)
        names = Counter(name for name, _ in seen[0])
        assert not HOST_SYNC & set(names), (graph.name, HOST_SYNC & set(names))
        assert len(seen[0]) > 20, graph.name  # the recorder saw the graph's work
        assert seen[0] == seen[1], graph.name
        # on the meta device (shapes, no data): nothing reads a value, and no tensor is made on
        # the host inside (a capture cannot copy host memory)
        feeds = {name: value.to("meta")
                 for name, value in _prompt_feeds(model, 3, 1)[graph.name].items()}
        on_meta = graph_functions(seeded_tiny(0).to("meta"))[graph]
        with torch.inference_mode(), _Ops() as ops:
            on_meta(**feeds)
        assert ops.devices == {"meta"}, graph.name
        assert [name for name, _ in ops.ops] == [name for name, _ in seen[0]], graph.name


@pytest.mark.parametrize("graph", [PROMPT_ENCODER, PROMPT_DECODER], ids=lambda g: g.name)
def test_replay_pads_prompts_to_a_bucket_and_returns_fresh_outputs(graph):
    model = seeded_tiny(0)
    fn = graph_functions(model)[graph]
    replay = GraphReplay(fn, REPLAYED_GRAPHS[graph.name], capture=False, max_graphs=2)
    with torch.inference_mode():
        results = []
        for prompts, seed in ((3, 1), (3, 2), (1, 3), (5, 4)):
            feeds = _prompt_feeds(model, prompts, seed)[graph.name]
            got, want = replay(**feeds), fn(**feeds)
            assert len(got) == len(want) == len(graph.outputs)
            for a, b in zip(got, want, strict=True):
                assert a.shape[1] == prompts
                _close(a, b)
            results.append((got, want))
        # a later call (same bucket) leaves an earlier call's outputs as they were
        for a, b in zip(*results[0], strict=True):
            _close(a, b)
        assert not torch.equal(results[0][0][-1], results[1][0][-1])
        # buckets 4, 1, 8 were used; two graphs are kept
        assert replay.graphs == 2
        if graph is PROMPT_DECODER:
            feeds = _prompt_feeds(model, 3, 5)[graph.name]
            feeds["query_position"] = feeds["query_position"][:, :2]
            with pytest.raises(ValueError, match="query_position: 2 prompts, but query_content"):
                replay(**feeds)


@pytest.mark.gpu
def test_prompts_replayed_on_the_gpu_equal_their_kernel_by_kernel_run():
    from omg_rt import Segmenter

    model = merging_model()
    replayed, eager = (
        Segmenter.from_checkpoint(model, vocabulary=NAMES, num_things=NUM_THINGS, device="cuda",
                                  cuda_graphs=graphs)
        for graphs in (True, False)
    )
    runner = replayed.pipeline.runners[PROMPT_DECODER.name].backend
    assert runner.replay is not None
    assert eager.pipeline.runners[PROMPT_DECODER.name].backend.replay is None
    calls = [
        (scene(1, (100, 140)), {"points": [[30, 40]]}),
        (scene(2, (100, 140)), {"points": [[30, 40]]}),  # same shapes, a new image's memories
        (scene(2, (100, 140)), {"points": [[30, 40], [90, 60]], "boxes": [[10, 10, 60, 50]]}),
        (scene(3, (120, 90)), {"boxes": [[5, 5, 40, 60]]}),
    ]
    for image, prompts in calls:
        got, want = replayed.prompt(image, **prompts), eager.prompt(image, **prompts)
        assert got.masks.shape == want.masks.shape
        assert (got.masks != want.masks).mean() <= 1e-3
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        assert got.labels.tolist() == want.labels.tolist()
    assert runner.replay.failed is None
    assert runner.replay.graphs == 3  # (96x128, 1 prompt), (96x128, 4), (128x96, 1)
    # FP16: the autocast state is part of a graph's key, and the graph casts inside itself
    with torch.autocast("cuda", dtype=torch.float16):
        image, prompts = calls[2]
        got, want = replayed.prompt(image, **prompts), eager.prompt(image, **prompts)
    assert (got.masks != want.masks).mean() <= 1e-2
    assert runner.replay.failed is None and runner.replay.graphs == 4
