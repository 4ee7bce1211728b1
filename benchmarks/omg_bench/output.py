"""The report files: ``report.json`` (every number, the environment), ``report.md`` (tables and
how they were measured), ``plot.png`` (latency vs accuracy per precision) and the summary section
of ``RESULTS.md`` (between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->``; the rest of the file
is left as it is)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from benchmarks.omg_bench.accuracy import METRICS
from benchmarks.omg_bench.options import BenchOptions
from omg_rt.spec import IMAGE_TASKS

HOW_MEASURED = """\
- Everything runs through the runtime (`omg_rt.Segmenter`), so the numbers are what users get.
  Timer: `time.perf_counter` around calls that return host numpy arrays, so GPU work has
  finished and its outputs are copied back when the timer stops (data transfer included).
- Targets are measured side by side in one process, round-robin (each round times every case
  once, from a rotating start): on a shared machine noise hits every target alike; read ratios
  and medians. p50 / p90 / p99 after {warmup} warm-up rounds over {runs} runs (with fewer than
  100 runs p99 lies between the two slowest).
- Stages (batch 1): the runtime's own graph calls with the feeds it builds; post-process = the
  panoptic merge on the query decoder's real outputs (on the GPU when the graphs run there:
  `Segmenter.post_device`). End to end = `panoptic()` / `instances()`
  / `semantic()` on an image not in the encoder cache (preprocess + 3 graphs + post-process).
- Throughput: `set_images` of B new images (encoder batched by B) + `panoptic` of each.
- Prompts: clicks on an image whose encoder work is cached (prompt encoder + prompt decoder +
  mask post-processing). Video: a VIS stream after one untimed pass (with --warmup > 0), each
  clip's step times summed / its frames, one sample per frame.
- Cold start: a fresh process imports the runtime, runs `Segmenter.from_bundle` and the first
  `panoptic` call; peak RSS (`getrusage`, imports included) after 3 more calls; GPU: torch's
  `max_memory_allocated` (torch) or the process's `nvidia-smi` memory (others).
