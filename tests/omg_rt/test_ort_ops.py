"""omg-rt's ONNX Runtime custom operators (``omg_rt.backends.ort_ops``): deformable attention as
one CPU kernel for the plugin node of the fused pixel decoder, against the PyTorch reference on
fresh random inputs every run (sizes, levels, heads, locations outside the map, batch 2); the
masked attention of the fused query decoder against the reference (query chunks, partial key
tiles, blocked rows and tiles, a broadcast mask); the INT8
MLP's bias + GELU + quantization and the norm's dequantize + LayerNorm + quantization against the
exact float64 chains; the graph rewrites that put them into the INT8 encoder; the build cache and
errors; and the bundle's fused graphs through the runtime."""

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


def _one_node_session(tmp_path, op: str, domain: str, inputs: dict[str, int]):
    """An ONNX Runtime session of one ``domain::op`` node over ``inputs`` (name -> ONNX element
    type), output ``out``, with the library registered."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, list(inputs), ["out"], domain=domain)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, t, None) for n, t in inputs.items()],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(domain, 1)])
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    ort_ops.register(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _op_session(tmp_path):
    from onnx import TensorProto

    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    return _one_node_session(tmp_path, ort_ops.OP_NAME, ort_ops.DOMAIN, {
        "value": f32, "shapes": i32, "starts": i32, "locations": f32, "weights": f32})


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


def _omg_op_session(tmp_path, op, inputs):
    """A session of one omg_rt-domain ``op`` node reading ``inputs`` [(name, TensorProto type,
    shape)] and writing a uint8 ``y``, on 2 threads with the library registered."""
    from onnx import TensorProto, helper

    node = helper.make_node(op, [n for n, _, _ in inputs], ["y"],
                            domain=ort_ops.OPS_DOMAIN)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(ort_ops.OPS_DOMAIN, 1)])
    path = tmp_path / f"{op}{len(inputs[0][2])}.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    ort_ops.register(options)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _gelu_quantize_session(tmp_path, rank, op=ort_ops.GELU_QUANTIZE_OP):
    from onnx import TensorProto

    return _omg_op_session(tmp_path, op, [
        ("x", TensorProto.FLOAT, [None] * rank), ("bias", TensorProto.FLOAT, [None]),
        ("scale", TensorProto.FLOAT, []), ("zero_point", TensorProto.UINT8, [])])


def _gelu_quantize_check(x, bias, scale, zero_point, got, seed):
    """``got`` is ``saturate(round(gelu(x + bias) / scale) + zero_point)`` of the exact float64
    GELU, except by one step where the exact value lies within the kernel's float32 error
    (GELU within ~5e-7 absolute + 2e-7 relative, then a division) of a rounding boundary."""
    from scipy.special import erf

    v = x.astype(np.float64) + bias.astype(np.float64)
    exact = 0.5 * v * (1.0 + erf(v / np.sqrt(2.0))) / float(scale)
    want = np.clip(np.rint(exact) + int(zero_point), 0, 255)
    off = np.abs(got.astype(np.int64) - want)
    assert off.max() <= 1, seed
    boundary = np.abs(np.abs(exact - np.floor(exact)) - 0.5)  # distance to x.5
    slack = (1e-6 + 4e-7 * np.abs(v)) / float(scale) + 2e-6 * np.abs(exact)
    assert np.all(boundary[off > 0] <= slack[off > 0]), seed


@pytest.mark.parametrize("shape", [(37, 61), (2, 5, 3072), (1, 1), (4, 8)])
def test_gelu_quantize_is_the_exact_chain_rounded(tmp_path, shape):
    _library_or_skip()
    session = _gelu_quantize_session(tmp_path, len(shape))
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    for _ in range(2):  # a second call on other inputs: every element written again
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 8)).astype(np.float32)
        # one bias per column, or one for all (the node a conv MLP's GELU gets)
        bias = rng.standard_normal(rng.choice([shape[-1], 1])).astype(np.float32)
        # the scale of a calibrated GELU output (range [-0.17, max] over 255 steps), and
        # one small enough that both ends saturate
        scale = np.array(rng.choice([float(np.abs(x).max()) / 250, 0.004]), np.float32)
        zero_point = np.array(rng.integers(0, 40), np.uint8)
        got = session.run(None, {"x": x, "bias": bias, "scale": scale,
                                 "zero_point": zero_point})[0]
        assert got.shape == shape and got.dtype == np.uint8, seed
        _gelu_quantize_check(x, bias, scale, zero_point, got, seed)


def test_gelu_quantize_refuses_inputs_that_do_not_fit(tmp_path):
    _library_or_skip()
    session = _gelu_quantize_session(tmp_path, 2)
    x = np.ones((3, 4), np.float32)
    good = {"x": x, "bias": np.zeros(4, np.float32), "scale": np.array(0.1, np.float32),
            "zero_point": np.array(3, np.uint8)}
    assert session.run(None, good)[0].shape == (3, 4)
    for name, bad in [("bias", np.zeros(5, np.float32)), ("scale", np.array(0.0, np.float32)),
                      ("scale", np.array(-1.0, np.float32))]:
        with pytest.raises(Exception, match="BiasGeluQuantize"):
            session.run(None, {**good, name: bad})


def test_relu_quantize_is_the_ieee_chain(tmp_path):
    """Add -> Relu -> QuantizeLinear as the ONNX spec writes it (float32 sum, division by the
    scale, round half to even, saturation): the same bytes."""
    _library_or_skip()
    session = _gelu_quantize_session(tmp_path, 3, ort_ops.RELU_QUANTIZE_OP)
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    for shape in [(1, 37, 61), (2, 5, 1024), (1, 1, 1)]:
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 8)).astype(np.float32)
        bias = rng.standard_normal(rng.choice([shape[-1], 1])).astype(np.float32)
        scale = np.array(rng.choice([float(np.abs(x).max()) / 250, 0.004]), np.float32)
        zero_point = np.array(rng.integers(0, 3), np.uint8)
        got = session.run(None, {"x": x, "bias": bias, "scale": scale,
                                 "zero_point": zero_point})[0]
        v = np.maximum(x + bias, np.float32(0))
        want = np.clip(np.rint(v / scale) + zero_point.astype(np.float32), 0, 255)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want.astype(np.uint8), err_msg=str(seed))
    with pytest.raises(Exception, match="BiasReluQuantize: y_scale must be positive"):
        session.run(None, {"x": x, "bias": bias, "scale": np.array(0.0, np.float32),
                           "zero_point": zero_point})


def _mlp_graph(rng, *, extra_reader=False, activation="gelu"):
    """A quantized MLP as ``quantize_int8`` leaves it: DQ(W1) MatMul, bias Add, the exporter's
    erf GELU (or a Relu), Q -> DQ, DQ(W2) MatMul. ``extra_reader``: the activation's input is a
    graph output too (the chain is then not private and must stay)."""
    from onnx import TensorProto, helper, numpy_helper

    c, hidden = 6, 24
    inits = {
        "w1_q": rng.integers(-127, 128, (c, hidden)).astype(np.int8),
        "w1_s": (rng.random(hidden) * 0.02 + 0.01).astype(np.float32),
        "w1_z": np.zeros(hidden, np.int8),
        "b1": rng.standard_normal(hidden).astype(np.float32),
        "w2_q": rng.integers(-127, 128, (hidden, c)).astype(np.int8),
        "w2_s": (rng.random(c) * 0.02 + 0.01).astype(np.float32),
        "w2_z": np.zeros(c, np.int8),
        "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "g_s": np.array(0.02, np.float32), "g_z": np.array(9, np.uint8),
    }
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=1),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["b1", "h"], ["v"]),
        *([helper.make_node("Div", ["v", "sqrt2"], ["d"]),
           helper.make_node("Erf", ["d"], ["e"]),
           helper.make_node("Add", ["e", "one"], ["e1"]),
           helper.make_node("Mul", ["v", "e1"], ["m"]),
           helper.make_node("Mul", ["m", "half"], ["g"])] if activation == "gelu" else
          [helper.make_node("Relu", ["v"], ["g"])]),
        helper.make_node("QuantizeLinear", ["g", "g_s", "g_z"], ["gq"]),
        helper.make_node("DequantizeLinear", ["gq", "g_s", "g_z"], ["gd"]),
        helper.make_node("DequantizeLinear", ["w2_q", "w2_s", "w2_z"], ["w2"], axis=1),
        helper.make_node("MatMul", ["gd", "w2"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info(
            "m" if activation == "gelu" else "v", TensorProto.FLOAT, None))
    if activation != "gelu":
        inits = {k: v for k, v in inits.items() if k not in ("sqrt2", "one", "half")}
        inits["g_z"] = np.array(0, np.uint8)  # a ReLU's calibrated range starts at 0
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, c])],
        outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fused_mlp_agrees(model, original, rng, seed):
    """The fused MLP ``model`` gives what the ``original`` graph gives, up to one quantization
    step of the activation (0.02; the GELU's float32 error, or a tie ONNX Runtime's
    QuantizeLinear rounds through a reciprocal) times a column of W2, in rare elements.

    Returns:
        the input used, that step, and session options with the library registered."""
    options = ort.SessionOptions()
    ort_ops.register(options)
    fused = ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 5, 6)).astype(np.float32) * 4
    a, b = fused.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]
    step = 0.02 * float(np.abs(onnx.numpy_helper.to_array(
        next(t for t in model.graph.initializer if t.name == "w2_q"))).max() * 0.03)
    assert float(np.abs(a - b).max()) <= step, seed
    assert float(np.mean(a != b)) <= 0.05, seed
    return x, step, options


def test_the_rewrite_fuses_exactly_the_gelu_quantize_chain(tmp_path):
    from export.precision import fuse_gelu_quantize

    _library_or_skip()
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    model = _mlp_graph(rng)
    original = model.SerializeToString()
    assert fuse_gelu_quantize(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(ort_ops.GELU_QUANTIZE_OP) == 1 and not {"Erf", "Div", "QuantizeLinear",
                                                             "Add"} & set(ops), ops
    assert not {"sqrt2", "one", "half"} & {t.name for t in model.graph.initializer}
    x, step, options = _fused_mlp_agrees(model, original, rng, seed)
    kept = _mlp_graph(rng, extra_reader=True)
    assert fuse_gelu_quantize(kept) == 0
    assert "Erf" in [n.op_type for n in kept.graph.node]
    # a GELU input that is no bias + product (a conv MLP's): fused with a bias of 0, the Add kept
    unbiased = _mlp_graph(rng)
    for node in unbiased.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == "w1_q":
            node.input[0] = "w1_q_other"  # W1 is no longer a constant: the bias stays apart
    unbiased.graph.input.append(onnx.helper.make_tensor_value_info(
        "w1_q_other", onnx.TensorProto.INT8, [6, 24]))
    w1 = onnx.numpy_helper.to_array(next(t for t in unbiased.graph.initializer
                                         if t.name == "w1_q"))
    reference = ort.InferenceSession(unbiased.SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    assert fuse_gelu_quantize(unbiased) == 1
    ops = [n.op_type for n in unbiased.graph.node]
    assert ops.count("Add") == 1 and "Erf" not in ops, ops
    feeds = {"x": x, "w1_q_other": w1}
    a = ort.InferenceSession(unbiased.SerializeToString(), options,
                             providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert float(np.abs(a - reference.run(None, feeds)[0]).max()) <= step, seed


def test_the_rewrite_fuses_exactly_the_relu_quantize_chain():
    from export.precision import fuse_relu_quantize

    _library_or_skip()
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    model = _mlp_graph(rng, activation="relu")
    original = model.SerializeToString()
    assert fuse_relu_quantize(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(ort_ops.RELU_QUANTIZE_OP) == 1 and not {"Relu", "Add", "QuantizeLinear"} \
        & set(ops), ops
    assert "b1" in next(n for n in model.graph.node if n.op_type == ort_ops.RELU_QUANTIZE_OP).input
    _fused_mlp_agrees(model, original, rng, seed)
    # the Relu's input read elsewhere too, or a GELU: nothing fused
    for other in (_mlp_graph(rng, extra_reader=True, activation="relu"), _mlp_graph(rng)):
        assert fuse_relu_quantize(other) == 0
        assert "QuantizeLinear" in [n.op_type for n in other.graph.node]


_LQ_INPUTS = ("x", "x_scale", "x_zero_point", "gamma", "beta", "epsilon", "y_scale",
              "y_zero_point")


def _layernorm_quantize_session(tmp_path, rank):
    from onnx import TensorProto

    types = [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT,
             TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.UINT8]
    shapes = [[None] * rank, [], [], [None], [None], [], [], []]
    return _omg_op_session(tmp_path, ort_ops.LAYERNORM_QUANTIZE_OP,
                           list(zip(_LQ_INPUTS, types, shapes)))


def _layernorm_quantize_check(feeds, got, seed):
    """``got`` is the exact float64 chain ``DQ -> LayerNorm (last axis) -> Q``, except by one
    step where the exact value lies within the kernel's float32 error of a rounding boundary
    (the normalised value as ``x * a + b`` with a, b rounded to float32, then ``* gamma + beta``
    and a division: a few float32 ulps of the terms)."""
    x = (feeds["x"].astype(np.float64) - float(feeds["x_zero_point"])) * float(feeds["x_scale"])
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + float(feeds["epsilon"]))
    normal = (x - mean) * inv
    gamma, beta = feeds["gamma"].astype(np.float64), feeds["beta"].astype(np.float64)
    exact = (normal * gamma + beta) / float(feeds["y_scale"])
    want = np.clip(np.rint(exact) + int(feeds["y_zero_point"]), 0, 255)
    off = np.abs(got.astype(np.int64) - want)
    assert off.max() <= 1, seed
    terms = np.abs(x + float(feeds["x_zero_point"]) * float(feeds["x_scale"])) * inv \
        + np.abs(mean * inv)  # |x * a| + |b|
    ulp = 2.0 ** -23
    slack = 4 * ulp * (terms * np.abs(gamma) + np.abs(normal * gamma) + np.abs(beta)) \
        / float(feeds["y_scale"]) + 4 * ulp * np.abs(exact)
    boundary = np.abs(np.abs(exact - np.floor(exact)) - 0.5)  # distance to x.5
    assert np.all(boundary[off > 0] <= slack[off > 0]), seed


def _layernorm_quantize_feeds(rng, shape):
    x = rng.integers(0, 256, shape).astype(np.uint8)
    if len(shape) > 1 and shape[-1] > 1:
        x[(0,) * (len(shape) - 1)] = rng.integers(0, 256)  # a constant row: variance 0
    c = shape[-1]
    return {
        "x": x,
        "x_scale": np.array(rng.uniform(0.001, 0.2), np.float32),
        "x_zero_point": np.array(rng.integers(0, 256), np.uint8),
        "gamma": rng.uniform(-2, 2, c).astype(np.float32),
        "beta": rng.standard_normal(c).astype(np.float32),
        "epsilon": np.array(rng.choice([1e-6, 1e-5]), np.float32),
        # a calibrated output's step (about 8 / 255), and one small enough to saturate
        "y_scale": np.array(rng.choice([0.03, 0.004]), np.float32),
        "y_zero_point": np.array(rng.integers(0, 256), np.uint8),
    }


@pytest.mark.parametrize("shape", [(37, 61), (2, 5, 192), (1, 1), (3, 1536)])
def test_layernorm_quantize_is_the_exact_chain_rounded(tmp_path, shape):
    _library_or_skip()
    session = _layernorm_quantize_session(tmp_path, len(shape))
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    for _ in range(2):  # a second call on other inputs: every element written again
        feeds = _layernorm_quantize_feeds(rng, shape)
        got = session.run(None, feeds)[0]
        assert got.shape == shape and got.dtype == np.uint8, seed
        _layernorm_quantize_check(feeds, got, seed)


def test_layernorm_quantize_refuses_inputs_that_do_not_fit(tmp_path):
    _library_or_skip()
    session = _layernorm_quantize_session(tmp_path, 2)
    good = _layernorm_quantize_feeds(np.random.default_rng(0), (3, 4))
    assert session.run(None, good)[0].shape == (3, 4)
    for name, bad in [("gamma", np.ones(5, np.float32)), ("beta", np.ones(3, np.float32)),
                      ("y_scale", np.array(0.0, np.float32)),
                      ("x_scale", np.array(-1.0, np.float32)),
                      ("epsilon", np.array(np.inf, np.float32))]:
        with pytest.raises(Exception, match="LayerNormQuantize"):
            session.run(None, {**good, name: bad})


def _norm_graph(rng, *, transpose=True, extra_reader=False):
    """ConvNeXt's norm as ``quantize_int8`` leaves it: a quantized NCHW map (Q -> DQ), Transpose
    to NHWC, LayerNormalization over C, Q -> DQ, DQ(W) MatMul. ``transpose=False``: an NHWC map
    and no Transpose. ``extra_reader``: the norm's output is a graph output too (not private)."""
    from onnx import TensorProto, helper, numpy_helper

    c = 12
    inits = {
        "x_s": np.array(0.05, np.float32), "x_z": np.array(128, np.uint8),
        "gamma": rng.uniform(0.5, 2, c).astype(np.float32),
        "beta": rng.standard_normal(c).astype(np.float32) * 0.1,
        "n_s": np.array(0.03, np.float32), "n_z": np.array(120, np.uint8),
        "w_q": rng.integers(-127, 128, (c, 5)).astype(np.int8),
        "w_s": (rng.random(5) * 0.02 + 0.01).astype(np.float32), "w_z": np.zeros(5, np.int8),
    }
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"])]
    if transpose:
        nodes.append(helper.make_node("Transpose", ["xd"], ["xt"], perm=[0, 2, 3, 1]))
    nodes += [
        helper.make_node("LayerNormalization", ["xt" if transpose else "xd", "gamma", "beta"],
                         ["n"], axis=-1, epsilon=1e-6),
        helper.make_node("QuantizeLinear", ["n", "n_s", "n_z"], ["nq"]),
        helper.make_node("DequantizeLinear", ["nq", "n_s", "n_z"], ["nd"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1),
        helper.make_node("MatMul", ["nd", "w"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, None))
    shape = [1, c, 7, 9] if transpose else [1, 7, 9, c]
    graph = helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs,
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), shape


@pytest.mark.parametrize("transpose", [True, False])
def test_the_rewrite_fuses_exactly_the_layernorm_quantize_chain(transpose):
    from export.precision import fuse_layernorm_quantize

    _library_or_skip()
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    model, shape = _norm_graph(rng, transpose=transpose)
    original = model.SerializeToString()
    assert fuse_layernorm_quantize(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(ort_ops.LAYERNORM_QUANTIZE_OP) == 1 and "LayerNormalization" not in ops, ops
    assert ops.count("Transpose") == int(transpose) and ops.count("QuantizeLinear") == 1, ops
    options = ort.SessionOptions()
    ort_ops.register(options)
    fused = ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    a, b = fused.run(None, {"x": x})[0], plain.run(None, {"x": x})[0]
    # one quantization step of the norm (0.03) times a weight at most, in rare elements
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_q"))
    step = 0.03 * float(np.abs(w).max()) * 0.03
    assert a.shape == b.shape and float(np.abs(a - b).max()) <= step, seed
    assert float(np.mean(a != b)) <= 0.05, seed
    kept, _ = _norm_graph(rng, transpose=transpose, extra_reader=True)
    assert fuse_layernorm_quantize(kept) == 0
    assert "LayerNormalization" in [n.op_type for n in kept.graph.node]


def _attention_session(tmp_path):
    from onnx import TensorProto

    f32 = TensorProto.FLOAT
    return _one_node_session(tmp_path, ort_ops.MASKED_ATTENTION_OP, ort_ops.OPS_DOMAIN,
                             {"q": f32, "k": f32, "v": f32, "allowed": TensorProto.BOOL})


def _attention_case(rng, b, nq, nk, m, d, density, mask_b=None):
    """Scores spread like a trained decoder's (logits of a few units), blob-like masks (rows of
    neighbouring keys, as a mask's region at a stride), every seventh row blocked entirely."""
    q, k, v = (rng.standard_normal((b, n, m, d)).astype(np.float32) for n in (nq, nk, nk))
    start = rng.integers(0, nk, (mask_b or b, 1, nq, 1))
    width = np.maximum(1, (rng.random((mask_b or b, 1, nq, 1)) * 2 * density * nk).astype(int))
    keys = np.arange(nk)[None, None, None]
    allowed = ((keys - start) % nk) < width
    allowed |= rng.random(allowed.shape) < density / 4  # and scattered keys
    allowed[:, :, ::7] = False  # Mask2Former's empty-row rule: these attend to every key
    return {"q": q, "k": k, "v": v, "allowed": allowed}


def _attention_reference(feeds):
    from kernels.reference import masked_attention_reference

    heads = lambda x: torch.from_numpy(x).transpose(1, 2)  # noqa: E731 - (B, L, M, d) -> (B, M, L, d)
    out = masked_attention_reference(heads(feeds["q"]), heads(feeds["k"]), heads(feeds["v"]),
                                     torch.from_numpy(feeds["allowed"]))
    return out.transpose(1, 2).numpy()


@pytest.mark.parametrize("case", [
    (2, 11, 37, 3, 5, 0.3, None),  # odd sizes, a partial key tile, batch 2
    (1, 300, 700, 8, 32, 0.1, None),  # the decoder's queries and heads, three query chunks
    (1, 65, 130, 4, 16, 0.02, None),  # the tiny model's head width, nearly all blocked
    (1, 5, 64, 2, 128, 0.5, None),  # the widest head, one tile exactly
    (3, 9, 9, 2, 8, 0.2, 1),  # one mask for every batch row (prompt-mode self-attention)
    (1, 1, 1, 1, 1, 1.0, None),  # one of everything
])
def test_masked_attention_is_the_reference(tmp_path, case):
    """``omg_rt::MaskedAttention`` (online softmax over key tiles, blocked tiles skipped) against
    the PyTorch reference of the portable graphs on fresh random inputs every run; output
    poisoned first by ONNX Runtime's arena reuse across the runs."""
    _library_or_skip()
    session = _attention_session(tmp_path)
    *shape, mask_b = case
    rng = np.random.default_rng()
    for _ in range(2):  # the second run's output buffer held the first's values
        feeds = _attention_case(rng, *shape, mask_b=mask_b)
        out = session.run(None, feeds)[0]
        expected = _attention_reference(feeds)
        assert out.shape == expected.shape and np.isfinite(out).all()
        err = float(np.abs(out - expected).max() / np.abs(expected).max())
        assert err <= RTOL, (case, err)


def test_masked_attention_refuses_inputs_that_do_not_fit(tmp_path):
    _library_or_skip()
    session = _attention_session(tmp_path)
    good = _attention_case(np.random.default_rng(0), 2, 4, 6, 2, 8, 0.5)
    bad_cases = {
        "heads": {**good, "k": good["k"][:, :, :1]},  # k has another M than q
        "values": {**good, "v": good["v"][:, :5]},  # v has fewer keys than k
        "mask": {**good, "allowed": good["allowed"][..., :5]},  # a mask of other keys
        "width": {key: np.zeros((2, n, 2, 129), np.float32) if key != "allowed" else value
                  for key, value, n in zip(good, good.values(), (4, 6, 6, 0))},  # D > 128
    }
    for feeds in bad_cases.values():
        with pytest.raises(Exception, match="MaskedAttention"):
            session.run(None, feeds)
    assert np.isfinite(session.run(None, good)[0]).all()  # the session keeps serving


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
    built = ort_ops.library()
    assert built.is_file() and built.is_relative_to(tmp_path / "cache")
    assert built.stat().st_mtime == ort_ops.library().stat().st_mtime  # not rebuilt
    monkeypatch.setenv("CC", "no-such-compiler-omg")
    with pytest.raises(BackendUnavailableError, match="no C compiler"):
        ort_ops.library()


def test_the_bundles_fused_decoders_run_and_equal_the_portable_ones(tmp_path, monkeypatch):
    """The cpu target exports the pixel and query decoders twice (portable, fused) at FP32 and
    INT8; the runtime runs the fused ones where the operators build, the portable ones where
    they cannot, and both give the same results on an image and on a two-frame clip."""
    _library_or_skip()
    import types

    from export import build_bundle
    from omg_rt import Segmenter
    from omg_rt.bundle import load_bundle
    from tests.omg_rt.test_runtime_support import NAMES, NUM_THINGS, merging_model, scene

    model = merging_model()
    bundle_dir = build_bundle(model, tmp_path / "bundle", image_size=128,
                              vocab=types.SimpleNamespace(names=NAMES, num_things=NUM_THINGS),
                              precisions=("fp32", "int8"), verify=False, progress=False)
    graphs = load_bundle(bundle_dir).graphs
    assert graphs["pixel_decoder"].fused_files == {"fp32": "fused/pixel_decoder.onnx",
                                                   "int8": "int8/fused/pixel_decoder.onnx"}
    assert graphs["encoder"].fused_files == {"int8": "int8/fused/encoder.onnx"}
    assert graphs["query_decoder"].fused_files == {"fp32": "fused/query_decoder.onnx",
                                                   "int8": "fused/query_decoder.onnx"}
    fused_graph = onnx.load(str(bundle_dir / "fused" / "query_decoder.onnx"))
    ops = [n.op_type for n in fused_graph.graph.node]
    # every layer's cross-attention and (masked in prompt mode) self-attention: no score tensor
    assert ops.count(ort_ops.MASKED_ATTENTION_OP) == 2 * len(model.query_decoder.layers)
    assert "Softmax" not in ops
    # every deformable-attention layer's FFN: bias, ReLU and quantization in one node
    ops = [n.op_type for n in onnx.load(
        str(bundle_dir / "int8" / "fused" / "pixel_decoder.onnx")).graph.node]
    assert ops.count(ort_ops.RELU_QUANTIZE_OP) == len(model.pixel_decoder.encoder) > 0, ops
    image = scene(5, (90, 130))
    clip = [scene(6, (90, 130)), scene(7, (90, 130))]
    for precision in ("fp32", "int8"):
        fused = Segmenter.from_bundle(bundle_dir, backend="onnxruntime", precision=precision)
        for graph in ("pixel_decoder", "query_decoder"):
            name = fused.pipeline.runners[graph].backend.name
            assert name.endswith("+omg-ops"), (precision, graph, name)
        name = fused.pipeline.runners["encoder"].backend.name
        assert name.endswith("+omg-ops") == (precision == "int8"), (precision, name)
        monkeypatch.setenv("CC", "no-such-compiler-omg")
        portable = Segmenter.from_bundle(bundle_dir, backend="onnxruntime", precision=precision)
        monkeypatch.delenv("CC")
        for graph in ("pixel_decoder", "query_decoder"):
            assert "+omg-ops" not in portable.pipeline.runners[graph].backend.name
        pairs = [(fused.predict(image), portable.predict(image))]
        pairs.append(tuple(  # type: ignore[arg-type]
            seg.predict_clip([seg.image_encoder.frame_session(f, "frame") for f in clip])
            for seg in (fused, portable)))
        for a, b in pairs:
            np.testing.assert_allclose(a.class_scores, b.class_scores, atol=1e-3,
                                       err_msg=precision)
            agree = ((a.mask_logits > 0) == (b.mask_logits > 0)).mean()
            assert agree >= 0.999, (precision, agree)
        assert pairs[1][0].mask_logits.shape[1] == len(clip)


_SESSION_SCRIPT = """
import sys
import onnxruntime as ort
from omg_rt.backends import ort_ops
options = ort.SessionOptions()
options.add_session_config_entry("session.set_denormal_as_zero", "1")
if sys.argv[2] == "omg":
    ort_ops.inference_session(sys.argv[1], options, ["CPUExecutionProvider"])
else:
    ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(int(float.__mul__(2.0**-1070, 0.5) > 0.0))  # a subnormal float64 survives
"""


def test_creating_a_session_leaves_the_callers_denormals_alone(tmp_path):
    """ONNX Runtime's ``session.set_denormal_as_zero`` (every omg-rt session sets it for its own
    threads) switches the thread that creates a process's session to flush-to-zero for good, the
    caller's numpy and Python arithmetic with it; sessions made through
    ``ort_ops.inference_session`` give the caller its floating-point state back (each case in a
    fresh process)."""
    _library_or_skip()
    import subprocess
    import sys

    from onnx import TensorProto, helper

    from tests.conftest import REPO

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    kept = {}
    for how in ("onnxruntime", "omg"):
        done = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(path), how],
                              capture_output=True, text=True, cwd=REPO, check=True)
        kept[how] = done.stdout.strip()
    assert kept == {"onnxruntime": "0", "omg": "1"}, kept
