"""INT8 of graphs stored with external data: export, agreement with FP32, the integer kernels
ONNX Runtime's CPU provider really runs, feed checks, and the photo calibration set."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import precision
from export.graphs import graph_defs
from export.onnx_export import export_graph
from omg_rt.errors import InvalidInputError
from omg_rt.preprocess import prepare_image
from training.model import build_model

SIZE = 64
# ||int8 - fp32|| / ||fp32|| per output on the calibration photos. The tiny model's random
# weights give up to ~0.11 on its stride-32 map (0.02-0.03 elsewhere).
INT8_REL_ERROR = 0.2


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """The tiny model's encoder and pixel decoder, every weight in ``<graph>.onnx.data``."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.no_grad():
        defs = graph_defs(model, (SIZE, SIZE))
    out = tmp_path_factory.mktemp("fp32")
    return {name: export_graph(defs[name], out / f"{name}.onnx", external_data_bytes=0)
            for name in precision.INT8_GRAPHS}


@pytest.fixture(scope="module")
def photos():
    """Six photos at their own padded sizes (96 x 96, 64 x 96, ...), as bundles calibrate."""
    photos = list(precision.calibration_photos((96, 96), names=precision.CALIBRATION_PHOTOS[:6]))
    assert len({x.shape for x in photos}) > 1
    return photos


