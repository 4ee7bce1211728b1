"""A bounded, thread-safe request queue in front of a :class:`~omg_rt.segmenter.Segmenter`.

- Requests return ``concurrent.futures.Future`` objects; :meth:`Scheduler.prompt` and
  :meth:`Scheduler.segment` are the synchronous wrappers.
- Interactive prompt requests are served before bulk image requests.
- Prompt requests on the same image are grouped into one prompt-encoder + prompt-decoder call,
  the prompt axis padded to a power of two (few distinct shapes for engines and CUDA graphs);
  prompt queries attend only to themselves, so grouping does not change any mask.
- Bulk requests are taken up to the encoder's max batch at a time, and their encoder misses run
  as one batched encoder call.
- A full queue rejects the request with :class:`~omg_rt.errors.QueueFullError`.

Bad input is rejected at submission (the caller's thread) with the segmenter's typed errors;
errors while serving reach the request's future, and the worker keeps serving.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError, QueueFullError
from omg_rt.results import SegmentationResult
from omg_rt.segmenter import Segmenter
from omg_rt.sessions import ImageSession
from omg_rt.spec import IMAGE_TASKS

DEFAULT_MAX_QUEUE = 64


@dataclass
class _Request:
    image: Any  # ImageSession or the segmenter's prepared image
    future: Future[SegmentationResult]
    task: str
    boxes: np.ndarray | None = None


@dataclass
class SchedulerStats:
    """Counters: requests served, decoder calls made, requests rejected for a full queue."""

    prompt_requests: int = 0
    prompt_calls: int = 0
    image_requests: int = 0
    encoder_batches: int = 0
    rejected: int = 0
    largest_prompt_group: int = 0


class Scheduler:
    """Serve a segmenter from one worker thread.

    Args:
        segmenter: the runtime to serve.
        max_queue: pending requests (interactive + bulk) before submissions are rejected.
        start: start the worker now (False: call :meth:`start`, e.g. after queueing a batch).
    """

    def __init__(
        self, segmenter: Segmenter, *, max_queue: int = DEFAULT_MAX_QUEUE, start: bool = True
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise InvalidInputError(f"max_queue: expected an int >= 1, got {max_queue!r}")
        self.segmenter = segmenter
        self.max_queue = max_queue
        self.stats = SchedulerStats()
        self._interactive: deque[_Request] = deque()
        self._bulk: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="omg-rt-scheduler")
                self._thread.daemon = True
                self._thread.start()

    # ------------------------------------------------------------------ submission

    def submit_prompt(
        self, image: Any, *, points: Any = None, labels: Any = None, boxes: Any = None
    ) -> Future[SegmentationResult]:
        """Queue an interactive prompt request (validated now); the future gives the result."""
        target = self._target(image)
        prompt_boxes = self.segmenter.prompt_boxes(
            target, points=points, labels=labels, boxes=boxes
        )
        return self._put(_Request(target, Future(), "prompt", prompt_boxes), self._interactive)

    def submit_segment(self, image: Any, task: str = "panoptic") -> Future[SegmentationResult]:
        """Queue a bulk ``panoptic`` / ``instance`` / ``semantic`` request."""
        if task not in IMAGE_TASKS:
            raise InvalidInputError(f"task: expected one of {IMAGE_TASKS}, got {task!r}")
        return self._put(_Request(self._target(image), Future(), task), self._bulk)

    def prompt(self, image: Any, **prompts: Any) -> SegmentationResult:
        """Synchronous :meth:`submit_prompt`."""
        return self.submit_prompt(image, **prompts).result()

    def segment(self, image: Any, task: str = "panoptic") -> SegmentationResult:
        """Synchronous :meth:`submit_segment`."""
        return self.submit_segment(image, task).result()

    def close(self, wait: bool = True) -> None:
        """Stop accepting requests; with ``wait`` serve what is queued first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _target(self, image: Any) -> Any:
        if isinstance(image, ImageSession):
            return self.segmenter._session(image)
        return self.segmenter.image_encoder.prepare(image, "image")

    def _put(self, request: _Request, queue: deque[_Request]) -> Future[SegmentationResult]:
        with self._cond:
            if self._closed:
                raise QueueFullError("scheduler: closed, not accepting requests")
            pending = len(self._interactive) + len(self._bulk)
            if pending >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFullError(
                    f"scheduler: queue full ({pending} of max_queue={self.max_queue} pending); "
                    f"retry later or raise max_queue"
                )
            queue.append(request)
            self._cond.notify()
        return request.future

    # ------------------------------------------------------------------ serving

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._interactive and not self._bulk and not self._closed:
                    self._cond.wait()
                if not self._interactive and not self._bulk:
                    return  # closed and drained
                if self._interactive:
                    batch, interactive = list(self._interactive), True
                    self._interactive.clear()
                else:
                    n = self.segmenter.max_encoder_batch
                    batch = [self._bulk.popleft() for _ in range(min(n, len(self._bulk)))]
                    interactive = False
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if interactive:
                self._serve_prompts(live)
            else:
                self._serve_images(live)

    def _sessions(self, requests: list[_Request]) -> list[ImageSession | None]:
        """Sessions for the requests' images, encoder misses batched; failures go to futures."""
        seg = self.segmenter
        todo = [r.image for r in requests if not isinstance(r.image, ImageSession)]
        try:
            made = iter(seg.image_encoder.sessions(todo)) if todo else iter(())
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting caller
            for r in requests:
                r.future.set_exception(exc)
            return [None] * len(requests)
        if todo:
            self.stats.encoder_batches += 1
        return [r.image if isinstance(r.image, ImageSession) else next(made) for r in requests]

    def _serve_prompts(self, requests: list[_Request]) -> None:
        groups: dict[tuple[Any, ...], list[tuple[_Request, ImageSession]]] = {}
        for request, session in zip(requests, self._sessions(requests), strict=True):
            if session is not None:
                groups.setdefault(session.key, []).append((request, session))
        for members in groups.values():
            session = members[0][1]
            boxes = [r.boxes for r, _ in members]
            total = sum(b.shape[0] for b in boxes)  # type: ignore[union-attr]
            pad_to = 1 << (total - 1).bit_length()
            try:
                results = self.segmenter.prompt_groups(session, boxes, pad_to=pad_to)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - delivered to every waiting caller
                for r, _ in members:
                    r.future.set_exception(exc)
                continue
            self.stats.prompt_calls += 1
            self.stats.prompt_requests += len(members)
            self.stats.largest_prompt_group = max(self.stats.largest_prompt_group, len(members))
            for (r, _), result in zip(members, results, strict=True):
                r.future.set_result(result)

    def _serve_images(self, requests: list[_Request]) -> None:
        for request, session in zip(requests, self._sessions(requests), strict=True):
            if session is None:
                continue
            try:
                result = self.segmenter.segment(session, request.task)
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting caller
                request.future.set_exception(exc)
                continue
            self.stats.image_requests += 1
            request.future.set_result(result)
