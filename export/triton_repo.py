"""A Triton Inference Server model repository from a bundle (``omg-export --triton-repo DIR``),
for GPU fleets running the full server (its onnxruntime / tensorrt backends)::

    DIR/
      omg_encoder/          config.pbtxt, 1/model.onnx (or 1/model.plan): dynamic batching
      omg_pixel_decoder/    the same
      omg_query_decoder/    memories + class bank + queries -> logits (one image or clip)
      omg_prompt_encoder/ omg_text_encoder/ omg_clip_head/   where the bundle has them
      omg_preprocess/       Python backend: image bytes -> encoder input, vocabulary, queries
      omg_postprocess/      Python backend: logits -> a SegmentationResult record (JSON)
      omg_segment/          ensemble: IMAGE (bytes) + TASK -> RESULT, through all of the above

Checked here by schema and by running its data flow on the CPU (the Python steps and the ONNX
files in ONNX Runtime); the full server's onnxruntime / tensorrt backends are not in this
environment, so the repository is served for real only on a GPU machine with tritonserver.

Every ``config.pbtxt`` is built as Triton's own ``ModelConfig`` protobuf (``tritonclient``'s
``model_config_pb2``) with the names, dtypes and dims of the bundle's manifest. The Python
models call :mod:`omg_rt.triton_steps` (``pip install omg-rt`` in the server's Python) and read
the bundle's small files copied into their ``1/assets``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omg_rt.bundle import Bundle, load_bundle
from omg_rt.errors import BundleError, InvalidInputError
from omg_rt.manifest import MANIFEST, GraphEntry
from omg_rt.spec import ENCODER, PIXEL_DECODER, QUERY_DECODER

BACKENDS = ("onnxruntime", "tensorrt")
PREFIX = "omg_"
ENSEMBLE = "omg_segment"
# graphs whose leading axis is a batch of independent images: Triton batches them dynamically
BATCHED = (ENCODER.name, PIXEL_DECODER.name)
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
           "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}

_PYTHON_MODEL = '''"""Triton Python-backend shell around omg_rt.triton_steps.{cls}."""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from omg_rt.triton_steps import {cls}


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(args["model_repository"]) / args["model_version"] / "assets"
        self.step = {cls}(folder)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
{body}
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, np.ascontiguousarray(value))
                     for name, value in outputs.items()]))
            except Exception as exc:  # the error goes to this request's client
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{{type(exc).__name__}}: {{exc}}")))
        return responses
'''
_PRE_BODY = '''                data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
                outputs = self.step(bytes(data.reshape(-1)[0]))'''
_POST_BODY = '''                get = pb_utils.get_input_tensor_by_name
                arrays = {name: get(request, name).as_numpy()
                          for name in ("CLASS_LOGITS", "MASK_LOGITS", "SIZES", "TASK")}
                task = bytes(arrays["TASK"].reshape(-1)[0]).decode()
                record = self.step(arrays["CLASS_LOGITS"], arrays["MASK_LOGITS"],
                                   arrays["SIZES"], task)
                outputs = {"RESULT": np.array([record], dtype=object)}'''


def write_triton_repo(bundle_dir: str | Path, out: str | Path, *, backend: str = "onnxruntime",
                      precision: str = "fp32", max_batch: int = 8, instances: int = 1,
                      kind: str = "KIND_GPU") -> Path:
    """Write the model repository of ``bundle_dir`` into ``out`` (replaced if it exists).

    Args:
        backend: ``onnxruntime`` (the bundle's ONNX files) or ``tensorrt`` (its plans for one
            GPU, from ``omg-export --engine``).
        precision: which of the bundle's precisions.
        max_batch: the dynamic-batching limit of the batched graphs (encoder, pixel decoder).
        instances, kind: each model's instance group (``KIND_GPU`` or ``KIND_CPU``).
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    if backend not in BACKENDS:
        raise InvalidInputError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    bundle = load_bundle(bundle_dir)
    if precision not in bundle.precisions:
        raise InvalidInputError(f"precision: the bundle has {list(bundle.precisions)}, "
                                f"got {precision!r}")
    plans = _plans(bundle, precision) if backend == "tensorrt" else {}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    configs: dict[str, Any] = {}
    for name, entry in bundle.graphs.items():
        model = PREFIX + name
        version = out / model / "1"
        version.mkdir(parents=True)
        if backend == "tensorrt":
            shutil.copyfile(bundle.root / plans[name], version / "model.plan")
        else:
            source = bundle.root / entry.files[precision]
            shutil.copyfile(source, version / "model.onnx")
            data = source.with_name(source.name + ".data")
            if data.exists():  # external weights keep the file name the graph refers to
                shutil.copyfile(data, version / data.name)
        configs[model] = _graph_config(pb, model, entry, backend, max_batch, instances, kind)
    for cls, body, model in (("Preprocessor", _PRE_BODY, "omg_preprocess"),
                             ("Postprocessor", _POST_BODY, "omg_postprocess")):
        version = out / model / "1"
        _copy_assets(bundle, version / "assets")
        (version / "model.py").write_text(_PYTHON_MODEL.format(cls=cls, body=body))
    configs["omg_preprocess"] = _preprocess_config(pb, bundle, instances)
    configs["omg_postprocess"] = _postprocess_config(pb, bundle, instances)
    configs[ENSEMBLE] = _ensemble_config(pb, bundle)
    (out / ENSEMBLE / "1").mkdir(parents=True)  # Triton wants a version folder, even empty
    for model, config in configs.items():
        (out / model).mkdir(parents=True, exist_ok=True)
        (out / model / "config.pbtxt").write_text(text_format.MessageToString(config))
    return out


