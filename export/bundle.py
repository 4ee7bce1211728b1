"""Checkpoint -> verified bundle directory (the format is ``omg_rt.manifest``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export import precision as precision_mod
from export.engines import build_engines
from export.graphs import graph_defs
from export.onnx_export import OPSET, describe_io, export_graph, save_model
from export.verify import ParityError, Verifier
from export.verify import verify as run_verification
from export.vocab import resolve_vocabulary, save_vocabulary
from omg_rt.errors import BackendUnavailableError, InvalidInputError
from omg_rt.manifest import (
    QUERIES_FILE,
    TOKENIZER_FILE,
    VERIFY_FILE,
    VOCABULARY_FILE,
    GraphEntry,
    InputContract,
    Manifest,
    Vocabulary,
    VocabularyRecord,
    write_manifest,
)
from omg_rt.preprocess import prepare_image
from omg_rt.spec import ENCODER, PIXEL_DECODER, PRECISIONS, QUERY_DECODER
from training.model import OMGSeg
from training.model.checkpoint import load_checkpoint

TARGETS = ("cpu", "h100", "jetson-orin")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def build_bundle(
    checkpoint_or_model: str | os.PathLike | OMGSeg,
    out_dir: str | os.PathLike,
    *,
    backbone_weights: str | os.PathLike | None = None,
    image_size: int = 1024,
    vocab: Any = "coco",
    precisions: Sequence[str] = ("fp32",),
    target: str = "cpu",
    calib_images: str | os.PathLike | None = None,
    verify: bool = True,
    engine: bool = False,
    progress: bool | None = None,
) -> Path:
    """Export a checkpoint (or a model) into a bundle the runtime loads without torch.

    Args:
        checkpoint_or_model: an official ``.pth``, our checkpoint directory / ``.safetensors``,
            or an ``OMGSeg`` instance.
        out_dir: the bundle directory (replaced if it holds a bundle; refused if it holds
            anything else).
        backbone_weights: local OpenCLIP weights for the official decoder-only checkpoint.
        image_size: the long edge images are resized to, keeping their ratio (the official
            demo's (1024, 1024) scale box at 1024); each image is then zero-padded only to a
            multiple of 32, and the graphs take any such size. Video frames use the spec's video
            scale, scaled by ``image_size`` / the spec's image scale
            (``omg_rt.bundle.InputContract.at_image_size``).
        vocab: ``coco`` | ``ade`` | ``vipseg`` | ``ytvis``, a names or bank file, or an object
            with ``names``, ``num_things`` (and optionally ``bank``, ``seen``); see
            ``export.vocab``.
        precisions: any of ``fp32``, ``fp16``, ``int8`` (``fp32`` is always exported).
        target: ``cpu`` (portable graphs), ``h100`` or ``jetson-orin`` (adds the TensorRT plugin
            flavour of the pixel decoder; INT8 with symmetric activations).
        calib_images: a directory of images for INT8 calibration (default: synthetic scenes).
        verify: run the parity checks (``verify.json``); a failure raises ``ParityError`` and
            leaves the build at ``<out_dir>.failed``.
        engine: also build TensorRT plans (``engines/``); without TensorRT the bundle is still
            written and ``BackendUnavailableError`` is raised afterwards.
        progress: show progress bars (default: when stderr is a terminal).

    Returns:
        The bundle directory.
    """
    show = sys.stderr.isatty() if progress is None else bool(progress)
    precisions = _check_args(image_size, precisions, target, calib_images)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    model = _load(checkpoint_or_model, backbone_weights)
    spec = model.config
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    vocabulary = resolve_vocabulary(vocab, model, progress=show)
    contract = InputContract.at_image_size(spec.preprocess, image_size)
    defs = graph_defs(model)
    graphs: dict[str, dict[str, Any]] = {}
    # the plugin flavours: TensorRT's pixel decoder on GPU targets; on the cpu target the fused
    # pixel and query decoders of ONNX Runtime's CPU provider (omg_rt.backends.ort_ops)
    if target != "cpu":
        plugin_key, plugin_dir = "tensorrt_files", "tensorrt"
        plugin_jobs = [(PIXEL_DECODER.name, "tensorrt")]
    else:
        plugin_key, plugin_dir = "fused_files", "fused"
        plugin_jobs = [(PIXEL_DECODER.name, "fused"), (QUERY_DECODER.name, "fused")]
    flavour_jobs = [(name, "portable") for name in defs] + plugin_jobs
    for name, flavour in tqdm(flavour_jobs, desc="onnx export", unit="graph", disable=not show):
        if flavour == "portable":
            path = export_graph(defs[name], work / f"{name}.onnx")
            graphs[name] = {**describe_io(path), "files": {"fp32": path.name},
                            "dynamic_axes": {t: {str(a): s for a, s in axes.items()}
                                             for t, axes in defs[name].dynamic_axes.items()}}
        else:
            path = export_graph(defs[name], work / plugin_dir / f"{name}.onnx", flavour=flavour)
            graphs[name][plugin_key] = {"fp32": f"{plugin_dir}/{name}.onnx"}

    content, position = (q[0].detach().numpy() for q in model.learned_queries(1))
    np.savez(work / QUERIES_FILE, query_content=content, query_position=position)
    save_vocabulary(vocabulary, work / VOCABULARY_FILE)
    has_tokenizer = model.text_encoder is not None
    if has_tokenizer:
        import open_clip

        (work / TOKENIZER_FILE).parent.mkdir()
        shutil.copyfile(Path(open_clip.__file__).parent / Path(TOKENIZER_FILE).name,
                        work / TOKENIZER_FILE)

    mean, std = spec.preprocess.mean, spec.preprocess.std
    if "fp16" in precisions:
        for name in tqdm([g for g in precision_mod.FP16_GRAPHS if g in graphs], desc="fp16",
                         unit="graph", disable=not show):
            precision_mod.convert_fp16(work / f"{name}.onnx", work / "fp16" / f"{name}.onnx")
            graphs[name]["files"]["fp16"] = f"fp16/{name}.onnx"
            if "tensorrt_files" in graphs[name]:
                graphs[name]["tensorrt_files"]["fp16"] = graphs[name]["tensorrt_files"]["fp32"]
    if "int8" in precisions:
        images = _calibration_images(calib_images, image_size, mean, std)
        for name in _quantize(work, images, target, show):
            graphs[name].setdefault("fused_files", {})["int8"] = f"int8/fused/{name}.onnx"
        for name in precision_mod.INT8_GRAPHS:
            graphs[name]["files"]["int8"] = f"int8/{name}.onnx"
    for entry in graphs.values():  # graphs left in FP32 serve every precision
        for p in precisions:
            entry["files"].setdefault(p, entry["files"]["fp32"])
            if "tensorrt_files" in entry:
                entry["tensorrt_files"].setdefault(p, entry["tensorrt_files"]["fp32"])
            # a fused graph serves a precision only where the portable graph is the FP32 one (an
            # INT8 fused graph left out stays left out: the portable INT8 graph runs)
            fused = entry.get("fused_files", {})
            if "fp32" in fused and entry["files"][p] == entry["files"]["fp32"]:
                fused.setdefault(p, fused["fp32"])

    report: dict[str, Any] = {"skipped": True, "passed": None}
    if verify:
        verifier = Verifier(defs, spec, vocabulary.class_bank, (content, position),
                            vocabulary.num_things, image_size, progress=show)
        files = {p: _verified_files(work, graphs, p) for p in precisions}
        report = run_verification(verifier, files, progress=show)
    (work / VERIFY_FILE).write_text(json.dumps(report, indent=1, sort_keys=True))
    if verify and not report["passed"]:
        failed = out_dir.with_name(out_dir.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(work, failed)
        failures = [f"{p}: {f}" for p, e in report["precisions"].items() for f in e["failures"]]
        raise ParityError(
            f"export outside tolerance ({len(failures)} failures; report in "
            f"{failed / 'verify.json'}): " + "; ".join(failures[:8]), report)

    manifest = _manifest(spec, contract, target, precisions, graphs, vocabulary, content,
                         has_tokenizer, report)
    missing_trt: BackendUnavailableError | None = None
    if engine:
        try:
            record = build_engines(work, manifest, target=target, precisions=precisions,
                                   progress=show)
            manifest = replace(manifest, engines=(*manifest.engines, record),
                               tools={**manifest.tools, "tensorrt": record.tensorrt})
        except BackendUnavailableError as exc:
            missing_trt = exc
    write_manifest(work, manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    if missing_trt is not None:
        raise missing_trt
    return out_dir


def _check_args(image_size, precisions, target, calib_images) -> tuple[str, ...]:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 64 \
            or image_size % 32:
        raise InvalidInputError(
            f"image_size: expected an int >= 64 and a multiple of 32, got {image_size!r}")
    if isinstance(precisions, str):
        precisions = [p for p in precisions.split(",") if p]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise InvalidInputError(
            f"precisions: expected a non-empty subset of {PRECISIONS}, got {tuple(precisions)}")
    if target not in TARGETS:
        raise InvalidInputError(f"target: expected one of {TARGETS}, got {target!r}")
    if calib_images is not None and not Path(calib_images).is_dir():
        raise InvalidInputError(
            f"calib_images: expected a directory of images, got {str(calib_images)!r}")
    return tuple(p for p in PRECISIONS if p == "fp32" or p in precisions)


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists())):
        raise InvalidInputError(
            f"out_dir: expected a new directory or an existing bundle, got {out_dir} which holds "
            "other files (not replaced)")


def _verified_files(work: Path, graphs: dict[str, dict[str, Any]], precision: str
                    ) -> dict[str, Path]:
    """The file of each graph ONNX Runtime's CPU provider runs at ``precision``, the one to
    verify: the fused flavour where exported and omg-rt's operators build here (as
    ``omg_rt.backends`` chooses), else the portable graph."""
    from omg_rt.backends import ort_ops

    fused_ok = ort_ops.available()  # no C compiler: the runtime runs the portable graphs
    chosen = {}
    for name, entry in graphs.items():
        fused = entry.get("fused_files", {}) if fused_ok else {}
        chosen[name] = work / fused.get(precision, entry["files"][precision])
    return chosen


def _load(checkpoint_or_model, backbone_weights) -> OMGSeg:
    if isinstance(checkpoint_or_model, OMGSeg):
        model = checkpoint_or_model
    elif isinstance(checkpoint_or_model, (str, os.PathLike)):
        loaded, _ = load_checkpoint(checkpoint_or_model, backbone_weights=backbone_weights)
        assert isinstance(loaded, OMGSeg)
        model = loaded
    else:
        raise InvalidInputError(
            "checkpoint_or_model: expected a checkpoint path or an OMGSeg, got "
            f"{type(checkpoint_or_model).__name__}")
    model = model.eval()
    model.requires_grad_(False)
    return model


def _calibration_images(calib_images, image_size: int, mean, std) -> list[np.ndarray]:
    """(1, 3, H, W) encoder inputs as the runtime prepares them (keep-ratio into the
    ``image_size`` box, padded to a multiple of 32): the directory's images, or the scikit-image
    photos (:func:`export.precision.default_calibration_images`)."""
    if calib_images is None:
        return precision_mod.default_calibration_images(image_size, mean, std)
    import cv2

    paths = sorted(p for p in Path(calib_images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidInputError(
            f"calib_images: expected images ({'/'.join(IMAGE_SUFFIXES)}) in {calib_images}, "
            "found none")
    tensors = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InvalidInputError(f"calib_images: {path} is not a readable image")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        tensors.append(prepare_image(rgb, (image_size, image_size), mean, std).tensor)
    return tensors


def _quantize(work: Path, images: list[np.ndarray], target: str, show: bool) -> list[str]:
    """INT8 encoder and pixel decoder; on the cpu target also their fused flavours for ONNX
    Runtime with omg-rt's operators (``omg_rt.backends.ort_ops``): the encoder with its MLPs'
    GELU + quantization and its norms' dequantize + LayerNorm + quantize each as one node, the
    fused pixel decoder with the portable one's activation ranges (left out where the operator
    cannot be built here to pre-process it).

    Returns:
        The graphs with a fused INT8 file (``int8/fused/<name>.onnx``).
    """
    import onnx
    import onnxruntime as ort

    symmetric = target != "cpu"  # TensorRT reads only symmetric (zero-point 0) QDQ
    encoder = work / "int8" / f"{ENCODER.name}.onnx"
    precision_mod.quantize_int8(work / "encoder.onnx", encoder,
                                [{"image": x} for x in images], desc="int8 calibration: encoder",
                                progress=show, symmetric_activations=symmetric)
    session = ort.InferenceSession(str(work / "encoder.onnx"), providers=["CPUExecutionProvider"])
    ranges = work / "pixel_decoder.calibration.json"
    precision_mod.quantize_int8(work / "pixel_decoder.onnx", work / "int8" / "pixel_decoder.onnx",
                                precision_mod.encoder_feeds(session, images),
                                desc="int8 calibration: pixel decoder", progress=show,
                                symmetric_activations=symmetric, keep_calibration=ranges)
    fused: list[str] = []
    try:
        if target != "cpu":
            return fused
        model = onnx.load_model(str(encoder))
        fused_nodes = precision_mod.fuse_gelu_quantize(model)
        fused_nodes += precision_mod.fuse_layernorm_quantize(model)
        if fused_nodes:
            (work / "int8" / "fused").mkdir(parents=True, exist_ok=True)
            save_model(model, work / "int8" / "fused" / f"{ENCODER.name}.onnx")
            fused.append(ENCODER.name)
        del model
        pixel = work / "fused" / "pixel_decoder.onnx"
        precision_mod.alias_calibration(ranges, work / "pixel_decoder.onnx", pixel, ranges)
        fused_pixel = work / "int8" / "fused" / "pixel_decoder.onnx"
        precision_mod.quantize_int8(pixel, fused_pixel, [], desc="int8: fused pixel decoder",
                                    progress=show, calibration=ranges)
        model = onnx.load_model(str(fused_pixel))
        if precision_mod.fuse_relu_quantize(model):
            save_model(model, fused_pixel)
        del model
        fused.append(PIXEL_DECODER.name)
    except BackendUnavailableError:
        pass
    finally:
        ranges.unlink()
    return fused


def _manifest(spec, contract: InputContract, target, precisions, graphs: dict[str, Any],
              vocabulary: Vocabulary, content, has_tokenizer: bool, report) -> Manifest:
    import onnx
    import onnxruntime
    import onnxslim

    return Manifest(
        model=spec,
        input=contract,
        target=target,
        deform_attn="grid_sample" if target == "cpu" else "trt_plugin",
        graphs={name: GraphEntry.from_dict(name, entry, f"graphs.{name}")
                for name, entry in graphs.items()},
        precisions=tuple(precisions),
        opset=OPSET,
        exporter="torch.onnx TorchScript (dynamo=False) + onnxslim",
        tools={"torch": torch.__version__, "onnx": onnx.__version__,
               "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__},
        vocabulary=VocabularyRecord.of(vocabulary),
        num_queries=int(content.shape[0]),
        tokenizer_file=TOKENIZER_FILE if has_tokenizer else None,
        tokenizer_context_length=spec.text.context_length if has_tokenizer else None,
        verify_passed=report.get("passed"),
    )
