"""omg-rt's ONNX Runtime custom operator (``omg_rt.backends.ort_ops``): deformable attention as
one CPU kernel for the plugin node of the fused pixel decoder, against the PyTorch reference on
fresh random inputs every run (sizes, levels, heads, locations outside the map, batch 2), its
build cache and its errors, and the bundle's fused pixel decoder through the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.backends import ort_ops
from omg_rt.errors import BackendUnavailableError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

# |ours - reference| / max |reference|: float32, the same products summed in another order
RTOL = 1e-5


def _library_or_skip():
    try:
        return ort_ops.library()
    except BackendUnavailableError as exc:
        pytest.skip(f"omg-rt's custom operators cannot be built here: {exc}")


def _op_session(tmp_path):
    from onnx import TensorProto, helper

    names = ["value", "shapes", "starts", "locations", "weights"]
    types = [TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT32, TensorProto.FLOAT,
             TensorProto.FLOAT]
    node = helper.make_node(ort_ops.OP_NAME, names, ["out"], domain=ort_ops.DOMAIN)
    graph = helper.make_graph(
        [node], "msda", [helper.make_tensor_value_info(n, t, None) for n, t in zip(names, types)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(ort_ops.DOMAIN, 1)])
    path = tmp_path / "msda.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    ort_ops.register(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _case(rng, n, m, d, shapes, lq, p):
    shapes = np.asarray(shapes, np.int32)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    levels = len(shapes)
    value = rng.standard_normal((n, int(sizes.sum()), m, d)).astype(np.float32)
    # a fifth of the samples fall partly or wholly outside their map (zero padding)
    locations = (rng.random((n, lq, m, levels, p, 2)) * 1.4 - 0.2).astype(np.float32)
    weights = rng.random((n, lq, m, levels, p)).astype(np.float32)
    return {"value": value, "shapes": shapes, "starts": starts, "locations": locations,
            "weights": weights}


def _reference(feeds):
    from kernels.reference import ms_deform_attn_reference

    n, _, m, d = feeds["value"].shape
    out = ms_deform_attn_reference(
        torch.from_numpy(feeds["value"]), torch.from_numpy(feeds["shapes"]).long(), None,
        torch.from_numpy(feeds["locations"]), torch.from_numpy(feeds["weights"]))
    return out.numpy().reshape(n, -1, m, d)


@pytest.mark.parametrize("case", [
    (2, 3, 5, [(7, 9), (4, 5), (1, 2)], 11, 4),  # odd sizes, batch 2
    (1, 8, 32, [(12, 16), (6, 8), (3, 4)], 252, 4),  # the pixel decoder's heads and points
    (1, 1, 1, [(1, 1)], 1, 1),  # one of everything
    (1, 2, 16, [(5, 3), (2, 7), (9, 1), (1, 1)], 40, 3),  # four levels, thin maps
])
def test_the_fused_kernel_is_the_reference(tmp_path, case):
    _library_or_skip()
    session = _op_session(tmp_path)
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    feeds = _case(rng, *case)
    want = _reference(feeds)
    got = session.run(None, feeds)[0]
    assert got.shape == want.shape, seed
    scale = max(float(np.abs(want).max()), 1e-30)
    assert float(np.abs(got - want).max()) / scale <= RTOL, seed
    # every element written: a second call on other inputs (ONNX Runtime may hand back the
    # same buffer) matches its own reference too
    other = _case(rng, *case)
    np.testing.assert_allclose(session.run(None, other)[0], _reference(other),
                               rtol=0, atol=RTOL * float(np.abs(_reference(other)).max()),
                               err_msg=str(seed))


def test_inputs_that_disagree_fail_the_node_not_the_process(tmp_path):
    _library_or_skip()
    session = _op_session(tmp_path)
    feeds = _case(np.random.default_rng(0), 1, 2, 4, [(3, 3)], 5, 2)
    feeds["weights"] = feeds["weights"][:, :, :, :, :1]  # P disagrees with the locations
    with pytest.raises(Exception, match="(?i)output|fail|error"):
        session.run(None, feeds)
    bad_shapes = _case(np.random.default_rng(1), 1, 2, 4, [(3, 3)], 5, 2)
    bad_shapes["shapes"] = np.array([[4, 4]], np.int32)  # a level larger than the value tensor
    with pytest.raises(Exception, match="(?i)output|fail|error"):
        session.run(None, bad_shapes)


def test_the_library_is_built_once_and_a_missing_compiler_is_a_typed_error(tmp_path,
                                                                           monkeypatch):
    first = _library_or_skip()
    assert first.is_file() and ort_ops.library() == first
    monkeypatch.setenv("OMG_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_ops, "_built", {})
    built = ort_ops.library()
    assert built.is_file() and built.is_relative_to(tmp_path / "cache")
    assert built.stat().st_mtime == ort_ops.library().stat().st_mtime  # not rebuilt
    monkeypatch.setenv("CC", "no-such-compiler-omg")
    monkeypatch.setattr(ort_ops, "_built", {})
    with pytest.raises(BackendUnavailableError, match="no C compiler"):
        ort_ops.library()


def test_the_bundles_fused_pixel_decoder_runs_and_equals_the_portable_one(tmp_path, monkeypatch):
    """The cpu target exports the pixel decoder twice (portable, fused) at FP32 and INT8; the
    runtime runs the fused one where the operator builds, the portable one where it cannot,
    and both give the same results."""
    _library_or_skip()
    import types

    from export import build_bundle
    from omg_rt import Segmenter
    from omg_rt.bundle import load_bundle
    from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, merging_model, scene

    bundle_dir = build_bundle(merging_model(), tmp_path / "bundle", image_size=128,
                              vocab=types.SimpleNamespace(names=NAMES, num_things=NUM_THINGS),
                              precisions=("fp32", "int8"), verify=False, progress=False)
    entry = load_bundle(bundle_dir).graphs["pixel_decoder"]
    assert entry.fused_files == {"fp32": "fused/pixel_decoder.onnx",
                                 "int8": "int8/fused/pixel_decoder.onnx"}
    image = scene(5, (90, 130))
    for precision in ("fp32", "int8"):
        fused = Segmenter.from_bundle(bundle_dir, backend="onnxruntime", precision=precision)
        name = fused.pipeline.runners["pixel_decoder"].backend.name
        assert name.endswith("+omg-ops"), (precision, name)
        monkeypatch.setenv("CC", "no-such-compiler-omg")
        monkeypatch.setattr(ort_ops, "_built", {})
        portable = Segmenter.from_bundle(bundle_dir, backend="onnxruntime", precision=precision)
        monkeypatch.delenv("CC")
        assert "+omg-ops" not in portable.pipeline.runners["pixel_decoder"].backend.name
        a, b = fused.predict(image), portable.predict(image)
        np.testing.assert_allclose(a.class_scores, b.class_scores, atol=1e-3, err_msg=precision)
        agree = ((a.mask_logits > 0) == (b.mask_logits > 0)).mean()
        assert agree >= 0.999, (precision, agree)