@pytest.fixture(scope="module")
def int8(fp32, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    encoder = precision.quantize_int8(fp32["encoder"], out / "encoder.onnx",
                                      [{"image": x} for x in photos], desc="enc", progress=False)
    session = _session(fp32["encoder"])
    pixel_decoder = precision.quantize_int8(
        fp32["pixel_decoder"], out / "pixel_decoder.onnx",
        precision.encoder_feeds(session, photos), desc="pd", progress=False)
    return {"encoder": encoder, "pixel_decoder": pixel_decoder}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ops(path):
    graph = onnx.load_model(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_of_an_external_data_graph_exports_runs_and_agrees_with_fp32(fp32, int8, photos):
    assert fp32["encoder"].with_name("encoder.onnx.data").stat().st_size > 100_000
    # only the graph is left beside the target: the temporary directory is gone
    assert sorted(p.name for p in int8["encoder"].parent.iterdir()) == [
        "encoder.onnx", "pixel_decoder.onnx"]
    onnx.checker.check_model(str(int8["encoder"]))
    reference, quantized = _session(fp32["encoder"]), _session(int8["encoder"])
    names = [o.name for o in reference.get_outputs()]
    for image in photos[:3]:
        expected = reference.run(None, {"image": image})
        got = quantized.run(None, {"image": image})
        for name, a, b in zip(names, expected, got):
            assert b.shape == a.shape and b.dtype == np.float32
            rel = np.linalg.norm(b - a) / np.linalg.norm(a)
            assert rel < INT8_REL_ERROR, (name, rel)
            assert rel > 0  # it did quantize


def test_large_int8_graph_keeps_its_weights_in_external_data(fp32, photos, tmp_path):
    target = precision.quantize_int8(fp32["encoder"], tmp_path / "encoder.onnx",
                                     [{"image": photos[0]}], desc="enc", progress=False,
                                     external_data_bytes=0)
    data = target.with_name("encoder.onnx.data")
    assert data.stat().st_size > 50_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    assert _session(target).run(None, {"image": photos[0]})[0].shape[1] > 0


def test_onnx_runtime_runs_integer_convolutions_and_matmuls(fp32, int8):
    assert precision.integer_op_counts(fp32["encoder"]) == {}  # FP32 runs no integer kernel
    source = _ops(fp32["encoder"])
    optimized = precision.optimized_op_counts(int8["encoder"])
    # every Conv of the ConvNeXt became an integer convolution; nothing left in float
    assert precision.integer_op_counts(int8["encoder"]) == {"QLinearConv": source["Conv"]}
    assert "Conv" not in optimized and "FusedConv" not in optimized
    assert optimized["LayerNormalization"] == source["LayerNormalization"]  # kept float
    assert optimized["Erf"] == source["Erf"]  # GELU kept float

    source = _ops(fp32["pixel_decoder"])
    counts = precision.integer_op_counts(int8["pixel_decoder"])
    optimized = precision.optimized_op_counts(int8["pixel_decoder"])
    integer_matmuls = sum(counts.get(op, 0) for op in
                          ("QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger"))
    assert integer_matmuls == source["MatMul"] and counts["QLinearConv"] == source["Conv"]
    assert optimized["Softmax"] == source["Softmax"]
    assert optimized["GridSample"] == source["GridSample"]
    # ONNX Runtime folds a residual Add into SkipLayerNormalization, a float op too
    layer_norms = optimized["LayerNormalization"] + optimized.get("SkipLayerNormalization", 0)
    assert layer_norms == source["LayerNormalization"]
    assert "MatMul" not in optimized and "FusedMatMul" not in optimized


def test_float_ops_read_the_float_activation_not_its_8_bit_copy(fp32, int8):
    """The residual stream stays float: only Conv / MatMul / Gemm read a DequantizeLinear of an
    activation (except what a fused op's own quantized output feeds)."""
    for name in precision.INT8_GRAPHS:
        graph = onnx.load_model(str(int8[name]), load_external_data=False).graph
        producers = {out: node for node in graph.node for out in node.output}
        weights = {i.name for i in graph.initializer}
        float_readers_of_copies = []
        for node in graph.node:
            if node.op_type in precision.INT8_OPS + ("QuantizeLinear", "DequantizeLinear"):
                continue
            for tensor in node.input:
                dq = producers.get(tensor)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                q = producers.get(dq.input[0])
                source = producers.get(q.input[0]) if q is not None else None
                if q is not None and q.input[0] not in weights and (
                        source is None or source.op_type not in precision.INT8_OPS):
                    float_readers_of_copies.append((node.op_type, tensor))
        assert float_readers_of_copies == [], (name, float_readers_of_copies[:5])
        source = _ops(fp32[name])
        adds = [n for n in graph.node if n.op_type == "Add"]
        assert len(adds) == source["Add"]  # nothing else changed


def test_keep_float_paths_rewires_a_residual_and_drops_the_unread_pair():
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    scale = helper.make_tensor("s", f32, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    weight = helper.make_tensor("w", f32, [1, 1, 1, 1], [1.0])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["a_q"]),
        helper.make_node("DequantizeLinear", ["a_q", "s", "z"], ["a_dq"]),
        helper.make_node("Conv", ["a_dq", "w"], ["c"]),
        helper.make_node("Add", ["a_dq", "c"], ["y"]),  # the residual
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", f32, [1, 1, 2, 2])],
                              [scale, zero, weight])
    assert precision.keep_float_paths(graph) == 1
    add = next(n for n in graph.node if n.op_type == "Add")
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert list(add.input) == ["a", "c"] and list(conv.input) == ["a_dq", "w"]
    # a pair read only by float ops disappears
    graph.node[-2].input[0] = "a"  # the Conv reads the float tensor too now
    assert precision.keep_float_paths(graph) == 0
    assert [n.op_type for n in graph.node] == ["Relu", "Conv", "Add"]


def test_activation_zero_points_asymmetric_uint8_or_symmetric_int8(fp32, int8, photos, tmp_path):
    def zero_points(path):
        graph = onnx.load_model(str(path)).graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        return [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]

    asymmetric = zero_points(int8["encoder"])
    assert asymmetric and all(z.dtype == np.uint8 for z in asymmetric)
    assert any(int(z) != 0 for z in asymmetric)
    symmetric = precision.quantize_int8(fp32["encoder"], tmp_path / "encoder.onnx",
                                        [{"image": x} for x in photos], desc="enc",
                                        progress=False, symmetric_activations=True)
    points = zero_points(symmetric)
    assert points and all(z.dtype == np.int8 and not z.any() for z in points)


@pytest.mark.parametrize("feeds, message", [
    ([], "expected at least one"),
    ([{"images": np.zeros((1, 3, SIZE, SIZE), np.float32)}], "expected the inputs ['image']"),
    ([{"image": np.zeros((1, 3, SIZE, SIZE), np.float64)}], "float32"),
    ([{"image": np.zeros((3, SIZE, SIZE), np.float32)}], "shape ('?', 3, '?', '?')"),
    ([{"image": np.zeros((1, 4, SIZE, SIZE), np.float32)}], "got (1, 4, 64, 64)"),
])
def test_a_bad_feed_is_refused_before_any_work(fp32, tmp_path, feeds, message):
    with pytest.raises(InvalidInputError) as err:
        precision.quantize_int8(fp32["encoder"], tmp_path / "int8" / "encoder.onnx", feeds,
                                desc="enc", progress=False)
    assert message in str(err.value) and "encoder.onnx" in str(err.value)
    assert not (tmp_path / "int8").exists()  # nothing written


def test_calibration_photos_are_prepared_as_the_runtime_does():
    photos = list(precision.calibration_photos((128, 128)))
    assert len(photos) == len(precision.CALIBRATION_PHOTOS)
    shapes = {x.shape[2:] for x in photos}
    assert len(shapes) > 2  # each keeps its own aspect ratio
    assert all(h % 32 == 0 and w % 32 == 0 and max(h, w) == 128 for h, w in shapes)
    import skimage.data

    coffee = precision.CALIBRATION_PHOTOS.index("coffee")
    expected = prepare_image(skimage.data.coffee(), (128, 128)).tensor
    np.testing.assert_array_equal(photos[coffee], expected)

    fixed = list(precision.calibration_photos((128, 128), fixed_hw=(96, 128)))
    assert {x.shape for x in fixed} == {(1, 3, 96, 128)}
    # coffee (400 x 600) fits the box at 85 x 128: the rows below are zero padding
    assert not fixed[coffee][:, :, 85:].any() and fixed[coffee][:, :, 84].any()
    assert all(x.dtype == np.float32 for x in fixed)


def test_default_calibration_images_for_the_bundle():
    images = precision.default_calibration_images(64, (123.675, 116.28, 103.53),
                                                  (58.395, 57.12, 57.375))
    assert len(images) == len(precision.CALIBRATION_PHOTOS)
    assert all(x.shape[:2] == (1, 3) and max(x.shape[2:]) == 64 for x in images)
    square = precision.default_calibration_images(64, (0, 0, 0), (1, 1, 1), fixed_hw=(64, 64))
    assert {x.shape for x in square} == {(1, 3, 64, 64)}
    assert max(float(x.max()) for x in square) > 200  # unnormalised pixels with mean 0, std 1


def _cast_graph(second_to: int) -> onnx.GraphProto:
    """Two Casts of one input writing the same name (onnxruntime <= 1.30's FP16 converter)."""
    h = onnx.helper
    casts = [h.make_node("Cast", ["x"], ["x_fp32"], name=f"cast{i}", to=to)
             for i, to in enumerate((onnx.TensorProto.FLOAT, second_to))]
    add = h.make_node("Add", ["x_fp32", "x_fp32"], ["y"], name="add")
    return h.make_graph([casts[0], add, casts[1]], "g",
                        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [2])],
                        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])


def test_fp16_conversion_drops_a_node_repeated_under_the_same_output_name():
    graph = _cast_graph(onnx.TensorProto.FLOAT)
    precision._drop_repeated_nodes(graph)
    assert [n.name for n in graph.node] == ["cast0", "add"]
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = run.run(None, {"x": np.array([1.5, -2.0], np.float16)})[0]
    np.testing.assert_array_equal(y, [3.0, -4.0])


def test_fp16_conversion_refuses_two_different_nodes_writing_one_name():
    graph = _cast_graph(onnx.TensorProto.DOUBLE)
    with pytest.raises(ValueError, match="cast0.*cast1.*x_fp32"):
        precision._drop_repeated_nodes(graph)