def _plans(bundle: Bundle, precision: str) -> dict[str, str]:
    for record in bundle.manifest.engines:
        if all(precision in record.files.get(g, {}) for g in bundle.graphs):
            return {g: record.files[g][precision] for g in bundle.graphs}
    raise BundleError(
        f"{bundle.root}: no TensorRT plans at {precision} for every graph (engines: "
        f"{[r.key for r in bundle.manifest.engines]}); export with --engine on the target GPU")


def _dims(shape: Sequence[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _tensor(container: Any, pb: Any, name: str, dtype: str, dims: Sequence[int],
            reshape: Sequence[int] | None = None) -> None:
    tensor = container.add()
    tensor.name = name
    tensor.data_type = getattr(pb, _DTYPES[dtype]) if dtype in _DTYPES else pb.TYPE_STRING
    tensor.dims.extend(dims)
    if reshape is not None:
        tensor.reshape.SetInParent()
        tensor.reshape.shape.extend(reshape)


def _instances(pb: Any, config: Any, count: int, kind: str) -> None:
    group = config.instance_group.add()
    group.count = count
    group.kind = getattr(pb.ModelInstanceGroup, kind)


def _graph_config(pb: Any, model: str, entry: GraphEntry, backend: str, max_batch: int,
                  instances: int, kind: str) -> Any:
    config = pb.ModelConfig(name=model, platform="onnxruntime_onnx" if backend == "onnxruntime"
                            else "tensorrt_plan")
    batched = entry.name in BATCHED
    config.max_batch_size = max_batch if batched else 0
    for io, container in ((entry.inputs, config.input), (entry.outputs, config.output)):
        for name, spec in io.items():
            dims = _dims(spec.shape[1:] if batched else spec.shape)
            if not dims:  # a scalar (prompt_mode): one element on the wire, () in the graph
                _tensor(container, pb, name, spec.dtype, [1], reshape=[])
            else:
                _tensor(container, pb, name, spec.dtype, dims)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = 2000
    _instances(pb, config, instances, kind)
    return config


def _preprocess_config(pb: Any, bundle: Bundle, instances: int) -> Any:
    config = pb.ModelConfig(name="omg_preprocess", backend="python", max_batch_size=0)
    _tensor(config.input, pb, "IMAGE", "bytes", [1])
    k, s, d = bundle.vocabulary.class_bank.shape
    q, c = bundle.query_content.shape
    for name, dtype, dims in (("IMAGE_TENSOR", "float32", [1, 3, -1, -1]),
                              ("CLASS_BANK", "float32", [k, s, d]),
                              ("QUERY_CONTENT", "float32", [1, q, c]),
                              ("QUERY_POSITION", "float32", [1, q, c]),
                              ("PROMPT_MODE", "bool", [1]),
                              ("SIZES", "int32", [6])):
        _tensor(config.output, pb, name, dtype, dims)
    _instances(pb, config, instances, "KIND_CPU")
    return config


def _postprocess_config(pb: Any, bundle: Bundle, instances: int) -> Any:
    config = pb.ModelConfig(name="omg_postprocess", backend="python", max_batch_size=0)
    qd = bundle.graphs[QUERY_DECODER.name].outputs
    _tensor(config.input, pb, "CLASS_LOGITS", qd["class_logits"].dtype,
            _dims(qd["class_logits"].shape))
    _tensor(config.input, pb, "MASK_LOGITS", qd["mask_logits"].dtype,
            _dims(qd["mask_logits"].shape))
    _tensor(config.input, pb, "SIZES", "int32", [6])
    _tensor(config.input, pb, "TASK", "bytes", [1])
    _tensor(config.output, pb, "RESULT", "bytes", [1])
    _instances(pb, config, instances, "KIND_CPU")
    return config


def _ensemble_config(pb: Any, bundle: Bundle) -> Any:
    config = pb.ModelConfig(name=ENSEMBLE, platform="ensemble", max_batch_size=0)
    _tensor(config.input, pb, "IMAGE", "bytes", [1])
    _tensor(config.input, pb, "TASK", "bytes", [1])
    _tensor(config.output, pb, "RESULT", "bytes", [1])
    graphs = bundle.graphs

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
        s = config.ensemble_scheduling.step.add()
        s.model_name, s.model_version = model, -1
        for key, value in inputs.items():
            s.input_map[key] = value
        for key, value in outputs.items():
            s.output_map[key] = value

    pre = ("IMAGE_TENSOR", "CLASS_BANK", "QUERY_CONTENT", "QUERY_POSITION", "PROMPT_MODE",
           "SIZES")
    step("omg_preprocess", {"IMAGE": "IMAGE"}, {name: name.lower() for name in pre})
    encoder = graphs[ENCODER.name]
    step(PREFIX + ENCODER.name, {"image": "image_tensor"},
         {name: name for name in encoder.outputs})
    pixel = graphs[PIXEL_DECODER.name]
    step(PREFIX + PIXEL_DECODER.name, {name: name for name in pixel.inputs},
         {name: name for name in pixel.outputs})
    feeds = {name: name for name in graphs[QUERY_DECODER.name].inputs}
    feeds.update(class_bank="class_bank", query_content="query_content",
                 query_position="query_position", prompt_mode="prompt_mode")
    step(PREFIX + QUERY_DECODER.name, feeds,
         {"class_logits": "class_logits", "mask_logits": "mask_logits"})
    step("omg_postprocess", {"CLASS_LOGITS": "class_logits", "MASK_LOGITS": "mask_logits",
                             "SIZES": "sizes", "TASK": "TASK"}, {"RESULT": "RESULT"})
    return config


def _copy_assets(bundle: Bundle, dest: Path) -> None:
    """The small files the Python models read: a bundle without graphs (hashes kept)."""
    dest.mkdir(parents=True)
    manifest = bundle.manifest
    for rel in (MANIFEST, manifest.queries_file, manifest.vocabulary.file):
        shutil.copyfile(bundle.root / rel, dest / rel)
