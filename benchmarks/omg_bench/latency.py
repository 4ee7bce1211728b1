"""Warm latencies through the runtime, every target side by side.

Each measurement is a *case* (one target, one thing timed). Cases run round-robin — round r
times every case once, starting at a rotating offset — so a noisy neighbour on a shared machine
slows every target alike and the ratios stay honest. Timers are ``time.perf_counter`` around
each call and the target's :meth:`~benchmarks.omg_bench.targets.Target.synchronize`: on a GPU
every backend has finished its work when the timer stops (what the next stage needs stays on the
device, as the runtime keeps it), as the nanosam / EfficientViT-SAM tables count it.

Stages are the runtime's own graph runners called with the feeds its decoder layer builds
(``Segmenter.pipeline``, :mod:`omg_rt.pipeline`); post-processing is the runtime's panoptic
assembly on the query decoder's real outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.harness import percentiles_ms
from benchmarks.omg_bench.targets import Target
from omg_rt.assembly import panoptic_result
from omg_rt.spec import ENCODER, IMAGE_TASKS, PIXEL_DECODER, QUERY_DECODER

STAGES = ("preprocess", "encoder", "pixel decoder", "query decoder", "post-process")


@dataclass
class Case:
    target: Target
    section: str
    label: str
    fn: Callable[[], Any]
    setup: Callable[[], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)


def run_round_robin(cases: list[Case], *, warmup: int, runs: int, desc: str,
                    progress: bool) -> None:
    """Fill every case's ``samples`` (ms) with ``runs`` timings after ``warmup`` untimed calls."""
    total = warmup + runs
    for r in tqdm(range(total), desc=desc, unit="round", disable=not progress):
        offset = r % len(cases) if cases else 0
        for case in cases[offset:] + cases[:offset]:
            with case.target.context():
                if case.setup is not None:
                    case.setup()
                start = time.perf_counter()
                case.fn()
                case.target.synchronize()
                elapsed = (time.perf_counter() - start) * 1e3
            if r >= warmup:
                case.samples.append(elapsed)


def _cycle(items: list[Any]) -> Callable[[], Any]:
    state = {"i": -1}

    def nxt() -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def image_cases(target: Target, images: list[np.ndarray], tasks: tuple[str, ...]) -> list[Case]:
    """Stages (batch 1) and end-to-end per image task, for one target."""
    seg = target.segmenter
    pipeline, encoder = seg.pipeline, seg.image_encoder
    graphs = pipeline.runners
    image = images[0]

    def preprocess() -> np.ndarray:
        return encoder.tensor(encoder.prepare(image, "image"))

    tensor = preprocess()
    with target.context():
        features = graphs[ENCODER.name]({"image": tensor})
        pixel_feeds = {name: features[name] for name in PIXEL_DECODER.inputs}
        seg.cache.clear()
        session = seg.set_image(image)
        frames = [session.encoded]
        decoder_feeds = pipeline.feeds(frames, pipeline.query_content, pipeline.query_position,
                                       False, seg.vocabulary.class_bank)
        outputs = graphs[QUERY_DECODER.name](decoder_feeds)
        cls = pipeline.class_scores(outputs, frames, seg.vocabulary, ensemble=seg.ensemble)
    mask_logits = outputs["mask_logits"][0][:, 0]
    cases = [
        Case(target, "stage", "preprocess", preprocess),
        Case(target, "stage", "encoder", lambda: graphs[ENCODER.name]({"image": tensor})),
        Case(target, "stage", "pixel decoder", lambda: graphs[PIXEL_DECODER.name](pixel_feeds)),
        Case(target, "stage", "query decoder",
             lambda: graphs[QUERY_DECODER.name](decoder_feeds)),
        Case(target, "stage", "post-process",
             lambda: panoptic_result(session, cls, mask_logits, seg.vocabulary,
                                     seg.spec.postprocess, device=seg.post_device)),
    ]
    nxt = _cycle(images)
    methods = {"panoptic": seg.panoptic, "instance": seg.instances, "semantic": seg.semantic}
    for task in IMAGE_TASKS:
        if task in tasks or (task == "panoptic" and not any(t in tasks for t in methods)):
            holder: dict[str, Any] = {}

            def setup(holder=holder) -> None:
                seg.cache.clear()  # every call pays the encoder, as a new image does
                holder["image"] = nxt()

            cases.append(Case(target, "end_to_end", task,
                              lambda m=methods[task], h=holder: m(h["image"]), setup))
    return cases