- Accuracy: the same images for every target, `omg_rt.metrics` (PQ: panopticapi matching; mask
  AP: COCOeval; mIoU; interactive mIoU of one innermost click / one tight box per thing; J&F:
  DAVIS, VOS from the first frame's objects). Δ = target − reference (FP32 PyTorch, same size).
- PyTorch FP16 = the torch backend under `torch.autocast(float16)` (CUDA only)."""


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    return value


def write_all(report: dict[str, Any], options: BenchOptions) -> None:
    out = options.out
    plot = write_plot(report, out / "plot.png")
    report["plot"] = plot
    (out / "report.json").write_text(json.dumps(jsonable(report), indent=1, sort_keys=False))
    (out / "report.md").write_text(markdown_report(report, options))
    if options.results is not None:
        update_results(Path(options.results), options.results_section,
                       summary_markdown(report, out))


# ---------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def signed(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}"


def env_line(env: dict[str, Any]) -> str:
    parts = [env.get("date", "?"), f"{env.get('cpu', '?')} ({env.get('cores', '?')} cores)"]
    if env.get("gpu"):
        parts.append(f"{env['gpu']} (driver {env.get('gpu_driver', '?')}, CUDA "
                     f"{env.get('cuda', '?')})")
    else:
        parts.append("no GPU")
    parts.append(f"Python {env.get('python', '?')}")
    for name in ("torch", "onnxruntime", "triton", "tensorrt"):
        if env.get(name):
            parts.append(f"{name} {env[name]}")
    parts.append(f"git {env.get('git', '?')}")
    return "_" + " · ".join(parts) + "_"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or ("---|" + "---:|" * (len(header) - 1))
    lines = ["| " + " | ".join(header) + " |", "|" + align]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _key(row: dict[str, Any]) -> str:
    return f"{row['backend']}/{row['precision']}/{row['image_size']}"


def _label(row: dict[str, Any]) -> str:
    return f"{row['backend']} {row['precision']} @{row['image_size']}"


def _p(row: dict[str, Any]) -> str:
    return f"{fmt(row['p50_ms'])} / {fmt(row['p90_ms'])} / {fmt(row['p99_ms'])}"


def _ratio_to_reference(rows: list[dict[str, Any]], report: dict[str, Any]
                        ) -> dict[tuple[str, str], float]:
    refs = report.get("reference") or {}
    by = {(_key(r), r["case"]): r["p50_ms"] for r in rows}
    out = {}
    for r in rows:
        ref = by.get((refs.get(str(r["image_size"]), ""), r["case"]))
        if ref:
            out[_key(r), r["case"]] = ref / r["p50_ms"]
    return out


def _rate(images_per_s: float) -> str:
    """Images per second: one decimal, two below 1 (ConvNeXt-L on a CPU: 0.06)."""
    return fmt(images_per_s, 1 if images_per_s >= 1 else 2)


def _inputs_line(lat: dict[str, Any]) -> str:
    """What the latency sections were measured on (original sizes, width x height)."""
    inputs = lat.get("inputs") or {}
    parts = [f"{name} {w}x{h}" for name, key in (("images", "image_wh"),
                                                  ("video frames", "frame_wh"))
             if inputs.get(key) for w, h in [inputs[key]]]
    return ", ".join(parts) or "–"


def _stage_table(stages: list[dict[str, Any]], cell: Any) -> list[str]:
    """One row per target: each stage's ``cell(row)`` and the sum of the p50s."""
    from benchmarks.omg_bench.latency import STAGES

    rows = []
    for key in dict.fromkeys(_label(r) for r in stages):
        mine = {r["case"]: r for r in stages if _label(r) == key}
        total = sum(mine[s]["p50_ms"] for s in STAGES if s in mine)
        rows.append([key, *[cell(mine[s]) if s in mine else "–" for s in STAGES], fmt(total)])
    return _table(["target", *STAGES, "sum of p50"], rows)


def markdown_report(report: dict[str, Any], options: BenchOptions) -> str:
    env = report["environment"]
    lat = report.get("latency", {})
    model, data = report["model"], report["dataset"]
    refs = report.get("reference") or {}
    lines = [f"# omg-bench report — {env.get('date', '')}", "", env_line(env), ""]
    lines.append(f"- Command: `{report.get('command', 'omg-bench')}`")
    lines.append(f"- Model: {model['kind']} `{model['source']}`"
                 + (f" — {model['note']}" if model.get("note") else ""))
    if not model.get("trained", True):
        lines.append("- **Untrained weights: the accuracy numbers below are meaningless; "
                     "only the deltas between backends/precisions are informative.**")
    lines.append(f"- Data: {data['source']}: {data['images']} images, {data['videos']} videos "
                 f"x {data['frames_per_video']} frames, classes {', '.join(data['classes'])}"
                 + (f" ({data['note']})" if data.get("note") else ""))
    lines.append(f"- Latency inputs: {_inputs_line(lat)}")
    lines.append(f"- Reference for ratios and Δ: {', '.join(refs.values()) or 'none'}")
    lines.append(f"- Status: **{report['status']}**, {fmt(report.get('elapsed_s'), 0)} s")
    lines += ["", "## How measured", "",
              HOW_MEASURED.format(warmup=options.warmup, runs=options.runs), ""]

    lines += ["## Targets", ""]
    lines += _table(["backend", "precision", "size", "device", "runtime", "status", "reason"],
                    [[t["backend"], t["precision"], str(t["image_size"]), t["device"],
                      t["runtime"] or "–", t["status"], t["reason"] or ""]
                     for t in report["targets"]], "---|---|---:|---|---|---|---|")
    lines.append("")

    stages = lat.get("stages", [])
    if stages:
        lines += ["## Latency per stage, batch 1 (ms: p50 / p90 / p99)", ""]
        lines += _stage_table(stages, _p)
        lines.append("")
    e2e = lat.get("end_to_end", [])
    if e2e:
        ratios = _ratio_to_reference(e2e, report)
        lines += ["## End to end, batch 1 (ms)", ""]
        lines += _table(["target", "task", "p50", "p90", "p99", "runs", "speed-up vs ref"],
                        [[_label(r), r["case"], fmt(r["p50_ms"]), fmt(r["p90_ms"]),
                          fmt(r["p99_ms"]), str(r["runs"]),
                          fmt(ratios.get((_key(r), r["case"])), 2) + "x"]
                         for r in e2e], "---|---|---:|---:|---:|---:|---:|")
        lines.append("")
    thr = lat.get("throughput", [])
    if thr:
        lines += ["## Throughput (panoptic, encoder batched)", ""]
        lines += _table(["target", "batch", "ms per batch p50", "p90", "images/s"],
                        [[_label(r), str(r["batch"]), fmt(r["p50_ms"]), fmt(r["p90_ms"]),
                          _rate(r["images_per_s"])] for r in thr])
        lines.append("")
    prompts = lat.get("prompt", [])
    if prompts:
        lines += ["## Prompts on a cached image (ms)", ""]
        lines += _table(["target", "prompts", "p50", "p90", "p99", "ms per prompt"],
                        [[_label(r), str(r["prompts"]), fmt(r["p50_ms"]), fmt(r["p90_ms"]),
                          fmt(r["p99_ms"]), fmt(r["p50_ms"] / r["prompts"], 3)]
                         for r in prompts])
        lines.append("")
    video = lat.get("video", [])
    if video:
        lines += ["## Video (VIS stream, ms per frame amortised over each clip)", ""]
        lines += _table(["target", "clip size", "p50", "p90", "p99", "clips"],
                        [[_label(r), str(r["clip_size"]), fmt(r["p50_ms"]), fmt(r["p90_ms"]),
                          fmt(r["p99_ms"]), str(r["runs"])] for r in video])
        lines.append("")
    cold = report.get("cold_start", [])
    if cold:
        lines += ["## Cold start and peak memory (fresh process)", ""]
        lines += _table(["target", "import s", "load s", "first call s", "load + first s",
                         "RSS after import MiB", "peak RSS MiB", "GPU peak MiB"],
                        [[_label(r), fmt(r.get("import_s")), fmt(r.get("load_s")),
                          fmt(r.get("first_call_s")), fmt(r.get("cold_start_s")),
                          fmt(r.get("rss_after_import_mib"), 0), fmt(r.get("peak_rss_mib"), 0),
                          fmt(r.get("gpu_peak_mib"), 0)] if "error" not in r else
                         [_label(r), r["error"], "", "", "", "", "", ""] for r in cold])
        lines.append("")
    rows = report.get("accuracy", [])
    if rows:
        lines += [f"## Accuracy (Δ vs {', '.join(refs.values())})", ""]
        shown = [m for m in ("pq", "mask_ap", "miou", "interactive_miou_point",
                             "interactive_miou_box", "jf") if any(m in r for r in rows)]
        names = {"pq": "PQ", "mask_ap": "mask AP", "miou": "mIoU",
                 "interactive_miou_point": "click mIoU", "interactive_miou_box": "box mIoU",
                 "jf": "J&F"}
        header = ["target"]
        for m in shown:
            header += [names[m], "Δ"]
        lines += _table(header, [[_label(r)] + [x for m in shown for x in
                                                (fmt(r.get(m), 4), signed(r.get(f"delta_{m}")))]
                                 for r in rows])
        extra = [m for m in METRICS if m not in shown and any(m in r for r in rows)]
        lines += ["", f"Also in report.json: {', '.join(extra)}; images {rows[0]['images']}"
                  + (f", prompts {rows[0].get('prompts')}" if "prompts" in rows[0] else "")
                  + (f", videos {rows[0].get('videos')}" if "videos" in rows[0] else ""), ""]
    skipped = [t for t in report["targets"] if t["status"] != "ok"]
    if skipped:
        lines += ["## Skipped or failed", ""]
        lines += [f"- {t['backend']} {t['precision']} @{t['image_size']}: **{t['status']}** — "
                  f"{t['reason']}" for t in skipped]
        lines.append("")
    if report.get("plot", {}).get("file"):
        lines += ["## Latency vs accuracy", "", "![latency vs accuracy](plot.png)", ""]
    elif report.get("plot"):
        lines += ["## Latency vs accuracy", "", f"(no plot: {report['plot'].get('reason')})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- plot


def _plot_points(report: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    lat = report.get("latency", {})
    e2e = lat.get("end_to_end", [])
    task = next((t for t in IMAGE_TASKS if any(r["case"] == t for r in e2e)), None)
    if task:
        latencies = {(r["backend"], r["precision"], r["image_size"]): r["p50_ms"]
                     for r in e2e if r["case"] == task}
        x_label = f"{task} end-to-end p50 latency (ms)"
    else:
        prompts = [r for r in lat.get("prompt", []) if r["prompts"] == min(
            p["prompts"] for p in lat.get("prompt", []))] if lat.get("prompt") else []
        latencies = {(r["backend"], r["precision"], r["image_size"]): r["p50_ms"]
                     for r in prompts}
        x_label = "cached prompt p50 latency (ms)"
    acc = report.get("accuracy", [])
    metric = next((m for m in ("pq", "miou", "mask_ap", "interactive_miou_box",
                               "interactive_miou_point", "jf")
                   if any(isinstance(r.get(m), float) and math.isfinite(r[m]) for r in acc)),
                  None)
    points = []
    for key, ms in latencies.items():
        row = next((r for r in acc if (r["backend"], r["precision"], r["image_size"]) == key),
                   None)
        value = row.get(metric) if (row and metric) else None
        points.append({"backend": key[0], "precision": key[1], "image_size": key[2],
                       "latency_ms": ms, "accuracy": value})
    return x_label, metric or "", points


def write_plot(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """Latency (x) vs the main accuracy metric (y), one colour per precision, one marker per
    backend; a latency bar chart when nothing was scored."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {"file": None, "reason": f"matplotlib is not installed ({exc})"}
    x_label, metric, points = _plot_points(report)
    if not points:
        return {"file": None, "reason": "no latency to plot"}
    colours = {"fp32": "tab:blue", "fp16": "tab:orange", "int8": "tab:green"}
    markers = {"torch": "o", "onnxruntime": "s", "onnxruntime-cuda": "D", "tensorrt": "^"}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    scored = [p for p in points if isinstance(p["accuracy"], float)
              and math.isfinite(p["accuracy"])]
    if scored:
        for p in scored:
            ax.scatter(p["latency_ms"], p["accuracy"], s=60, c=colours.get(p["precision"], "k"),
                       marker=markers.get(p["backend"], "x"),
                       label=f"{p['backend']} {p['precision']}")
            ax.annotate(f"{p['backend']} {p['precision']} @{p['image_size']}",
                        (p["latency_ms"], p["accuracy"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_xlabel(x_label)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    else:
        names = [f"{p['backend']} {p['precision']} @{p['image_size']}" for p in points]
        ax.barh(names, [p["latency_ms"] for p in points],
                color=[colours.get(p["precision"], "k") for p in points])
        ax.set_xlabel(x_label)
    ax.grid(alpha=0.3)
    ax.set_title(f"omg-bench {report['environment'].get('date', '')} — "
                 f"{report['environment'].get('gpu') or report['environment'].get('cpu', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"file": path.name, "x": x_label, "y": metric or None, "points": points}


# ---------------------------------------------------------------------- RESULTS.md


def summary_markdown(report: dict[str, Any], out: Path) -> str:
    """The compact table ``RESULTS.md`` shows: one row per measured target."""
    lat = report.get("latency", {})
    model, data = report["model"], report["dataset"]
    lines = [env_line(report["environment"]), "",
             f"Command: `{report.get('command', 'omg-bench')}` — model {model['kind']} "
             f"`{Path(model['source']).name or model['source']}`"
             + ("" if model.get("trained", True) else " (untrained: accuracy meaningless, Δ "
                "still meaningful)")
             + f"; data: {data['images']} images, {data['videos']} videos ({data['source']}); "
             f"latency inputs: {_inputs_line(lat)}.",
             ""]

    def find(section: str, key: str, case: str | None = None, **match: Any) -> Any:
        for r in lat.get(section, []):
            if _key(r) == key and \
                    (case is None or r.get("case") == case) and \
                    all(r.get(k) == v for k, v in match.items()):
                return r
        return None

    counts = sorted({r["prompts"] for r in lat.get("prompt", [])})
    most = counts[-1] if len(counts) > 1 else None
    header = ["target", "e2e panoptic p50 ms", "img/s (batch)", "1 prompt cached ms",
              *([f"{most} prompts cached ms"] if most else []), "video frame ms",
              "cold start s", "peak RSS MiB", "PQ (Δ)", "mIoU (Δ)", "click mIoU (Δ)", "J&F (Δ)"]
    rows = []
    acc = {r["key"]: r for r in report.get("accuracy", [])}
    cold = {_key(r): r for r in report.get("cold_start", [])}
    for t in report["targets"]:
        if t["status"] != "ok":
            continue
        key = _key(t)
        e2e = find("end_to_end", key, "panoptic")
        thr = [r for r in lat.get("throughput", []) if _key(r) == key]
        best = max(thr, key=lambda r: r["images_per_s"]) if thr else None
        prompt = find("prompt", key, prompts=1)
        many = find("prompt", key, prompts=most) if most else None
        frame = find("video", key)
        a = acc.get(key, {})

        def cell(m: str, a: dict = a) -> str:
            return f"{fmt(a.get(m), 3)} ({signed(a.get(f'delta_{m}'))})" if m in a else "–"

        c = cold.get(key, {})
        rows.append([f"{t['backend']} {t['precision']} @{t['image_size']} ({t['device']})",
                     fmt(e2e["p50_ms"]) if e2e else "–",
                     f"{_rate(best['images_per_s'])} ({best['batch']})" if best else "–",
                     fmt(prompt["p50_ms"]) if prompt else "–",
                     *([fmt(many["p50_ms"]) if many else "–"] if most else []),
                     fmt(frame["p50_ms"]) if frame else "–",
                     fmt(c.get("cold_start_s")), fmt(c.get("peak_rss_mib"), 0),
                     cell("pq"), cell("miou"), cell("interactive_miou_point"), cell("jf")])
    lines += _table(header, rows)
    if lat.get("stages"):
        lines += ["", "Per stage, batch 1 (p50 ms):", ""]
        lines += _stage_table(lat["stages"], lambda r: fmt(r["p50_ms"]))
    skipped = [t for t in report["targets"] if t["status"] != "ok"]
    if skipped:
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for t in skipped:
            grouped.setdefault((t["backend"], t["status"], t["reason"]), []).append(
                t["precision"])
        lines += ["", "Not measured: " + "; ".join(
            f"{backend} {'/'.join(precisions)} ({status}: {reason})"
            for (backend, status, reason), precisions in grouped.items())]
    lines += ["", f"Full report: `{out}/report.md` (report.json, plot.png beside it)."]
    return "\n".join(lines)


def update_results(path: Path, section: str, body: str) -> None:
    """Replace the text between ``<!-- section:start -->`` and ``<!-- section:end -->`` in
    ``path`` (appending the markers at the end when absent); nothing else changes."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text + ("" if not text or text.endswith("\n") else "\n") + \
            ("\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
