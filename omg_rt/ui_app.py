"""The Gradio layout of ``omg-rt ui`` over :class:`omg_rt.ui.Page` (the page's logic): tabs,
the canvas's drag-a-box script, and serving on loopback.

    launch(build_app(segmenter), port=7860)      # the Gradio page on loopback

Gradio is imported only by :func:`build_app` / :func:`launch` (``pip install omg-rt[ui]``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from omg_rt.errors import BackendUnavailableError
from omg_rt.results import DEFAULT_MIN_SCORE
from omg_rt.spec import IMAGE_TASKS
from omg_rt.ui import (
    CLICK_MODES,
    MAX_VIDEO_FRAMES,
    VIDEO_TASKS_SHOWN,
    Page,
    PageState,
    View,
    render,
)

if TYPE_CHECKING:
    import gradio

    from omg_rt.segmenter import Segmenter


# Dragging on the canvas draws a box: the corners go to a hidden textbox whose change event
# sends them (Gradio's own select event only reports clicks). Coordinates follow Gradio's
# ImagePreview (image centred, scaled down to fit, never up). A drag's trailing click is dropped.
_HEAD = """<script>
(() => {
  let start = null, frame = null, dragged = 0, drags = 0;
  const img = () => document.querySelector('#omg-canvas img');
  const natural = (im, e) => {
    const r = im.getBoundingClientRect();
    const s = Math.min(r.width / im.naturalWidth, r.height / im.naturalHeight, 1);
    return [(e.clientX - r.left - (r.width - im.naturalWidth * s) / 2) / s,
            (e.clientY - r.top - (r.height - im.naturalHeight * s) / 2) / s];
  };
  document.addEventListener('dragstart', e => {
    if (e.target.closest && e.target.closest('#omg-canvas')) e.preventDefault();
  }, true);
  document.addEventListener('pointerdown', e => {
    const im = img();
    if (e.button !== 0 || !im || !(e.target.closest && e.target.closest('#omg-canvas'))) return;
    start = {x: e.clientX, y: e.clientY, p: natural(im, e)};
  }, true);
  document.addEventListener('pointermove', e => {
    if (!start) return;
    if (!frame) {
      frame = document.createElement('div');
      frame.style.cssText = 'position:fixed;border:2px dashed #ffd700;pointer-events:none;'
        + 'z-index:1000';
      document.body.appendChild(frame);
    }
    Object.assign(frame.style, {left: Math.min(start.x, e.clientX) + 'px',
      top: Math.min(start.y, e.clientY) + 'px', width: Math.abs(e.clientX - start.x) + 'px',
      height: Math.abs(e.clientY - start.y) + 'px'});
  }, true);
  document.addEventListener('pointerup', e => {
    if (!start) return;
    const s = start, im = img();
    start = null;
    if (frame) { frame.remove(); frame = null; }
    if (!im || Math.hypot(e.clientX - s.x, e.clientY - s.y) < 6) return;  // a click
    dragged = performance.now();
    const box = document.querySelector('#omg-drag textarea, #omg-drag input');
    // the drag's number makes every drag a change, even one repeating the last box
    box.value = [...s.p, ...natural(im, e)].map(v => v.toFixed(1)).join(',') + ';' + (++drags);
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
  document.addEventListener('click', e => {
    if (performance.now() - dragged < 400 && e.target.closest && e.target.closest('#omg-canvas')) {
      e.stopPropagation(); e.preventDefault();
    }
  }, true);
})();
</script>"""
_CSS = ".omg-hidden {display: none !important} #omg-canvas img {cursor: crosshair}"
_ABOUT = (
    "Each positive click or box is its own prompt and gets its own mask (OMG-Seg's clicks are "
    "independent foreground prompts). OMG-Seg has no background clicks: a **negative** click "
    "removes the mask the model gives for a click at that spot from the result.")


def build_app(segmenter: Segmenter, *, title: str = "omg-rt",
              page: Page | None = None) -> gradio.Blocks:
    """The Gradio page over ``segmenter`` (serve it with :func:`launch`).

    Args:
        segmenter: the runtime every tab shares.
        title: shown at the top (the bundle's name).
        page: the logic to lay out (default ``Page(segmenter)``).
    """
    gr = require_gradio()
    page = page or Page(segmenter)
    vocabulary, num_things = page.vocabulary_text()
    style: dict[str, Any] = {} if _style_goes_to_launch() else {"css": _CSS, "head": _HEAD}
    progress_bar = gr.Progress()  # Gradio fills a Progress default in with the event's bar
    with gr.Blocks(title=f"omg-rt: {title}", analytics_enabled=False, **style) as app:
        state = gr.State(PageState())
        gr.Markdown(f"## OMG-Seg on `{title}` ({segmenter.backend_name})")
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1):
                    example = gr.Dropdown(list(page.examples), label="Example image",
                                          value=None, elem_id="omg-example")
                    upload = gr.File(label="…or upload an image", elem_id="omg-upload")
                    mode = gr.Radio(list(CLICK_MODES), value="positive click",
                                    label="Click mode", elem_id="omg-mode")
                    clear = gr.Button("Clear prompts", elem_id="omg-clear")
                    gr.Markdown(_ABOUT)
                with gr.Column(scale=2):
                    canvas = gr.Image(label="Click or drag a box", interactive=False,
                                      format="png", elem_id="omg-canvas")
                    status = gr.Markdown(elem_id="omg-status")
                    drag = gr.Textbox(elem_id="omg-drag", elem_classes=["omg-hidden"])
            with gr.Row():
                with gr.Column(scale=1):
                    task = gr.Radio(list(IMAGE_TASKS), value="panoptic", label="Task",
                                    elem_id="omg-task")
                    vocab = gr.Textbox(vocabulary, label="Vocabulary: class names, one per line "
                                       "or separated by ';'", lines=2, elem_id="omg-vocab")
                    things = gr.Number(num_things, label="the first N names are things "
                                       "(empty: all)", precision=0, elem_id="omg-things")
                    min_score = gr.Slider(0.0, 1.0, DEFAULT_MIN_SCORE, step=0.05,
                                          label="instance: minimum score")
                    run = gr.Button("Segment with this vocabulary", elem_id="omg-segment")
                with gr.Column(scale=2):
                    result = gr.Image(label="Task result", interactive=False, format="png",
                                      elem_id="omg-result")
                    table = gr.Markdown(elem_id="omg-legend")
        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column(scale=1):
                    clip = gr.Dropdown(list(page.videos), label="Example clip", value=None,
                                       elem_id="omg-clip")
                    clip_upload = gr.File(label="…or upload a short clip",
                                          elem_id="omg-clip-upload")
                    video_task = gr.Radio(list(VIDEO_TASKS_SHOWN), value="vis", label="Task")
                    frames = gr.Slider(1, MAX_VIDEO_FRAMES, 48, step=1, label="frames at most")
                    track = gr.Button("Track", elem_id="omg-track")
                with gr.Column(scale=2):
                    video_out = gr.Video(label="Tracked overlay", elem_id="omg-video")
                    video_status = gr.Markdown(elem_id="omg-video-status")

        def shown(s: PageState, view: View) -> tuple[PageState, np.ndarray | None, str]:
            return s, view.canvas, view.status

        def on_example(s: PageState, name: str | None) -> tuple[Any, ...]:
            return shown(s, page.open_example(s, name) if name else View(render(s), ""))

        def on_upload(s: PageState, path: str | None) -> tuple[Any, ...]:
            if not path:
                return shown(s, View(render(s), ""))
            return shown(s, page.open_image(s, path, Path(path).name))

        def on_select(s: PageState, mode_name: str, evt: gradio.SelectData) -> tuple[Any, ...]:
            x, y = evt.index
            return shown(s, page.click(s, x, y, CLICK_MODES[mode_name]))

        # Gradio passes the click's SelectData to a parameter annotated with that class; this
        # module's annotations are strings (``from __future__ import annotations``) naming a
        # module it imports lazily, so the class itself is set here.
        on_select.__annotations__["evt"] = gr.SelectData

        def on_drag(s: PageState, text: str) -> tuple[Any, ...]:
            try:
                x0, y0, x1, y1 = (float(v) for v in text.split(";")[0].split(","))
            except ValueError:
                return shown(s, View(render(s), ""))
            return shown(s, page.box(s, (x0, y0, x1, y1)))

        def on_task(s: PageState, name: str, score: float) -> tuple[Any, ...]:
            return page.segment(s, name, score)

        def on_vocabulary(s: PageState, text: str, count: float | None, name: str,
                          score: float) -> tuple[Any, ...]:
            message = page.set_vocabulary(s, text, count)
            image, rows = page.segment(s, name, score)
            return s, image, f"{message}\n\n{rows}"

        def on_track(s: PageState, name: str | None, path: str | None, task_name: str,
                     count: float, progress: Any = progress_bar) -> tuple[Any, ...]:
            source = path or name
            if not source:
                return None, "pick an example clip or upload one"

            def report(done: int, total: int) -> None:
                progress((done, total), desc="frames", unit="frames")

            out, message = page.video(s, source, task_name, int(count), report)
            return (str(out) if out else None), message

        image_out = [state, canvas, status]
        task_in, task_out = [state, task, min_score], [result, table]
        example.change(on_example, [state, example], image_out).then(on_task, task_in, task_out)
        upload.change(on_upload, [state, upload], image_out).then(on_task, task_in, task_out)
        canvas.select(on_select, [state, mode], image_out)
        drag.change(on_drag, [state, drag], image_out)
        clear.click(lambda s: shown(s, page.clear(s)), [state], image_out)
        task.change(on_task, task_in, task_out)
        min_score.release(on_task, task_in, task_out)
        vocab_in = [state, vocab, things, task, min_score]
        run.click(on_vocabulary, vocab_in, [state, result, table])
        vocab.submit(on_vocabulary, vocab_in, [state, result, table])
        track.click(on_track, [state, clip, clip_upload, video_task, frames],
                    [video_out, video_status])
    return cast("gradio.Blocks", app)


def launch(app: gradio.Blocks, *, host: str = "127.0.0.1", port: int = 7860,
           block: bool = True, quiet: bool = False) -> str:
    """Serve a page from :func:`build_app`.

    Args:
        host: listen address (loopback by default); port: its port.
        block: serve until Ctrl-C; False: serve from a thread and return (``app.close()``
            stops it).

    Returns:
        the page's URL.
    """
    require_gradio()
    style: dict[str, Any] = {"css": _CSS, "head": _HEAD} if _style_goes_to_launch() else {}
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                           share=False, quiet=quiet, show_error=True, **style)
    return str(url)


def require_gradio() -> Any:
    """The gradio module, or BackendUnavailableError saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page calls no one
    try:
        import gradio
    except ImportError as exc:
        raise BackendUnavailableError(
            "ui: Gradio is not installed (pip install 'omg-rt[ui]')") from exc
    return gradio


def _style_goes_to_launch() -> bool:
    """Gradio 6 takes css / head in ``launch()``; 4 and 5 in ``Blocks()``."""
    import gradio

    return "head" in inspect.signature(gradio.Blocks.launch).parameters
