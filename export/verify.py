"""Parity of the exported graphs with the PyTorch model (``verify.json``).

Two kinds of evidence per precision:

1. **graphs**: every graph on identical inputs in ONNX Runtime and PyTorch (a random image, the
   PyTorch features of it, learned and prompt queries, random pooled features, tokenised names):
   max absolute and relative error per output (relative = max |a - b| / max |b|).
2. **tasks**: the whole pipeline (encoder -> pixel decoder -> query decoder, ONNX Runtime end to
   end against PyTorch end to end) on real images — procedurally drawn scenes of
   ``training.data.synthetic`` preprocessed by ``omg_rt.preprocess`` — post-processed by
   ``omg_rt.postprocess``: panoptic (pixel agreement of the category maps), instance (identical
   top-k selections), semantic (pixel agreement), prompts (box prompts from the scenes' segments,
   padded to several counts), and a 2-frame clip (T = 2). For each: max |class logit|
   difference, the mean IoU of the final binary masks (query by query, at the original image size)
   and the top-class agreement.

Gates (``TOLERANCES``): FP32 |delta logit| <= 1e-4 (relative to the output's largest magnitude when
it exceeds 1: random-weight models produce logits up to ~1e5), mask IoU >= 0.999 and top-class
agreement >= 0.99; FP16 mask IoU >= 0.99; INT8 is reported with its metric drop on a synthetic
held-out set (interactive mIoU of box prompts against the ground-truth masks) and not gated.

The query decoder's logit gate (and the prompt decoder's: the same attention) is scaled by its
own sensitivity. Its masked attention thresholds
its own mask logits at 0, so its outputs are discontinuous in its inputs: with random-weight
models whose mask logits reach ~1e5 (the deterministic official-layout test files), float32-level
differences flip attention-mask entries and the flip propagates, so no other implementation
(ONNX Runtime reorders the same sums) can be held to 1e-4. The verifier therefore runs the
PyTorch query decoder a second time on each input case perturbed by relative
:data:`SENSITIVITY_REL` noise (seeded, ~8 float32 ulps) and records, per output,
``self_sensitivity_max_abs`` (and ``_rel``), keeping each case's numbers in ``cases``. The FP32
bound of a :data:`SENSITIVE_GRAPHS` output, per input case, is

    max(logit_atol * max(1, ref_max_abs), SENSITIVITY_FACTOR * self_sensitivity_max_abs)

and ``logit_bounds`` in each precision's report gives, per output, the binding case with both
numbers and the ``rule`` that applied (``tolerance`` or ``sensitivity``). Per case, so that one
case's discontinuity does not loosen another's bound. Measured on the official ConvNeXt-L layout
(1024 px, random weights): learned queries move by 0.073 (0.68 % of max |logit| 10.7) in PyTorch
itself under 1e-7, 1e-6 or 1e-5 noise alike, and ONNX Runtime differs by the same 0.073 — the
sensitivity rule applies (bound 0.73); box-prompt queries move by 1.1e-3 and ONNX Runtime differs
by 1.3e-5 — the tolerance applies. The tiny preset moves by ~1e-6 relative: the tolerance applies.
Where the sensitivity rule applies the logit gate cannot resolve errors below ten times the model's
own rounding noise; the mask IoU, top-class and task gates are never scaled. The other graphs
(encoder, pixel decoder, prompt encoder, text encoder, CLIP head) have no thresholds and keep the
plain rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.graphs import GraphDef
from omg_rt.backends import GraphRunner, TensorSpec
from omg_rt.backends.onnxruntime import OnnxRuntimeGraph
from omg_rt.cache import EncodedImage
from omg_rt.errors import OmgRtError
from omg_rt.metrics import interactive_miou
from omg_rt.pipeline import Pipeline, Runner
from omg_rt.postprocess.instance import instance_results
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import panoptic_results
from omg_rt.postprocess.semantic import semantic_results
from omg_rt.preprocess import prepare_image
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    GRAPHS,
    PIXEL_DECODER,
    PROMPT_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    ModelSpec,
)

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"logit_atol": 1e-4, "mask_iou": 0.999, "top_class": 0.99},
    "fp16": {"mask_iou": 0.99},
    "int8": {},
}
# The query decoder's own movement under float32-level input noise scales its logit bound (see
# the module docstring): relative noise of 1e-6 (~8 ulps, the size of a reordered float32 sum's
# rounding), and an export may differ from PyTorch by at most 10x that movement.
SENSITIVE_GRAPHS = (QUERY_DECODER.name, PROMPT_DECODER.name)
SENSITIVITY_REL = 1e-6
SENSITIVITY_FACTOR = 10.0
SENSITIVITY_SEED = 11
HELD_OUT_SEED = 2024  # synthetic scenes never used for calibration (seed 0 and up)
NUM_SCENES = 2
PROMPT_COUNTS = (1, 3, 16)


class ParityError(OmgRtError):
    """An exported graph is outside its tolerance; ``report`` is the full verify report."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


