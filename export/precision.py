"""FP16 and INT8 variants of the exported graphs.

FP16 (``fp16/``): ONNX Runtime's float16 converter with the inputs and outputs kept FP32 and FP32
islands by op type: LayerNorm (ConvNeXt's LayerNorm overflows in FP16, cf. EfficientViT-SAM #142),
GroupNorm (InstanceNormalization), softmax and every reduction, divisions (the mask-pooling
denominator counts up to (S/4)^2 pixels: 65536 at 1024, above FP16's 65504), Einsum (mask logits
and mask pooling sum over all pixels), GridSample (deformable attention accumulates in FP32 as the
kernels do) and the sine positional codes.

INT8 (``int8/``): ONNX Runtime static quantization, QDQ format, per-channel symmetric INT8
weights and INT8 activations calibrated (MinMax) on images: the encoder on the calibration images,
the pixel decoder on the encoder's FP32 features of the same images. Only Conv / MatMul / Gemm are
quantized. The query decoder stays FP32: its masked attention thresholds mask logits at 0, and
INT8 flips those masks (TensorRT INT8 recipes also keep transformer decoders in FP16/FP32).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16
from tqdm import tqdm

from export.onnx_export import save_model

FP16_KEEP_FP32_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax", "ReduceSum",
    "ReduceMean", "ReduceMax", "ReduceL2", "Div", "Einsum", "GridSample", "Sin", "Cos", "Range",
    "CumSum",
)
FP16_GRAPHS = ("encoder", "pixel_decoder", "query_decoder", "clip_head")
INT8_GRAPHS = ("encoder", "pixel_decoder")
INT8_OPS = ("Conv", "MatMul", "Gemm")


def convert_fp16(source: Path, target: Path) -> Path:
    """FP32 graph -> FP16 graph with FP32 I/O and the FP32 islands of :data:`FP16_KEEP_FP32_OPS`."""
    model = onnx.load_model(str(source))
    half = convert_float_to_float16(model, keep_io_types=True,
                                    op_block_list=list(FP16_KEEP_FP32_OPS))
    _topological_sort(half.graph)  # the converter appends its input casts at the end
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model(half, target)
    return target


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
                  desc: str, progress: bool = True, symmetric_activations: bool = False) -> Path:
    """Static QDQ INT8 quantization of ``source`` calibrated on ``feeds``.

    ``symmetric_activations``: zero-point 0 everywhere (TensorRT accepts only symmetric QDQ);
    asymmetric activations suit ONNX Runtime's CPU kernels better.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prepared = target.with_name(target.stem + ".prep.onnx")
    # shape inference + graph optimisation first, as ONNX Runtime's quantization guide asks
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(target), _FeedReader(feeds, desc, progress),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(INT8_OPS),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
    )
    prepared.unlink()
    onnx.checker.check_model(str(target))
    return target


def encoder_feeds(session: ort.InferenceSession,
                  images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The pixel decoder's calibration feeds: FP32 encoder outputs of the calibration images."""
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, {"image": image}))) for image in images]
