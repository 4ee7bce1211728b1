"""FP16 and INT8 variants of the exported graphs.

FP16 (``fp16/``): ONNX Runtime's float16 converter with the inputs and outputs kept FP32 and FP32
islands by op type: LayerNorm (ConvNeXt's LayerNorm overflows in FP16, cf. EfficientViT-SAM #142),
GroupNorm (InstanceNormalization), softmax and every reduction, divisions (the mask-pooling
denominator counts up to (S/4)^2 pixels: 65536 at 1024, above FP16's 65504), Einsum,
GridSample (deformable attention accumulates in FP32 as the kernels do) and the sine positional
codes; and by node, the products with the mask features (:func:`mask_feature_products`: the mask
logits, whose sign decides the attention masks, and the mask pooling, a sum over all pixels).

INT8 (``int8/``): ONNX Runtime static quantization, QDQ format, per-channel symmetric INT8
weights and activations calibrated (MinMax) on images — by default scikit-image's bundled photos
prepared as the runtime prepares images (:func:`calibration_photos`): the encoder on the photos,
the pixel decoder on the encoder's FP32 features of the same photos. Activations are asymmetric
UINT8 for ONNX Runtime's x86 kernels (U8S8), symmetric INT8 for TensorRT. Only Conv / MatMul /
Gemm are quantized; :func:`integer_op_counts` says which of them ONNX Runtime's CPU provider
really runs as integer kernels. Graphs with external data work end to end. The query decoder
stays FP32: its masked attention thresholds mask logits at 0, and INT8 flips those masks
(TensorRT INT8 recipes also keep transformer decoders in FP16/FP32).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
    save_tensors_data,
)
from onnxruntime.quantization.quant_utils import add_pre_process_metadata
from onnxruntime.transformers.float16 import convert_float_to_float16
from tqdm import tqdm

from export.onnx_export import EXTERNAL_DATA_BYTES, save_model
from omg_rt.backends import ort_ops
from omg_rt.errors import InvalidInputError
from omg_rt.preprocess import keep_ratio_size, normalize_and_pad, prepare_image
from omg_rt.spec import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISOR

FP16_KEEP_FP32_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax", "ReduceSum",
    "ReduceMean", "ReduceMax", "ReduceL2", "Div", "Einsum", "GridSample", "Sin", "Cos", "Range",
    "CumSum",
)
FP16_GRAPHS = ("encoder", "pixel_decoder", "query_decoder", "prompt_decoder", "clip_head")
INT8_GRAPHS = ("encoder", "pixel_decoder")
INT8_OPS = ("Conv", "MatMul", "Gemm")
# what ONNX Runtime's CPU provider turns QDQ Conv / MatMul / Gemm into when it fuses them
INTEGER_OPS = (
    "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QGemm", "QAttention",
)
# scikit-image's bundled photos (in the wheel, no download): scenes, objects, people, textures
CALIBRATION_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field",
    "immunohistochemistry", "camera", "coins", "clock", "moon", "page",
)


def convert_fp16(source: Path, target: Path) -> Path:
    """FP32 graph -> FP16 graph with FP32 I/O and the FP32 islands of :data:`FP16_KEEP_FP32_OPS`
    and :func:`mask_feature_products`."""
    model = onnx.load_model(str(source))
    half = convert_float_to_float16(model, keep_io_types=True,
                                    op_block_list=list(FP16_KEEP_FP32_OPS),
                                    node_block_list=mask_feature_products(model.graph))
    _drop_repeated_nodes(half.graph)
    _topological_sort(half.graph)  # the converter appends its input casts at the end
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model(half, target)
    return target


def mask_feature_products(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMul nodes that multiply the mask features (``mask_features`` input, as it
    is or reshaped / resized / transposed): the mask logits, whose sign decides the attention
    masks, and the mask pooling, a sum over every pixel. FP16 keeps them FP32, as it keeps
    the einsums they were. Unnamed nodes get a name."""
    producers = {out: node for node in graph.node for out in node.output}
    passing = {"Reshape", "Flatten", "Transpose", "Resize", "Slice", "Concat", "Unsqueeze",
               "Squeeze", "Split", "Identity"}
    reaches: dict[str, bool] = {}

    def from_features(name: str) -> bool:
        if name not in reaches:
            reaches[name] = False  # memoised: a tensor read by several products is walked once
            node = producers.get(name)
            if node is None:
                reaches[name] = name == "mask_features"
            elif node.op_type in passing:
                reaches[name] = any(from_features(i) for i in node.input if i)
        return reaches[name]

    names = []
    for index, node in enumerate(graph.node):
        if node.op_type == "MatMul" and any(from_features(i) for i in node.input):
            if not node.name:
                node.name = f"mask_feature_product_{index}"
            names.append(node.name)
    return names


def _drop_repeated_nodes(graph: onnx.GraphProto) -> None:
    """Remove the copies of a node that recompute an output an identical node already produces.

    onnxruntime <= 1.30's converter casts a float16 initializer back to float32 once per blocked
    consumer, every Cast writing the same ``<name>_cast_to_fp32``, which breaks SSA form. A node
    writing an existing name with another computation is a real conflict and raises."""
    first: dict[str, onnx.NodeProto] = {}
    kept = []
    for node in graph.node:
        twin = next((first[o] for o in node.output if o in first), None)
        if twin is None:
            first.update(dict.fromkeys(node.output, node))
            kept.append(node)
            continue
        same = (twin.op_type == node.op_type and list(twin.input) == list(node.input)
                and list(twin.output) == list(node.output)
                and list(twin.attribute) == list(node.attribute))
        if not same:
            raise ValueError(f"FP16 conversion: nodes {twin.name!r} and {node.name!r} both write "
                             f"{sorted(set(twin.output) & set(node.output))}")
    if len(kept) < len(graph.node):
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in kept]
        del graph.node[:]
        graph.node.extend(copies)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs (stable)."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near {pending[0].name}")
        ready_ids = {id(n) for n in ready}
        for node in ready:
            ordered.append(node)
            produced.update(node.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


class _FeedReader(CalibrationDataReader):
    """Feeds one dict of named arrays per calibration step, with a progress bar."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]], desc: str, progress: bool) -> None:
        self._feeds = feeds
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)
        self._bar = tqdm(total=len(feeds), desc=desc, unit="batch", disable=not progress)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._iter, None)
        if item is None:
            self._bar.close()
        else:
            self._bar.update(1)
        return item

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_int8(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]], *,
                  desc: str, progress: bool = True, symmetric_activations: bool = False,
                  external_data_bytes: int = EXTERNAL_DATA_BYTES,
                  calibration: Path | None = None, keep_calibration: Path | None = None) -> Path:
    """Static QDQ INT8 quantization of ``source`` calibrated on ``feeds``; external data in and out.

    Weights: per-channel symmetric INT8 (Conv: output channels, MatMul / Gemm: output columns).
    Activations: asymmetric UINT8 by default — the type ONNX Runtime's x86 kernels run fastest
    (U8S8: VNNI's ``vpdpbusd`` multiplies unsigned by signed bytes; S8 activations are shifted to
    U8 at run time); ``symmetric_activations`` gives INT8 with zero-point 0 everywhere, which
    TensorRT requires. Only :data:`INT8_OPS` are quantized; LayerNorm, GELU, softmax, GridSample
    and the rest stay FP32.

    ``source`` may keep its weights in ``<source>.data``: the pre-processing (ONNX Runtime's basic
    graph optimisation + ONNX shape inference), the calibration and the quantizer all work on
    copies in a temporary directory beside ``target`` (removed afterwards), and the result is
    written with :func:`export.onnx_export.save_model` (weights in ``<target>.data`` when they
    exceed ``external_data_bytes``).

    ``calibration``: activation ranges saved by an earlier call (``keep_calibration``) instead of
    calibrating here: the fused flavour of a graph (omg-rt's custom operator in place of the
    GridSample form, ``omg_rt.backends.ort_ops``) takes the ranges of its portable twin, whose
    quantized tensors have the same names; ``feeds`` are then not run.

    Raises:
        InvalidInputError: ``feeds`` empty, or a feed whose names, dtypes or shapes do not fit
            ``source``'s inputs.
        BackendUnavailableError: a graph with omg-rt's custom operator where it cannot be built.
    """
    if calibration is None:
        _check_feeds(source, feeds)
    target.parent.mkdir(parents=True, exist_ok=True)
    activation = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix=f".{target.stem}.int8-", dir=target.parent) as tmp:
        work = Path(tmp)
        prepared, quantized = work / "prepared.onnx", work / "quantized.onnx"
        ranges = work / "calibration.json"
        _pre_process(source, prepared)
        with _temp_dir(work):  # onnxruntime.quantization's own temporary files land here too
            if calibration is not None:
                shutil.copyfile(calibration, ranges)
            else:
                # calibrate first and free the calibration session before the quantizer loads
                # the model again: ConvNeXt-L at 512 peaks at 6 GB instead of 7.2 GB
                calibrator = create_calibrator(
                    prepared, list(INT8_OPS), augmented_model_path=str(work / "augmented.onnx"),
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True)
                calibrator.collect_data(_FeedReader(feeds, desc, progress))
                save_tensors_data(calibrator.compute_data(), ranges)
                del calibrator
            if keep_calibration is not None:
                shutil.copyfile(ranges, keep_calibration)
            quantize_static(
                str(prepared), str(quantized), None, calibration_cache_path=ranges,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(INT8_OPS),
                per_channel=True,
                reduce_range=False,  # 7-bit weights only help CPUs without VNNI
                activation_type=activation,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                use_external_data_format=True,
                extra_options=_int8_options(symmetric_activations),
            )
        model = onnx.load_model(str(quantized))
        keep_float_paths(model.graph)
        save_model(model, target, external_data_bytes=external_data_bytes)
    return target


def keep_float_paths(graph: onnx.GraphProto) -> int:
    """Let float consumers read a quantized activation's float source, not its Q -> DQ copy.

    The QDQ quantizer puts ``QuantizeLinear -> DequantizeLinear`` on a tensor that a Conv or
    MatMul reads and hands the DQ output to *every* consumer. In ConvNeXt the depthwise conv
    reads the residual stream, so the residual Add of every block would add an 8-bit copy: the
    rounding error compounds over the 36 blocks. Here every consumer that is not one of
    :data:`INT8_OPS` reads the float tensor again (the Conv / MatMul keeps its DQ, so ONNX
    Runtime still fuses it); a Q / DQ pair left without readers is removed. Outputs of fused
    ops (``Conv -> Q``) are left alone: their readers get what ``QLinearConv`` produces.

    Returns:
        How many node inputs were rewired.
    """
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    weights = {i.name for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        source = producers.get(q.input[0])
        if source is not None and source.op_type in INT8_OPS:
            continue
        for node, i in readers.get(dq.output[0], []):
            if node.op_type not in INT8_OPS:
                node.input[i] = q.input[0]
                rewired += 1
    while True:  # drop Q / DQ nodes nobody reads any more
        read = {name for node in graph.node for name in node.input} | graph_outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(out in read for out in n.output)]
        if not dead:
            return rewired
        for node in dead:
            graph.node.remove(node)


class _Chains:
    """A graph's producers, readers and constants, for replacing a chain of nodes that nothing
    outside it reads by one of omg-rt's operators (:func:`fuse_gelu_quantize`,
    :func:`fuse_relu_quantize`, :func:`fuse_layernorm_quantize`)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.producers = {out: node for node in graph.node for out in node.output}
        self.readers: Counter[str] = Counter(name for node in graph.node for name in node.input)
        self.readers.update(o.name for o in graph.output)
        self.values = {i.name: i for i in graph.initializer}

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.values.get(name)
        return None if tensor is None else onnx.numpy_helper.to_array(tensor)

    def is_scalar(self, name: str, value: float) -> bool:
        array = self.constant(name)
        return array is not None and array.size == 1 and \
            abs(float(array.ravel()[0]) - value) <= 1e-6 * abs(value)

    def private(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The ``op_type`` node making ``name``, when the chain alone reads it (once)."""
        node = self.producers.get(name)
        ok = node is not None and node.op_type == op_type and self.readers[name] == 1
        return node if ok else None

    def per_tensor(self, scale: str, zero_point: str) -> bool:
        """Whether a (De)QuantizeLinear's scale and zero point are one float32 and one uint8."""
        values = (self.constant(scale), self.constant(zero_point))
        return values[0] is not None and values[1] is not None and values[0].size == 1 \
            and values[1].size == 1 and values[0].dtype == np.float32 \
            and values[1].dtype == np.uint8

    def quantizations(self) -> list[onnx.NodeProto]:
        """The QuantizeLinear nodes with one float32 scale and one uint8 zero point: where the
        chains end."""
        return [n for n in self.model.graph.node if n.op_type == "QuantizeLinear"
                and len(n.input) == 3 and self.per_tensor(*n.input[1:3])]

    def bias_of_product(self, add: onnx.NodeProto | None) -> tuple[str, str] | None:
        """(the product's output, the bias) where ``add`` is ``Add(bias, MatMul(a, DQ(W)))``
        with a 1-D float32 bias as long as W's columns (a linear layer's), the product read by
        the Add alone; else None."""
        if add is None or add.op_type != "Add":
            return None
        a, b = add.input
        for bias, product in ((a, b), (b, a)):
            vector = self.constant(bias)
            if vector is None or vector.ndim != 1 or vector.dtype != np.float32:
                continue
            matmul = self.private(product, "MatMul")
            weight_dq = matmul and self.producers.get(matmul.input[1])
            weight = self.constant(weight_dq.input[0]) \
                if weight_dq and weight_dq.op_type == "DequantizeLinear" else None
            if weight is not None and weight.ndim == 2 and weight.shape[1] == vector.shape[0]:
                return product, bias
        return None

    def add_constant(self, name: str, value: np.ndarray) -> str:
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def replace(self, chain: list[onnx.NodeProto], nodes: list[onnx.NodeProto]) -> None:
        """``nodes`` where ``chain`` began, ``chain`` removed."""
        graph = self.model.graph
        place = list(graph.node).index(chain[0])
        for old in chain:
            graph.node.remove(old)
        for offset, node in enumerate(nodes):
            graph.node.insert(place + offset, node)

    def finish(self, fused: int) -> int:
        """After ``fused`` replacements: drop the initializers nothing reads any more and import
        omg-rt's operator domain."""
        if fused:
            graph = self.model.graph
            read = {name for node in graph.node for name in node.input}
            for tensor in [t for t in graph.initializer if t.name not in read]:
                graph.initializer.remove(tensor)
            if all(o.domain != ort_ops.OPS_DOMAIN for o in self.model.opset_import):
                self.model.opset_import.append(
                    onnx.helper.make_opsetid(ort_ops.OPS_DOMAIN, 1))
        return fused


def fuse_gelu_quantize(model: onnx.ModelProto) -> int:
    """Replace each ``bias -> erf GELU -> QuantizeLinear`` chain after a quantized matrix product
    or convolution by omg-rt's ``omg_rt::BiasGeluQuantize`` node (``omg_rt.backends.ort_ops``), in
    place: the fused INT8 encoder of the cpu target (ConvNeXt's MLPs: ONNX Runtime would write
    the GELU in float32 and read it back to quantize it for the second product).

    A chain is fused only when it is exactly ``Mul(Mul(v, Add(Erf(Div(v, sqrt 2)), 1)), 0.5)``
    (the exporter's erf GELU, operands in either order) then ``QuantizeLinear`` with one float32
    scale and one uint8 zero point, with nothing else reading a tensor in between. Where ``v`` is
    ``Add(bias, MatMul(a, DQ(W)))`` with a 1-D float32 bias as long as W's columns (ConvNeXt-L's
    linear MLP) the bias joins the node; otherwise (the 1x1-conv MLP of small ConvNeXts, whose
    bias is inside the Conv) the node reads ``v`` with a bias of 0.

    Returns:
        How many chains were fused.
    """
    index = _Chains(model)
    private, is_scalar = index.private, index.is_scalar

    def other(node: onnx.NodeProto, name: str) -> str | None:
        """The operand of binary ``node`` that is not ``name`` (None when neither is)."""
        a, b = node.input
        return b if a == name else a if b == name else None

    def constant_operand(node: onnx.NodeProto, test) -> tuple[str, str] | None:
        """(constant operand that passes ``test``, the other operand) of binary ``node``."""
        a, b = node.input
        return (a, b) if test(a) else (b, a) if test(b) else None

    def chain_of(quantize: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, str] | None:
        """The chain ending at ``quantize``: its nodes, the GELU's input before the bias, and
        the bias ("" for none)."""
        half = private(quantize.input[0], "Mul")
        halved = half and constant_operand(half, lambda n: is_scalar(n, 0.5))
        product = halved and private(halved[1], "Mul")
        if not product:
            return None
        for v in product.input:  # Mul(v, Add(Erf(Div(v, sqrt 2)), 1))
            one = private(other(product, v) or "", "Add")
            plus_one = one and constant_operand(one, lambda n: is_scalar(n, 1.0))
            erf = plus_one and private(plus_one[1], "Erf")
            div = erf and private(erf.input[0], "Div")
            if div and div.input[0] == v and is_scalar(div.input[1], float(np.sqrt(2.0))) \
                    and index.readers[v] == 2:
                break
        else:
            return None
        gelu = [div, erf, one, product, half, quantize]
        source = index.producers.get(v)
        biased = index.bias_of_product(source)
        if source is not None and biased is not None:
            return [source, *gelu], *biased  # the product's bias folded in
        return gelu, v, ""

    fused = 0
    for quantize in index.quantizations():
        found = chain_of(quantize)
        if found is None:
            continue
        chain, product_output, bias = found
        if not bias:  # one zero for every column
            bias = index.add_constant(f"{quantize.name}/zero_bias", np.zeros(1, np.float32))
        node = onnx.helper.make_node(
            ort_ops.GELU_QUANTIZE_OP, [product_output, bias, *quantize.input[1:3]],
            list(quantize.output), name=f"{quantize.name}/{ort_ops.GELU_QUANTIZE_OP}",
            domain=ort_ops.OPS_DOMAIN)
        index.replace(chain, [node])
        fused += 1
    return index.finish(fused)


def fuse_relu_quantize(model: onnx.ModelProto) -> int:
    """Replace each ``Add(bias, MatMul(a, DQ(W))) -> Relu -> QuantizeLinear`` chain by omg-rt's
    ``omg_rt::BiasReluQuantize`` node (``omg_rt.backends.ort_ops``), in place: the FFNs of the
    fused INT8 pixel decoder, which ONNX Runtime runs as a float32 bias Add written out and a
    QuantizeLinear reading it back (its Relu folds into the quantization).

    A chain is fused only when its bias is a linear layer's (:meth:`_Chains.bias_of_product`),
    the quantization is per tensor (one float32 scale, one uint8 zero point) and nothing else
    reads a tensor in between.

    Returns:
        How many chains were fused.
    """
    index = _Chains(model)
    fused = 0
    for quantize in index.quantizations():
        relu = index.private(quantize.input[0], "Relu")
        add = relu and index.private(relu.input[0], "Add")
        found = index.bias_of_product(add) if add else None
        if relu is None or add is None or found is None:
            continue
        node = onnx.helper.make_node(
            ort_ops.RELU_QUANTIZE_OP, [*found, *quantize.input[1:3]], list(quantize.output),
            name=f"{quantize.name}/{ort_ops.RELU_QUANTIZE_OP}", domain=ort_ops.OPS_DOMAIN)
        index.replace([add, relu, quantize], [node])
        fused += 1
    return index.finish(fused)


def fuse_layernorm_quantize(model: onnx.ModelProto) -> int:
    """Replace each ``DequantizeLinear -> [Transpose ->] LayerNormalization -> QuantizeLinear``
    chain by omg-rt's ``omg_rt::LayerNormQuantize`` node (``omg_rt.backends.ort_ops``), in place:
    ConvNeXt's norm between its quantized depthwise convolution and its first MLP product, which
    ONNX Runtime runs as three float32 passes. A Transpose in the chain moves before the node,
    onto the uint8 tensor (where ONNX Runtime's layout passes can cancel it).

    A chain is fused only when the LayerNormalization normalises the last axis (float32
    statistics, constant 1-D float32 scale and bias, no optional outputs), both quantizations
    are per tensor (one float32 scale, one uint8 zero point) and nothing else reads a tensor in
    between.

    Returns:
        How many chains were fused.
    """
    index = _Chains(model)
    fused = 0
    for quantize in index.quantizations():
        norm = index.private(quantize.input[0], "LayerNormalization")
        if norm is None or len(norm.input) != 3 or len([o for o in norm.output if o]) != 1:
            continue
        attributes = _attributes(norm)
        if attributes.get("axis", -1) != -1 or attributes.get("stash_type", 1) != 1:
            continue
        gamma, beta = (index.constant(n) for n in norm.input[1:3])
        if gamma is None or beta is None or gamma.ndim != 1 or gamma.shape != beta.shape \
                or gamma.dtype != np.float32 or beta.dtype != np.float32:
            continue
        transpose = index.private(norm.input[0], "Transpose")
        dequantize = index.private(transpose.input[0] if transpose else norm.input[0],
                                   "DequantizeLinear")
        if dequantize is None or len(dequantize.input) != 3 \
                or not index.per_tensor(*dequantize.input[1:3]):
            continue
        source, nodes = dequantize.input[0], []
        if transpose is not None:  # the same permutation, on the uint8 tensor
            nodes.append(onnx.helper.make_node(
                "Transpose", [source], [f"{transpose.output[0]}/uint8"],
                name=f"{transpose.name}/uint8", **_attributes(transpose)))
            source = nodes[-1].output[0]
        epsilon = index.add_constant(
            f"{norm.name}/epsilon", np.array(attributes.get("epsilon", 1e-5), np.float32))
        nodes.append(onnx.helper.make_node(
            ort_ops.LAYERNORM_QUANTIZE_OP,
            [source, *dequantize.input[1:3], *norm.input[1:3], epsilon, *quantize.input[1:3]],
            list(quantize.output), name=f"{norm.name}/{ort_ops.LAYERNORM_QUANTIZE_OP}",
            domain=ort_ops.OPS_DOMAIN))
        chain = [dequantize, *([transpose] if transpose else []), norm, quantize]
        index.replace(chain, nodes)
        fused += 1
    return index.finish(fused)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _int8_options(symmetric_activations: bool) -> dict[str, object]:
    """``quantize_static``'s extra options, chosen for what ONNX Runtime's CPU provider fuses.

    MatMul / Gemm outputs stay float: ``DQ -> MatMul`` fuses into ``MatMulIntegerToFloat``
    (integer product, float result), which saves a Quantize + Dequantize pass per product and
    leaves the GELU after ConvNeXt's first MLP layer with one float producer, so ONNX Runtime
    still fuses it into ``Gelu`` (a quantized output gets one DequantizeLinear per consumer,
    which breaks that pattern: 5 elementwise ops per block instead of 1). Conv outputs stay
    quantized: only ``DQ -> Conv -> Q`` becomes ``QLinearConv``. Only products with a constant
    B (weights) are quantized.
    """
    return {
        "ActivationSymmetric": symmetric_activations,
        "WeightSymmetric": True,
        "MatMulConstBOnly": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
    }


def _check_feeds(source: Path, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Every feed names exactly ``source``'s inputs with float32 arrays of their static dims."""
    if len(feeds) == 0:
        raise InvalidInputError(f"calibration feeds for {source.name}: expected at least one, "
                                "got none")
    graph = onnx.load_model(str(source), load_external_data=False).graph
    expected = {i.name: [d.dim_value if d.HasField("dim_value") else None
                         for d in i.type.tensor_type.shape.dim] for i in graph.input}
    for k, feed in enumerate(feeds):
        where = f"calibration feed {k} for {source.name}"
        if not isinstance(feed, dict) or set(feed) != set(expected):
            got = sorted(feed) if isinstance(feed, dict) else type(feed).__name__
            raise InvalidInputError(f"{where}: expected the inputs {sorted(expected)}, got {got}")
        for name, dims in expected.items():
            value = feed[name]
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                raise InvalidInputError(
                    f"{where}: {name!r} must be a float32 numpy array, got "
                    f"{getattr(value, 'dtype', type(value).__name__)}")
            if value.ndim != len(dims) or any(d is not None and d != n
                                              for d, n in zip(dims, value.shape)):
                shape = tuple(d if d is not None else "?" for d in dims)
                raise InvalidInputError(
                    f"{where}: {name!r} must have shape {shape}, got {value.shape}")


def _pre_process(source: Path, prepared: Path) -> None:
    """ONNX Runtime's quantization pre-processing (``quant_pre_process`` without symbolic shape
    inference: basic graph optimisation, then ONNX shape inference), for graphs with external
    data: the optimised model's weights go to ``<prepared stem>.opt.onnx.data`` beside it."""
    optimized = prepared.with_name(prepared.stem + ".opt.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     optimized.name + ".data")
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort_ops.inference_session(source, options, ["CPUExecutionProvider"])
    onnx.shape_inference.infer_shapes_path(str(optimized), str(prepared))
    model = onnx.load_model(str(prepared), load_external_data=False)
    add_pre_process_metadata(model)  # tells quantize_static that the pre-processing ran
    onnx.save_model(model, str(prepared))  # the weights stay in the optimised model's data file


def alias_calibration(ranges: Path, portable: Path, fused: Path, out: Path) -> int:
    """Activation ranges of ``portable`` (``keep_calibration``) for its fused twin ``fused``:
    where a quantized op (same node name in both) reads or writes a tensor named differently in
    the fused graph (the deformable attention's output, produced there by the custom node), the
    fused name gets the portable tensor's range: the values are the same.

    Returns:
        How many ranges were added.
    """
    import json

    payload = json.loads(ranges.read_text())
    data = payload["data"]

    def quantized(path: Path) -> dict[str, onnx.NodeProto]:
        graph = onnx.load_model(str(path), load_external_data=False).graph
        return {n.name: n for n in graph.node if n.op_type in INT8_OPS}

    theirs, ours = quantized(portable), quantized(fused)
    added = 0
    for name, node in ours.items():
        twin = theirs.get(name)
        if twin is None or twin.op_type != node.op_type:
            continue
        for mine, its in zip([*node.input, *node.output], [*twin.input, *twin.output]):
            if mine != its and its in data and mine not in data:
                data[mine] = data[its]
                added += 1
    out.write_text(json.dumps(payload))
    return added


@contextmanager
def _temp_dir(path: Path) -> Iterator[None]:
    """Point :mod:`tempfile` at ``path`` for a while (the quantizer's copies of the model)."""
    before = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = before


def optimized_op_counts(path: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime's CPU provider actually runs for ``path``.

    Builds a CPU session at ``ORT_ENABLE_ALL`` (QDQ fusion, NHWC layout, ...) with
    ``optimized_model_filepath`` set, and counts the op types of the saved optimised model.
    """
    with tempfile.TemporaryDirectory(prefix="omg-ort-opt-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        options.log_severity_level = 3  # the "hardware-specific optimised model" warning
        ort_ops.inference_session(path, options, ["CPUExecutionProvider"])
        graph = onnx.load_model(str(optimized), load_external_data=False).graph
        return dict(Counter(node.op_type for node in graph.node))


def integer_op_counts(path: Path) -> dict[str, int]:
    """How many integer convolutions / matrix products (:data:`INTEGER_OPS`) ONNX Runtime's CPU
    provider runs for ``path`` after its QDQ fusions; empty when every Conv / MatMul ran in float
    (a QDQ model whose pairs were left unfused computes in FP32 and is only slower)."""
    counts = optimized_op_counts(path)
    return {op: counts[op] for op in INTEGER_OPS if counts.get(op)}


def calibration_photos(
    scale: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size_divisor: int = SIZE_DIVISOR,
    *,
    fixed_hw: tuple[int, int] | None = None,
    names: Sequence[str] = CALIBRATION_PHOTOS,
) -> Iterator[np.ndarray]:
    """The scikit-image bundled photos (offline) as the runtime feeds them to the encoder.

    Each photo (gray ones as three equal channels) is resized keeping its ratio into the
    (long, short) ``scale`` box, normalised and zero-padded bottom/right to a multiple of
    ``size_divisor`` (``omg_rt.preprocess.prepare_image``), so the photos keep their own aspect
    ratio. With ``fixed_hw`` = (H, W) every photo is instead padded into that one size, shrunk to
    fit it first when the scale box gives more — the runtime's rule for fixed-shape graphs.

    Yields:
        (1, 3, Hp, Wp) float32 per photo, in the order of ``names``.
    """
    import skimage.data

    for name in names:
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo pairs: the left view
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photo = np.ascontiguousarray(photo[..., :3])
        if fixed_hw is None:
            yield prepare_image(photo, scale, mean, std, size_divisor).tensor
            continue
        hin, win = fixed_hw
        hr, wr = keep_ratio_size(photo.shape[:2], scale)
        if hr > hin or wr > win:
            factor = min(hin / photo.shape[0], win / photo.shape[1])
            hr = min(hin, int(photo.shape[0] * factor + 0.5))
            wr = min(win, int(photo.shape[1] * factor + 0.5))
        resized = cv2.resize(photo, (wr, hr), interpolation=cv2.INTER_LINEAR)
        tensor = np.zeros((1, 3, hin, win), np.float32)
        tensor[:, :, :hr, :wr] = normalize_and_pad(resized, mean, std, 1)
        yield tensor


def default_calibration_images(image_size: int, mean: Sequence[float], std: Sequence[float], *,
                               fixed_hw: tuple[int, int] | None = None) -> list[np.ndarray]:
    """``omg-export``'s default INT8 calibration set: :func:`calibration_photos` in the
    (``image_size``, ``image_size``) box, each at its own padded size (or in ``fixed_hw``)."""
    return list(calibration_photos((image_size, image_size), mean, std, fixed_hw=fixed_hw))


def encoder_feeds(session: ort.InferenceSession,
                  images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The pixel decoder's calibration feeds: FP32 encoder outputs of the calibration images."""
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, {"image": image}))) for image in images]