def throughput_cases(target: Target, images: list[np.ndarray], batches: tuple[int, ...]
                     ) -> list[Case]:
    """``set_images`` (encoder batched) + panoptic per image, B new images per call."""
    seg = target.segmenter
    cases = []
    for batch in batches:
        group = [images[i % len(images)] for i in range(batch)]
        if len({id(g) for g in group}) < batch:  # distinct content, or the runtime dedups
            group = [np.ascontiguousarray(np.roll(g, i, axis=1)) for i, g in enumerate(group)]

        def run(group=group) -> None:
            for session in seg.set_images(group):
                seg.panoptic(session)

        cases.append(Case(target, "throughput", f"batch {batch}", run,
                          lambda: seg.cache.clear(), {"batch": batch}))
    return cases


def prompt_cases(target: Target, images: list[np.ndarray], counts: tuple[int, ...]
                 ) -> list[Case]:
    """Clicks on an image whose encoder work is cached (query decoder + post-processing)."""
    seg = target.segmenter
    image = images[0]
    h, w = image.shape[:2]
    with target.context():
        session = seg.set_image(image)
    rng = np.random.default_rng(0)
    cases = []
    for n in counts:
        points = (rng.random((n, 2)) * [w - 1, h - 1]).astype(np.float32)
        cases.append(Case(target, "prompt", f"{n} prompts",
                          lambda p=points: seg.prompt(session, points=p), None, {"prompts": n}))
    return cases


def video_latency(targets: list[Target], videos: list[np.ndarray], passes: int,
                  progress: bool, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Per-frame cost of a VIS stream: each clip's steps summed / its frames (amortised; a
    clip's last step decodes it), one sample per frame (a short last clip weighs its frames).
    Targets interleaved per pass, after ``warmup`` untimed passes (the clip shapes' first
    calls: Triton compiles, cuDNN picks algorithms, caches fill)."""
    per_target: dict[str, list[float]] = {t.key: [] for t in targets}
    clip_size: dict[str, int] = {}
    rounds = [False] * (warmup if passes else 0) + [True] * passes
    for timed in tqdm(rounds, desc="video", unit="pass", disable=not progress):
        for target in targets:
            for frames in videos:
                spent = _vis_stream(target, frames)
                clip_size[target.key] = spent["clip_size"]
                if timed:
                    per_target[target.key].extend(spent["ms_per_frame"])
    return {key: {**percentiles_ms(v), "clip_size": clip_size.get(key)}
            for key, v in per_target.items() if v}


def _vis_stream(target: Target, frames: np.ndarray) -> dict[str, Any]:
    """One VIS session over ``frames``: its clip size and each frame's ms (its clip's time /
    its frames)."""
    per_frame: list[float] = []
    with target.context():
        session = target.segmenter.open_video("vis")
        spent, count = 0.0, 0
        for frame in frames:
            start = time.perf_counter()
            out = session.step(frame)
            spent += time.perf_counter() - start
            count += 1
            if out:
                per_frame.extend([spent * 1e3 / count] * count)
                spent, count = 0.0, 0
        start = time.perf_counter()
        out = session.finish()
        spent += time.perf_counter() - start
        if out and count:
            per_frame.extend([spent * 1e3 / count] * count)
    return {"clip_size": session.clip_size, "ms_per_frame": per_frame}


def summarize(cases: list[Case]) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        if not case.samples:
            continue
        rows.append({**case.target.describe(), "section": case.section, "case": case.label,
                     **case.extra, **percentiles_ms(case.samples)})
    return rows