Runners = Mapping[str, Runner]


class ModuleRunner:
    """A graph's PyTorch wrapper (the module ``torch.onnx.export`` traces) as a runner: named
    numpy inputs -> named numpy outputs, every exported dynamic axis dynamic."""

    def __init__(self, graph: GraphDef) -> None:
        self.graph = graph
        self._inputs = {
            name: TensorSpec(
                name=name,
                shape=tuple(graph.dynamic_axes.get(name, {}).get(axis, size)
                            for axis, size in enumerate(example.shape)),
                dtype=str(example.numpy().dtype),
            )
            for name, example in zip(graph.io.inputs, graph.example)
        }

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        d = self.graph
        args = [torch.from_numpy(np.asarray(feeds[name])) for name in d.io.inputs]
        with torch.no_grad():
            out = d.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {name: t.numpy() for name, t in zip(d.io.outputs, out)}


def torch_runners(defs: Mapping[str, GraphDef]) -> dict[str, ModuleRunner]:
    """Every graph's PyTorch wrapper as a runner (the reference)."""
    return {name: ModuleRunner(d) for name, d in defs.items()}


def ort_runners(files: Mapping[str, Path]) -> dict[str, GraphRunner]:
    """Every graph file in ONNX Runtime on the CPU, behind the runtime's validating runner."""
    by_name = {g.name: g for g in GRAPHS}
    return {name: GraphRunner(by_name[name],
                              OnnxRuntimeGraph(Path(path), providers=["CPUExecutionProvider"]))
            for name, path in files.items()}


@dataclass
class Scene:
    """A preprocessed real image with what post-processing and prompts need."""

    tensor: np.ndarray  # (1, 3, Hp, Wp), padded to a multiple of 32 as the runtime does
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    masks: np.ndarray  # (N, H, W) bool ground-truth segments
    boxes: np.ndarray  # (N, 4) xyxy in resized-image pixels

    @property
    def padded_hw(self) -> tuple[int, int]:
        return int(self.tensor.shape[2]), int(self.tensor.shape[3])


def prepare_scene(image: np.ndarray, masks: np.ndarray, image_size: int,
                  mean: Sequence[float], std: Sequence[float]) -> Scene:
    """Keep-ratio resize into the (S, S) scale box, normalise, zero-pad to a multiple of 32 (the
    official preprocessing, as the runtime does it)."""
    prepared = prepare_image(image, scale=(image_size, image_size), mean=mean, std=std)
    tensor = prepared.tensor
    scale_y = prepared.resized_hw[0] / image.shape[0]
    scale_x = prepared.resized_hw[1] / image.shape[1]
    masks = masks[masks.reshape(len(masks), -1).any(1)]  # objects out of this frame have none
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min() * scale_x, ys.min() * scale_y, (xs.max() + 1) * scale_x,
                      (ys.max() + 1) * scale_y])
    return Scene(tensor, (image.shape[0], image.shape[1]), prepared.resized_hw, masks,
                 np.asarray(boxes, np.float32).reshape(-1, 4))


