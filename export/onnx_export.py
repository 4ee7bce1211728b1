"""One graph -> one checked, simplified ONNX file (external data when large).

``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``): the dynamo exporter needs
``onnxscript`` and cannot use the TorchScript ``symbolic`` that emits TensorRT's
deformable-attention plugin node (``kernels.trt_plugin``). Opset 17: LayerNormalization as one
op (TensorRT and the FP16 converter keep it in FP32 by op type) and GridSample (>= 16).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxslim
import torch

from export.graphs import GraphDef, deform_attn_flavour

OPSET = 17
# Graphs whose weights exceed this are saved with their tensors in ``<graph>.onnx.data``
# (protobuf caps a single file at 2 GiB; TensorRT and ONNX Runtime read external data).
EXTERNAL_DATA_BYTES = 256 * 2**20

_NUMPY_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
}


def export_graph(
    graph: GraphDef,
    path: Path,
    *,
    flavour: str = "portable",
    opset: int = OPSET,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    simplify: bool = True,
) -> Path:
    """Trace ``graph`` to ``path``: export, onnxslim, save, ``onnx.checker``.

    Args:
        graph: the wrapper module, example inputs and dynamic axes.
        path: the ``.onnx`` file to write (its ``.onnx.data`` beside it when large).
        flavour: the deformable attention's form, ``portable`` or ``tensorrt``.
        opset: ONNX opset (>= 16 for GridSample).
        external_data_bytes: weights above this many bytes go to external data.
        simplify: run onnxslim (constant folding, dead-code removal, fusions).

    Returns:
        ``path``.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), deform_attn_flavour(flavour):
        # Tracer warnings flag Python values frozen into the graph: here, by design, the fixed
        # spatial sizes and the number of levels. The exporter's deprecation notice is known.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # the exporter's notes on folding strided slices and on aten::index (our indices are
        # never negative) are not actionable
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index", category=UserWarning)
        torch.onnx.export(
            graph.module.eval(),
            graph.example,
            buffer,  # type: ignore[arg-type]  # file objects are accepted
            dynamo=False,
            opset_version=opset,
            input_names=list(graph.io.inputs),
            output_names=list(graph.io.outputs),
            dynamic_axes=graph.dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load_model_from_string(buffer.getvalue())
    del buffer
    if simplify:
        model = onnxslim.slim(model)
    _check_names(model, graph)
    _fix_output_shapes(model, graph)
    _type_untyped_value_info(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path, external_data_bytes=external_data_bytes)
    return path


def save_model(model: onnx.ModelProto, path: Path, *,
               external_data_bytes: int = EXTERNAL_DATA_BYTES) -> None:
    """Save ``model`` (external data above ``external_data_bytes``) and run ``onnx.checker``."""
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    weights = sum(_tensor_bytes(t) for t in model.graph.initializer)
    if weights > external_data_bytes:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        data.chmod(0o644)  # onnx creates it 0600
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = 1
    for d in tensor.dims:
        count *= d
    return count * 4


def _check_names(model: onnx.ModelProto, graph: GraphDef) -> None:
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    # an input the graph ignores is dropped by the exporter: every contract input must remain
    if inputs != graph.io.inputs or outputs != graph.io.outputs:
        raise RuntimeError(
            f"{graph.io.name}: exported I/O {inputs} -> {outputs} differs from the contract "
            f"{graph.io.inputs} -> {graph.io.outputs} (omg_rt.spec)"
        )


def _type_untyped_value_info(model: onnx.ModelProto) -> None:
    """Type the intermediate value infos the exporter leaves without an element type: the
    plugin node's outputs, which it cannot infer. ONNX Runtime refuses a graph with an untyped
    one ("Invalid tensor data type 0"); typed float32 (the plugin's output is its value input's
    type, float32 in every exported graph), ONNX shape inference carries the type on to the
    quantizer."""
    for value in model.graph.value_info:
        if not value.type.tensor_type.elem_type:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    known = {v.name for v in model.graph.value_info} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.domain and node.domain != "ai.onnx":  # a custom node: ONNX cannot infer it
            for name in node.output:
                if name not in known:
                    model.graph.value_info.append(
                        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))


def _fix_output_shapes(model: onnx.ModelProto, graph: GraphDef) -> None:
    """Write every output's shape as the contract has it: the dynamic axes' names, the example's
    sizes elsewhere (the tracer leaves sizes it computed from shapes as anonymous symbols)."""
    for value, example in zip(model.graph.output, graph.example_outputs):
        axes = graph.dynamic_axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(example.shape):
            dim = dims.add()
            if i in axes:
                dim.dim_param = axes[i]
            else:
                dim.dim_value = int(size)


def describe_io(path: Path) -> dict[str, Any]:
    """The graph's inputs and outputs as the manifest records them:
    ``{"inputs": {name: {"shape": [...], "dtype": "float32"}}, "outputs": {...}}``; symbolic
    dimensions are strings."""
    model = onnx.load_model(str(path), load_external_data=False)

    def one(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            d.dim_param if d.HasField("dim_param") else int(d.dim_value)
            for d in tensor.shape.dim
        ]
        return {"shape": shape, "dtype": _NUMPY_DTYPES.get(tensor.elem_type, str(tensor.elem_type))}

    return {
        "inputs": {v.name: one(v) for v in model.graph.input},
        "outputs": {v.name: one(v) for v in model.graph.output},
    }


def op_types(path: Path) -> dict[str, int]:
    """Node count per op type (``"trt::MultiscaleDeformableAttnPlugin_TRT"`` for custom ops)."""
    model = onnx.load_model(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts
