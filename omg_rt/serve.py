"""``omg-rt serve``: a bundle behind NVIDIA Triton Inference Server (PyTriton), on loopback by
default. One :class:`~omg_rt.segmenter.Segmenter` (thread-safe) answers every model instance.

Models (Triton names; every input and output has a batch axis of 1 per request):

- ``panoptic``, ``instance``, ``semantic``: ``image`` (BYTES, an encoded image file) or
  ``pixels`` (UINT8 H x W x 3 RGB) -> ``result`` (BYTES: :meth:`SegmentationResult.to_wire`
  JSON, masks as COCO RLE, the id map zlib-packed) and ``error`` (BYTES: JSON ``null``, or the
  message saying why this image failed: the other images of its dynamic batch are answered as
  usual). Dynamic batching:
  the requests of one batch are encoded together (encoder batches per padded size).
- ``encode``: ``image`` or ``pixels`` -> ``image_id`` (BYTES), ``height``/``width`` (INT32):
  runs the encoder once and keeps its output in the encoder cache.
- ``prompt``: ``image_id`` + ``points`` (FP32 N x 2, optional) / ``boxes`` (FP32 M x 4,
  optional) in original-image pixels -> ``result``: masks from the cached encoder output (an id
  evicted from the cache, or never encoded here, is an error saying to encode again).
- ``vocabulary``: ``names`` (BYTES K) + ``num_things`` (INT32, optional) -> ``vocabulary``
  (BYTES JSON). Changes the classes of every later request (a server holds one vocabulary).
- ``video``: ``frame`` (BYTES) or ``pixels``, ``first_mask`` (INT32 H x W, VOS first frame)
  with request parameters ``stream_id`` (str), ``frame_index`` (int, 0, 1, ... in order),
  ``task`` (first frame: vis | vps | vss | vos) and ``end`` (bool: this is the last request;
  its ``frame`` may be empty) -> ``results`` (BYTES: a JSON list of the results of the frames
  whose clip completed, zero or more). A stream's state is freed at its end or after
  ``idle_seconds`` without a frame.

Every model has a bounded queue: past ``max_queue`` waiting requests Triton answers at once
with an "Exceeds maximum queue size" error (busy) instead of growing. Health
(``/v2/health/ready``) and Prometheus metrics (``:metrics_port/metrics``) are Triton's own.

Triton's Python-backend stub links ``libpython3.X.so``: the serving Python must be a shared
build of the same version (Debian's ``/usr/bin/python3.11`` venv, which ``scripts/setup.sh``
makes). :func:`check_interpreter` says so in one line instead of a hanging server.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omg_rt.errors import BackendUnavailableError, InvalidInputError, OmgRtError
from omg_rt.segmenter import Segmenter
from omg_rt.sessions import ImageSession
from omg_rt.spec import IMAGE_TASKS, SERVED_MODELS, VIDEO_TASKS
from omg_rt.triton_steps import decode_image_bytes
from omg_rt.video import VideoSession

MAX_IMAGE_IDS = 1024  # metadata only; the arrays live in the (byte-bounded) encoder cache
MAX_STREAMS = 16


@dataclass(frozen=True)
class ServeOptions:
    """How ``omg-rt serve`` runs.

    Attributes:
        host: listen address (loopback unless asked).
        port: HTTP port; gRPC listens on ``grpc_port`` (default port + 1) and metrics on
            ``metrics_port`` (default port + 2).
        workers: model instances per model (threads sharing one Segmenter).
        max_batch: images per dynamic batch; max_queue: waiting requests per model before
            "busy"; batch_delay_us: how long a batch waits for company.
        idle_seconds: a video stream without frames for this long is freed.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    metrics_port: int | None = None
    workers: int = 2
    max_batch: int = 4
    max_queue: int = 32
    batch_delay_us: int = 2000
    idle_seconds: float = 300.0


def check_interpreter() -> None:
    """BackendUnavailableError unless Triton's Python backend can run from this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise BackendUnavailableError(
            f"omg-rt serve: this Python ({sys.executable}, {sys.version.split()[0]}) is not a "
            f"shared-libpython build, and Triton's Python backend links libpython{version}.so "
            "(it would load another build and fail); make the venv with Debian's "
            "/usr/bin/python3 (bash scripts/setup.sh does)"
        )
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"omg-rt serve: nvidia-pytriton is not installed ({exc}); pip install "
            "'omg-rt[serve]'"
        ) from exc


@dataclass
class _Stream:
    session: VideoSession
    next_index: int = 0
    last_seen: float = field(default_factory=time.monotonic)


class Service:
    """The request handlers (Triton-independent; ``omg-rt serve`` binds them).

    Args:
        segmenter: the runtime; options: limits and timeouts.
    """

    def __init__(self, segmenter: Segmenter, options: ServeOptions) -> None:
        self.seg = segmenter
        self.options = options
        self._lock = threading.Lock()
        self._images: OrderedDict[str, ImageSession] = OrderedDict()
        self._streams: dict[str, _Stream] = {}

    # ---------------------------------------------------------------- images

    def _image(self, inputs: dict[str, np.ndarray], name: str = "image") -> np.ndarray:
        if inputs.get(name) is not None:
            image = decode_image_bytes(bytes(inputs[name].reshape(-1)[0]))
            return image
        if inputs.get("pixels") is not None:
            pixels: np.ndarray = np.asarray(inputs["pixels"])[0]
            return pixels
        raise InvalidInputError(f"expected input {name!r} (encoded image) or 'pixels'")

    def segment(self, task: str, requests: list[dict[str, np.ndarray]]
                ) -> list[dict[str, np.ndarray]]:
        """One dynamic batch of image requests: encoded together, answered one by one (a bad
        request's error goes to it alone, in its ``error`` output)."""
        images: list[np.ndarray | OmgRtError] = []
        for inputs in requests:
            try:
                images.append(self._image(inputs))
            except OmgRtError as exc:
                images.append(exc)
        good = [i for i, im in enumerate(images) if isinstance(im, np.ndarray)]
        sessions: dict[int, ImageSession] = {}
        if good:
            try:
                made = self.seg.set_images([images[i] for i in good])  # type: ignore[misc]
                sessions = dict(zip(good, made, strict=True))
            except OmgRtError:  # one bad image: encode the others alone
                for i in good:
                    try:
                        sessions[i] = self.seg.set_image(images[i])  # type: ignore[arg-type]
                    except OmgRtError as exc:
                        images[i] = exc
        answers = []
        for i, image in enumerate(images):
            wire, error = b"", ""
            if not isinstance(image, np.ndarray):
                error = f"{type(image).__name__}: {image}"
            else:
                try:
                    wire = self.seg.segment(sessions[i], task).to_wire()
                except OmgRtError as exc:
                    error = f"{type(exc).__name__}: {exc}"
            # JSON null or the message: an empty BYTES element does not survive every
            # tritonclient / numpy pairing
            answers.append({"result": _bytes(wire or b"{}"),
                            "error": _bytes(json.dumps(error or None).encode())})
        return answers

    def encode(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.seg.set_image(self._image(inputs))
        image_id = str(session.key[-1])
        with self._lock:
            self._images[image_id] = _metadata(session)
            self._images.move_to_end(image_id)
            while len(self._images) > MAX_IMAGE_IDS:
                self._images.popitem(last=False)
        h, w = session.original_hw
        return {"image_id": _bytes(image_id.encode()), "height": np.array([[h]], np.int32),
                "width": np.array([[w]], np.int32)}

    def prompt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = inputs.get("image_id")
        if raw is None:
            raise InvalidInputError("prompt: expected input 'image_id' (from the encode model)")
        image_id = bytes(raw.reshape(-1)[0]).decode(errors="replace")
        with self._lock:
            meta = self._images.get(image_id)
        encoded = self.seg.cache.get(meta.key) if meta is not None else None
        if meta is None or encoded is None:
            raise InvalidInputError(
                f"image_id: unknown image {image_id!r} (never encoded by this server, or evicted "
                "from its encoder cache): send the image to the 'encode' model again"
            )
        session = ImageSession(key=meta.key, original_hw=meta.original_hw,
                               resized_hw=meta.resized_hw, padded_hw=meta.padded_hw,
                               encoded=encoded)
        points = inputs.get("points")
        boxes = inputs.get("boxes")
        result = self.seg.prompt(
            session,
            points=None if points is None else np.asarray(points)[0],
            boxes=None if boxes is None else np.asarray(boxes)[0],
        )
        return {"result": _bytes(result.to_wire())}

    def vocabulary(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names_in = inputs.get("names")
        if names_in is None:
            raise InvalidInputError("vocabulary: expected input 'names' (BYTES, one per class)")
        names = [bytes(n).decode() for n in np.asarray(names_in).reshape(-1)]
        things = inputs.get("num_things")
        num_things = None if things is None else int(np.asarray(things).reshape(-1)[0])
        vocabulary = self.seg.set_vocabulary(names, num_things=num_things)
        record = {"names": list(vocabulary.names), "num_things": vocabulary.num_things,
                  "ensemble": self.seg.ensemble}
        return {"vocabulary": _bytes(json.dumps(record).encode())}

    # ---------------------------------------------------------------- video

    def video(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]
              ) -> dict[str, np.ndarray]:
        stream_id = parameters.get("stream_id")
        index = parameters.get("frame_index")
        if not isinstance(stream_id, str) or not stream_id:
            raise InvalidInputError("video: expected the request parameter 'stream_id' (str)")
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidInputError("video: expected the request parameter 'frame_index' (int)")
        self._sweep()
        end = bool(parameters.get("end", False))
        given = inputs.get("frame")
        if given is not None and not bytes(given.reshape(-1)[0]):
            given = inputs.pop("frame")  # an empty frame: the end request may carry none
            given = None
        frame = None
        if not end or given is not None or inputs.get("pixels") is not None:
            frame = self._image(inputs, "frame")
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                if index != 0:
                    raise InvalidInputError(
                        f"video: stream {stream_id!r} is not open (a stream starts at "
                        f"frame_index 0, got {index}; it may have ended or idled out)")
                if len(self._streams) >= MAX_STREAMS:
                    raise InvalidInputError(
                        f"video: busy ({MAX_STREAMS} streams open); end one or retry later")
                task = parameters.get("task", "vis")
                if task not in VIDEO_TASKS:
                    raise InvalidInputError(f"video: task must be one of {VIDEO_TASKS}, "
                                            f"got {task!r}")
                first = inputs.get("first_mask")
                session = self.seg.open_video(
                    task, first_mask=None if first is None else np.asarray(first)[0])
                stream = self._streams[stream_id] = _Stream(session)
            elif index != stream.next_index:
                raise InvalidInputError(
                    f"video: stream {stream_id!r} expects frame_index {stream.next_index}, got "
                    f"{index} (frames must come in order)")
            stream.next_index += frame is not None
            stream.last_seen = time.monotonic()
        results = [] if frame is None else stream.session.step(frame)
        if end:
            results += stream.session.finish()
            with self._lock:
                self._streams.pop(stream_id, None)
        return {"results": _bytes(b"[" + b",".join(r.to_wire() for r in results) + b"]")}

    def _sweep(self) -> None:
        """Free the streams idle for longer than ``idle_seconds``."""
        now = time.monotonic()
        with self._lock:
            stale = [k for k, s in self._streams.items()
                     if now - s.last_seen > self.options.idle_seconds]
            for key in stale:
                self._streams.pop(key).session.finish()

    @property
    def open_streams(self) -> int:
        return len(self._streams)


@dataclass(frozen=True)
class _Meta:
    key: tuple[Any, ...]
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]


def _metadata(session: ImageSession) -> Any:
    return _Meta(session.key, session.original_hw, session.resized_hw, session.padded_hw)


def _bytes(data: bytes) -> np.ndarray:
    return np.array([[data]], dtype=object)


# -------------------------------------------------------------------- Triton binding


def serve(segmenter: Segmenter, options: ServeOptions, *, ready: Any = None) -> None:
    """Bind the models and serve until interrupted (SIGINT / SIGTERM).

    Args:
        segmenter: the runtime to serve.
        options: ports, workers, limits.
        ready: called (no arguments) once the server answers.
    """
    check_interpreter()
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.triton import Triton, TritonConfig

    service = Service(segmenter, options)
    policy = QueuePolicy(max_queue_size=options.max_queue)

    def config(batch: int) -> Any:
        return ModelConfig(max_batch_size=batch, batcher=DynamicBatcher(
            max_queue_delay_microseconds=options.batch_delay_us if batch > 1 else 0,
            default_queue_policy=policy))

    image_in = [Tensor(name="image", dtype=bytes, shape=(1,), optional=True),
                Tensor(name="pixels", dtype=np.uint8, shape=(-1, -1, 3), optional=True)]
    result_out = [Tensor(name="result", dtype=bytes, shape=(1,))]
    error_out = [Tensor(name="error", dtype=bytes, shape=(1,))]
    port = options.port
    triton_config = TritonConfig(
        http_address=options.host, http_port=port,
        grpc_address=options.host, grpc_port=options.grpc_port or port + 1,
        metrics_address=options.host, metrics_port=options.metrics_port or port + 2,
        exit_timeout_secs=5, log_verbose=0)
    with Triton(config=triton_config) as triton:
        workers = max(1, options.workers)
        for task in IMAGE_TASKS:
            triton.bind(model_name=task,
                        infer_func=[_batched(service, task)] * workers,
                        inputs=image_in, outputs=result_out + error_out,
                        config=config(options.max_batch),
                        strict=False)
        single = {
            "encode": (service.encode, image_in,
                       [Tensor(name="image_id", dtype=bytes, shape=(1,)),
                        Tensor(name="height", dtype=np.int32, shape=(1,)),
                        Tensor(name="width", dtype=np.int32, shape=(1,))]),
            "prompt": (service.prompt,
                       [Tensor(name="image_id", dtype=bytes, shape=(1,)),
                        Tensor(name="points", dtype=np.float32, shape=(-1, 2), optional=True),
                        Tensor(name="boxes", dtype=np.float32, shape=(-1, 4), optional=True)],
                       result_out),
            "vocabulary": (service.vocabulary,
                           [Tensor(name="names", dtype=bytes, shape=(-1,)),
                            Tensor(name="num_things", dtype=np.int32, shape=(1,),
                                   optional=True)],
                           [Tensor(name="vocabulary", dtype=bytes, shape=(1,))]),
        }
        for name, (handler, inputs, outputs) in single.items():
            triton.bind(model_name=name, infer_func=[_one_by_one(handler)] * workers,
                        inputs=inputs, outputs=outputs, config=config(1), strict=False)
        triton.bind(model_name="video", infer_func=_video(service),  # one instance: in order
                    inputs=[Tensor(name="frame", dtype=bytes, shape=(1,), optional=True),
                            Tensor(name="pixels", dtype=np.uint8, shape=(-1, -1, 3),
                                   optional=True),
                            Tensor(name="first_mask", dtype=np.int32, shape=(-1, -1),
                                   optional=True)],
                    outputs=[Tensor(name="results", dtype=bytes, shape=(1,))],
                    config=config(1), strict=False)
        triton.run()
        assert set(SERVED_MODELS) == {*IMAGE_TASKS, *single, "video"}
        if ready is not None:
            ready()
        triton.serve()


def _inputs(request: Any) -> dict[str, np.ndarray]:
    return {name: request[name] for name in request.keys()}  # noqa: SIM118 - not a dict


def _answer(error: OmgRtError) -> None:
    """Send ``error`` back to the request's client (the server keeps serving)."""
    from pytriton.exceptions import PyTritonValidationError

    raise PyTritonValidationError(f"{type(error).__name__}: {error}") from error


def _batched(service: Service, task: str) -> Any:
    def infer(requests: list[Any]) -> list[Any]:
        return service.segment(task, [_inputs(r) for r in requests])

    return infer


def _one_by_one(handler: Any) -> Any:
    def infer(requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(handler(_inputs(request)))
            except OmgRtError as exc:
                _answer(exc)
        return out

    return infer


def _video(service: Service) -> Any:
    def infer(requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                out.append(service.video(_inputs(request), dict(request.parameters or {})))
            except OmgRtError as exc:
                _answer(exc)
        return out

    return infer