def synthetic_scenes(count: int, image_size: int, mean, std, seed: int) -> list[Scene]:
    from training.data.synthetic import SceneConfig, SceneGenerator

    size = max(64, min(image_size, 256))  # drawn small, resized up as real photos are
    generator = SceneGenerator(seed, config=SceneConfig(image_size=size))
    scenes = []
    for i in range(count):
        drawn = generator.image(i)
        # photos are rarely square: every other scene is cropped to 3:4, portrait or landscape
        image, masks = drawn.image, drawn.masks
        if i % 2:
            keep = size * 3 // 4
            image, masks = ((image[:keep], masks[:, :keep]) if i % 4 == 1
                            else (image[:, :keep], masks[:, :, :keep]))
        scenes.append(prepare_scene(np.ascontiguousarray(image), masks, image_size, mean, std))
    return scenes


def synthetic_clip(image_size: int, mean, std, seed: int) -> list[Scene]:
    from training.data.synthetic import SceneConfig, SceneGenerator

    size = max(64, min(image_size, 256))
    video = SceneGenerator(seed, config=SceneConfig(image_size=size)).video(0, 2)
    return [prepare_scene(video.frames[t], video.masks[:, t], image_size, mean, std)
            for t in range(video.frames.shape[0])]


def output_errors(test: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict:
    out: dict[str, dict[str, float]] = {}
    for name, r in ref.items():
        t = test[name]
        if r.dtype == bool:
            out[name] = {"mismatches": float((t != r).sum())}
            continue
        diff = float(np.abs(t.astype(np.float64) - r).max()) if r.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        out[name] = {"max_abs": diff, "max_rel": diff / scale if scale > 0 else diff,
                     "ref_max_abs": scale}
    return out


def _binary(mask_logits: np.ndarray, scene: Scene) -> np.ndarray:
    full = upsample_masks(mask_logits, scene.padded_hw, scene.resized_hw, scene.original_hw)
    return full > 0  # sigmoid(x) > 0.5


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(ious.mean()) if len(ious) else 1.0


class Verifier:
    """Runs the checks of one precision against the PyTorch reference.

    Every end-to-end request goes through the runtime's decoder layer
    (:class:`omg_rt.pipeline.Pipeline`): the same call on a pipeline of PyTorch runners and on
    one of the exported graphs, compared.
    """

    def __init__(self, defs: Mapping[str, GraphDef], spec: ModelSpec, bank: np.ndarray,
                 learned: tuple[np.ndarray, np.ndarray], num_things: int, image_size: int, *,
                 progress: bool = True) -> None:
        self.defs, self.spec, self.bank, self.learned = defs, spec, bank, learned
        self.num_things, self.image_size = num_things, image_size
        self.mean, self.std = spec.preprocess.mean, spec.preprocess.std
        self.progress = progress
        self.reference = torch_runners(defs)
        self.reference_pipeline = self.pipeline(self.reference)
        self.scenes = synthetic_scenes(NUM_SCENES, image_size, self.mean, self.std, HELD_OUT_SEED)
        self.clip = synthetic_clip(image_size, self.mean, self.std, HELD_OUT_SEED)
        self._cache: dict[Any, Any] = {}
        self._sensitivity: dict[tuple[str, int], dict[str, dict[str, float]]] = {}

    def pipeline(self, runners: Runners) -> Pipeline:
        """The runtime's decoder layer over ``runners`` with this model's learned queries."""
        return Pipeline(runners, query_content=self.learned[0], query_position=self.learned[1],
                        postprocess=self.spec.postprocess,
                        logit_scale=float(np.exp(self.spec.query_decoder.logit_scale_log)),
                        folded_prompts=self.spec.query_decoder.folded_prompts)

    def _ref(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # -- graphs on identical inputs ---------------------------------------------------------
    def graph_inputs(self) -> dict[str, list[dict[str, np.ndarray]]]:
        rng = np.random.default_rng(7)
        s = self.image_size
        ref = self.reference
        # landscape 3:4 as a photo (height and width are dynamic axes)
        image = rng.standard_normal((2, 3, -(-s * 3 // 4 // 32) * 32, s)).astype(np.float32)
        features = self._ref("features", lambda: ref[ENCODER.name]({"image": image}))
        pixels = self._ref("pixels", lambda: ref[PIXEL_DECODER.name](features))
        c = self.learned[0].shape[-1]
        learned = tuple(np.broadcast_to(q, (2, *q.shape)).copy() for q in self.learned)
        prompts = tuple(rng.standard_normal((2, 3, c)).astype(np.float32) for _ in range(2))
        qd = [{**pixels, "class_bank": self.bank, "query_content": learned[0],
               "query_position": learned[1], "prompt_mode": np.array(False)},
              {**pixels, "class_bank": self.bank, "query_content": prompts[0],
               "query_position": prompts[1], "prompt_mode": np.array(True)}]
        inputs = {ENCODER.name: [{"image": image}], PIXEL_DECODER.name: [features],
                  QUERY_DECODER.name: qd}
        if PROMPT_DECODER.name in self.defs:  # the two images, three prompts each
            inputs[PROMPT_DECODER.name] = [{**pixels, "class_bank": self.bank,
                                            "query_content": prompts[0],
                                            "query_position": prompts[1]}]
        if PROMPT_ENCODER.name in self.defs:
            boxes = np.sort(rng.uniform(0, s, (2, 5, 4)).astype(np.float32).reshape(2, 5, 2, 2),
                            axis=2).transpose(0, 1, 3, 2).reshape(2, 5, 4)
            inputs[PROMPT_ENCODER.name] = [{"prompt_boxes": boxes,
                                            "image_size": np.full((2, 2), s, np.float32)}]
        if TEXT_ENCODER.name in self.defs:
            tokens = self.defs[TEXT_ENCODER.name].example[0].numpy()
            inputs[TEXT_ENCODER.name] = [{"token_ids": tokens}]
        widths = self.defs[CLIP_HEAD.name].example[0].shape[-1]
        inputs[CLIP_HEAD.name] = [{"pooled_features": rng.standard_normal((2, 4, widths))
                                   .astype(np.float32)}]
        return inputs

    def check_graphs(self, runners: Runners) -> dict[str, Any]:
        """Per graph and output: the errors of ``runners`` against PyTorch on identical inputs
        (the worst over the input cases). :data:`SENSITIVE_GRAPHS` add PyTorch's own
        ``self_sensitivity_*`` and keep each input case's errors in ``cases`` (the bound is
        per case: one case's discontinuity must not loosen another's)."""
        report: dict[str, Any] = {}
        for graph, feeds_list in self.graph_inputs().items():
            results = []
            for i, feeds in enumerate(feeds_list):
                ref = self._ref(("graph", graph, i),
                                lambda g=graph, f=feeds: self.reference[g](f))
                errors = output_errors(runners[graph](feeds), ref)
                if graph in SENSITIVE_GRAPHS:
                    if (graph, i) not in self._sensitivity:
                        self._sensitivity[graph, i] = self.self_sensitivity(graph, feeds, ref)
                    moved = self._sensitivity[graph, i]
                    for name, err in errors.items():
                        if name in moved:
                            err["self_sensitivity_max_abs"] = moved[name]["max_abs"]
                            err["self_sensitivity_max_rel"] = moved[name]["max_rel"]
                results.append(errors)
            report[graph] = _worst(results)
            if graph in SENSITIVE_GRAPHS:
                for name, err in report[graph].items():
                    err["cases"] = [r[name] for r in results]
        return report

    def self_sensitivity(self, graph: str, feeds: Mapping[str, np.ndarray],
                         ref: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """How far PyTorch's own outputs move when every float input is multiplied by
        ``1 + SENSITIVITY_REL * u``, u uniform in [-1, 1] (seeded): errors as :func:`output_errors`
        of the perturbed run against ``ref`` (PyTorch on ``feeds``)."""
        rng = np.random.default_rng(SENSITIVITY_SEED)
        perturbed = {}
        for name, value in feeds.items():
            if value.dtype == np.float32:
                noise = rng.uniform(-SENSITIVITY_REL, SENSITIVITY_REL, value.shape)
                value = (value * (1.0 + noise)).astype(np.float32)
            perturbed[name] = value
        moved = self.reference[graph](perturbed)
        return {k: v for k, v in output_errors(moved, ref).items() if "max_abs" in v}

    # -- tasks end to end ----------------------------------------------------------------------
    def check_tasks(self, runners: Runners) -> dict[str, Any]:
        """The runtime's requests (learned queries on each scene, prompts, a 2-frame clip) on
        the exported graphs and on PyTorch, compared after the official post-processing."""
        tasks: dict[str, list[dict[str, Any]]] = {
            "panoptic": [], "instance": [], "semantic": [], "prompts": [], "video": []}
        test, reference = self.pipeline(runners), self.reference_pipeline
        for i, scene in enumerate(self.scenes):
            ref_frames = self._ref(("frames", i), lambda s=scene: reference.encode(s.tensor))
            frames = test.encode(scene.tensor)
            ref = self._ref(("image", i), lambda f=ref_frames: reference.decode_learned(
                f, self.bank))
            out = test.decode_learned(frames, self.bank)
            common = self._compare_queries(out, ref, scene)
            tasks["panoptic"].append({**common, **self._panoptic(out, ref, scene)})
            tasks["instance"].append({**common, **self._instance(out, ref, scene)})
            tasks["semantic"].append({**common, **self._semantic(out, ref, scene)})
            if test.has_prompts:
                for count in PROMPT_COUNTS:
                    tasks["prompts"].append(
                        self._prompts(test, scene, i, count, frames, ref_frames))
        clip = np.concatenate([s.tensor for s in self.clip])
        ref = self._ref("clip", lambda: reference.decode_learned(reference.encode(clip),
                                                                 self.bank))
        out = test.decode_learned(test.encode(clip), self.bank)
        tasks["video"].append(self._compare_queries(out, ref, self.clip[0],
                                                    frames=len(self.clip)))
        return {name: _worst(items) for name, items in tasks.items()}

    def _compare_queries(self, test, ref, scene: Scene, frames: int = 1) -> dict[str, Any]:
        errors = output_errors({k: test[k] for k in ref}, ref)
        ious = []
        for t in range(frames):
            ious.append(_mask_iou(_binary(test["mask_logits"][0, :, t], scene),
                                  _binary(ref["mask_logits"][0, :, t], scene)))
        top = float((test["class_logits"][0].argmax(-1) == ref["class_logits"][0].argmax(-1))
                    .mean())
        return {"class_logits_max_abs": errors["class_logits"]["max_abs"],
                "class_logits_max_rel": errors["class_logits"]["max_rel"],
                "mask_logits_max_abs": errors["mask_logits"]["max_abs"],
                "mask_logits_max_rel": errors["mask_logits"]["max_rel"],
                "iou_logits_max_abs": errors["iou_logits"]["max_abs"],
                "mask_iou": min(ious), "top_class_agreement": top}

    def _full(self, out, scene):
        return upsample_masks(out["mask_logits"][0, :, 0], scene.padded_hw, scene.resized_hw,
                              scene.original_hw)

    def _panoptic(self, test, ref, scene) -> dict[str, Any]:
        maps = []
        for out in (test, ref):
            result = panoptic_results(out["class_logits"][0], self._full(out, scene),
                                      self.num_things)
            category = np.full(result.id_map.shape, -1, np.int64)
            for seg in result.segments:
                category[result.id_map == seg["id"]] = seg["category_id"]
            maps.append(category)
        return {"panoptic_pixel_agreement": float((maps[0] == maps[1]).mean())}

    def _instance(self, test, ref, scene) -> dict[str, Any]:
        selections = []
        for out in (test, ref):  # the top-k may hold no thing class (random weights): N = 0
            result = instance_results(out["class_logits"][0], self._full(out, scene),
                                      self.num_things)
            selections.append((result.labels, result.query_indices))
        (la, qa), (lb, qb) = selections
        same = np.array_equal(la, lb) and np.array_equal(qa, qb)
        return {"instance_same_selection": float(same), "instances": len(lb)}

    def _semantic(self, test, ref, scene) -> dict[str, Any]:
        a = semantic_results(test["class_logits"][0], self._full(test, scene))
        b = semantic_results(ref["class_logits"][0], self._full(ref, scene))
        return {"semantic_pixel_agreement": float((a == b).mean())}

    def _prompts(self, test: Pipeline, scene: Scene, index: int, count: int,
                 frames: list[EncodedImage], ref_frames: list[EncodedImage]) -> dict[str, Any]:
        boxes = np.resize(scene.boxes, (count, 4)).astype(np.float32)  # pad by repeating
        reference = self.reference_pipeline

        def decode(pipeline: Pipeline, f: list[EncodedImage]) -> dict[str, np.ndarray]:
            queries = pipeline.prompt_queries(boxes, scene.resized_hw)
            return pipeline.decode_prompts(f[0], *queries, self.bank)

        ref = self._ref(("prompts", index, count), lambda: decode(reference, ref_frames))
        out = decode(test, frames)
        common = self._compare_queries(out, ref, scene)
        args = (scene.padded_hw, scene.resized_hw, scene.original_hw)
        a = prompt_results(out["mask_logits"][0, :, 0], out["iou_logits"][0], *args)
        b = prompt_results(ref["mask_logits"][0, :, 0], ref["iou_logits"][0], *args)
        common["prompt_mask_iou"] = _mask_iou(a.masks, b.masks)
        common["prompts"] = count
        return common

    # -- held-out metric ------------------------------------------------------------------------
    def interactive_miou(self, runners: Runners, count: int) -> float:
        """Interactive mIoU of one box prompt per ground-truth segment, held-out scenes."""
        pipeline = self.pipeline(runners)
        scenes = synthetic_scenes(count, self.image_size, self.mean, self.std, HELD_OUT_SEED + 1)
        values = []
        for scene in scenes:
            (result,) = pipeline.predict_prompts(pipeline.encode(scene.tensor)[0],
                                                 scene.resized_hw, [scene.boxes], self.bank)
            masks = prompt_results(result.mask_logits, result.iou_logits, scene.padded_hw,
                                   scene.resized_hw, scene.original_hw).masks
            values.append(interactive_miou(masks, scene.masks))
        return float(np.mean(values))


def _worst(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-case results: the largest error, the smallest agreement."""
    out: dict[str, Any] = {}
    for item in items:
        for key, value in item.items():
            if isinstance(value, Mapping):
                out[key] = _worst([out.get(key, {}), value]) if key in out else dict(value)
            elif key in out:
                better_low = "max" in key or "mismatch" in key or key == "prompts"
                out[key] = max(out[key], value) if better_low else min(out[key], value)
            else:
                out[key] = value
    return out


def logit_bounds(precision: str, graphs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The bound on every float output's max |delta| (``"graph.output"`` keys; empty without a
    ``logit_atol`` tolerance), per input case where ``cases`` were kept: ``tolerance`` =
    ``logit_atol * max(1, ref_max_abs)``, ``sensitivity`` = ``SENSITIVITY_FACTOR *
    self_sensitivity_max_abs`` (0 where not measured), ``bound`` the larger, ``rule`` which one
    it is. Each output reports its binding case (the largest ``max_abs / bound``; ``case`` is its
    index) and ``passed`` (every case within its own bound)."""
    tol = TOLERANCES[precision]
    if "logit_atol" not in tol:
        return {}
    bounds = {}
    for graph, outputs in graphs.items():
        for name, err in outputs.items():
            if "max_abs" not in err:
                continue
            per_case = []
            for case in err.get("cases", [err]):
                tolerance = tol["logit_atol"] * max(1.0, case["ref_max_abs"])
                sensitivity = SENSITIVITY_FACTOR * case.get("self_sensitivity_max_abs", 0.0)
                per_case.append({
                    "max_abs": case["max_abs"], "tolerance": tolerance,
                    "sensitivity": sensitivity, "bound": max(tolerance, sensitivity),
                    "rule": "sensitivity" if sensitivity > tolerance else "tolerance"})
            ratios = [c["max_abs"] / c["bound"] for c in per_case]  # bound >= logit_atol > 0
            worst = int(np.argmax(ratios))
            bounds[f"{graph}.{name}"] = {**per_case[worst], "passed": max(ratios) <= 1.0,
                                         **({"case": worst} if "cases" in err else {})}
    return bounds


def gate(precision: str, graphs: Mapping[str, Any], tasks: Mapping[str, Any]) -> list[str]:
    """The failures of one precision against :data:`TOLERANCES` (empty = passed)."""
    tol = TOLERANCES[precision]
    failures = []
    if "logit_atol" in tol:
        for graph, outputs in graphs.items():
            for name, err in outputs.items():
                if "max_abs" not in err and err.get("mismatches", 0):
                    failures.append(f"{graph}.{name}: {err['mismatches']} mismatches")
        for output, b in logit_bounds(precision, graphs).items():
            if not b["passed"]:
                why = (f"{SENSITIVITY_FACTOR:g} x PyTorch's own movement"
                       if b["rule"] == "sensitivity" else "tolerance")
                where = f"input case {b['case']}, " if "case" in b else ""
                failures.append(f"{output}: max |delta| {b['max_abs']:.3g} > {b['bound']:.3g} "
                                f"({where}{why})")
    for task, result in tasks.items():
        if "mask_iou" in tol and result.get("mask_iou", 1.0) < tol["mask_iou"]:
            failures.append(f"{task}: mask IoU {result['mask_iou']:.5f} < {tol['mask_iou']}")
        if "mask_iou" in tol and result.get("prompt_mask_iou", 1.0) < tol["mask_iou"]:
            failures.append(f"{task}: prompt mask IoU {result['prompt_mask_iou']:.5f} < "
                            f"{tol['mask_iou']}")
        if "top_class" in tol and result.get("top_class_agreement", 1.0) < tol["top_class"]:
            failures.append(f"{task}: top-class agreement {result['top_class_agreement']:.4f} "
                            f"< {tol['top_class']}")
    return failures


def check_precision(verifier: Verifier, precision: str, runners: Runners) -> dict[str, Any]:
    """One precision's report entry: graphs, tasks, the logit bounds applied, the failures."""
    graphs = verifier.check_graphs(runners)
    tasks = verifier.check_tasks(runners)
    failures = gate(precision, graphs, tasks)
    return {"graphs": graphs, "tasks": tasks, "passed": not failures, "failures": failures,
            "logit_bounds": logit_bounds(precision, graphs)}


def verify(verifier: Verifier, files: Mapping[str, Mapping[str, Path]], *,
           metric_images: int = 4, progress: bool = True) -> dict[str, Any]:
    """Check every precision in ``files`` ({precision: {graph: path}}); returns the report."""
    report: dict[str, Any] = {
        "tolerances": TOLERANCES,
        "sensitivity": {"graphs": list(SENSITIVE_GRAPHS), "input_rel": SENSITIVITY_REL,
                        "factor": SENSITIVITY_FACTOR, "seed": SENSITIVITY_SEED},
        "precisions": {}}
    baseline: float | None = None
    steps = tqdm(list(files.items()), desc="verify", unit="precision", disable=not progress)
    for precision, graph_files in steps:
        steps.set_postfix_str(precision)
        runners = ort_runners(graph_files)
        entry = check_precision(verifier, precision, runners)
        if PROMPT_ENCODER.name in verifier.defs and precision in ("fp32", "fp16", "int8"):
            if baseline is None:
                baseline = verifier.interactive_miou(
                    runners if precision == "fp32" else ort_runners(files["fp32"]),
                    metric_images)
            value = baseline if precision == "fp32" else verifier.interactive_miou(
                runners, metric_images)
            entry["held_out_metric"] = {
                "name": "interactive mIoU (box prompts, synthetic held-out scenes)",
                "images": metric_images, "fp32": baseline, "value": value,
                "drop": baseline - value}
        report["precisions"][precision] = entry
    report["passed"] = all(p["passed"] for p in report["precisions"].values())
    return report
