"""A thin client of ``omg-rt serve`` (``tritonclient`` over HTTP) with the ``Segmenter`` calls,
returning the same :class:`~omg_rt.results.SegmentationResult` objects:

    client = Client("http://127.0.0.1:8000")
    result = client.panoptic("photo.jpg")                 # a path (sent as its file bytes) or RGB
    image = client.encode(rgb)                            # the encoder runs once on the server
    masks = client.prompt(image, points=[[120, 80]])      # ... and every prompt reuses it
    video = client.open_video("vis"); video.step(frame) ...; video.finish()

Server-side errors come back typed: bad input -> InvalidInputError, a full queue ->
QueueFullError, no server -> BackendUnavailableError.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from omg_rt.errors import (
    BackendUnavailableError,
    BundleError,
    InvalidInputError,
    OmgRtError,
    QueueFullError,
)
from omg_rt.inputs import read_image
from omg_rt.results import SegmentationResult
from omg_rt.spec import IMAGE_TASKS, SERVED_MODELS, VIDEO_TASKS

Image = np.ndarray | str | os.PathLike[str]


@dataclass(frozen=True)
class RemoteImage:
    """An image encoded on the server: prompts against it reuse the server's encoder cache.

    Attributes:
        image_id: the server's id (the resized image's content hash).
        original_hw: (H, W) of the image.
    """

    image_id: str
    original_hw: tuple[int, int]


class Client:
    """``omg-rt serve`` at ``url`` (``http://host:port``).

    Args:
        url: the server's HTTP endpoint.
        timeout: seconds per request (network and inference).
    """

    def __init__(self, url: str, *, timeout: float = 300.0) -> None:
        try:
            import tritonclient.http as http
        except ImportError as exc:
            raise BackendUnavailableError(
                f"client: tritonclient is not installed ({exc}); pip install 'omg-rt[serve]'"
            ) from exc
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise InvalidInputError(f"server: expected http://host:port, got {url!r}")
        self.url = f"{parsed.hostname}:{parsed.port or 80}"
        self._http = http
        self._client = http.InferenceServerClient(
            self.url, connection_timeout=timeout, network_timeout=timeout
        )

    @property
    def backend_name(self) -> str:
        return f"omg-rt serve at http://{self.url}"

    def ready(self) -> bool:
        """Whether the server is up and every model of ``omg-rt serve`` is loaded."""
        try:
            return bool(self._client.is_server_ready()) and all(
                self._client.is_model_ready(name) for name in SERVED_MODELS)
        except Exception:  # noqa: BLE001 - any failure to connect means not ready
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- requests

    def _tensor(self, name: str, value: np.ndarray) -> Any:
        dtype = "BYTES" if value.dtype == object else self._http.np_to_triton_dtype(value.dtype)
        tensor = self._http.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        return tensor

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
               parameters: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        tensors = [self._tensor(name, value[None]) for name, value in inputs.items()]
        try:
            response = self._client.infer(model, tensors, parameters=parameters)
        except InferenceServerException as exc:
            raise _error(exc) from exc
        except OSError as exc:  # connection refused / reset
            raise BackendUnavailableError(f"server {self.url}: {exc}") from exc
        return {name: response.as_numpy(name)[0] for name in outputs}

    def _image_inputs(self, image: Image, name: str = "image") -> dict[str, np.ndarray]:
        if isinstance(image, str | os.PathLike):
            path = Path(image)
            if not path.is_file():
                raise InvalidInputError(f"{name}: no such file {str(image)!r}")
            return {name: np.array([path.read_bytes()], dtype=object)}
        return {"pixels": read_image(image, name)}

    # ---------------------------------------------------------------- the Segmenter calls

    def segment(self, image: Image, task: str) -> SegmentationResult:
        """``panoptic``, ``instance`` or ``semantic`` by name."""
        if task not in IMAGE_TASKS:
            raise InvalidInputError(f"task: expected one of {IMAGE_TASKS}, got {task!r}")
        out = self._infer(task, self._image_inputs(image), ("result", "error"))
        error = json.loads(bytes(out["error"][0]))
        if error:
            raise _typed(str(error))
        return SegmentationResult.from_wire(bytes(out["result"][0]))

    def panoptic(self, image: Image) -> SegmentationResult:
        return self.segment(image, "panoptic")

    def instances(self, image: Image) -> SegmentationResult:
        return self.segment(image, "instance")

    def semantic(self, image: Image) -> SegmentationResult:
        return self.segment(image, "semantic")

    def encode(self, image: Image) -> RemoteImage:
        """Run the encoder on the server once; prompts against the returned handle reuse it."""
        out = self._infer("encode", self._image_inputs(image), ("image_id", "height", "width"))
        return RemoteImage(bytes(out["image_id"][0]).decode(),
                           (int(out["height"][0]), int(out["width"][0])))

    def prompt(self, image: Image | RemoteImage, points: Any = None, labels: Any = None,
               boxes: Any = None) -> SegmentationResult:
        """Masks for clicks (x, y) and boxes (x0, y0, x1, y1) in original-image pixels."""
        handle = image if isinstance(image, RemoteImage) else self.encode(image)
        if labels is not None and np.any(np.asarray(labels) != 1):
            raise InvalidInputError("labels: OMG-Seg's clicks are foreground prompts; only 1 "
                                    f"is accepted, got {np.asarray(labels).tolist()}")
        inputs = {"image_id": np.array([handle.image_id.encode()], dtype=object)}
        for name, value, width in (("points", points, 2), ("boxes", boxes, 4)):
            if value is not None:
                array = np.asarray(value, np.float32)
                if array.ndim != 2 or array.shape[1] != width:
                    raise InvalidInputError(f"{name}: expected (N, {width}), got {array.shape}")
                inputs[name] = array
        out = self._infer("prompt", inputs, ("result",))
        return SegmentationResult.from_wire(bytes(out["result"][0]))

    def set_vocabulary(self, names: Sequence[str], *, num_things: int | None = None
                       ) -> dict[str, Any]:
        """Replace the server's vocabulary (for every later request); returns its record."""
        inputs = {"names": np.array([n.encode() for n in names], dtype=object)}
        if num_things is not None:
            inputs["num_things"] = np.array([num_things], np.int32)
        out = self._infer("vocabulary", inputs, ("vocabulary",))
        record: dict[str, Any] = json.loads(bytes(out["vocabulary"][0]))
        return record

    def open_video(self, task: str = "vis", *, first_mask: np.ndarray | None = None,
                   clip_size: int | None = None) -> RemoteVideo:
        """A video stream on the server (its own stream id; frames in order)."""
        if task not in VIDEO_TASKS:
            raise InvalidInputError(f"task: expected one of {VIDEO_TASKS}, got {task!r}")
        if clip_size is not None:
            raise InvalidInputError("clip_size: a server decodes clips of its bundle's size")
        return RemoteVideo(self, task, first_mask)


class RemoteVideo:
    """A video stream on the server: :meth:`step` each frame, then :meth:`finish`."""

    _ids = itertools.count()

    def __init__(self, client: Client, task: str, first_mask: np.ndarray | None) -> None:
        self.client = client
        self.task = task
        self.stream_id = f"{uuid.uuid4().hex}-{next(self._ids)}"
        self.first_mask = first_mask
        self.frames_sent = 0
        self.closed = False

    def _send(self, frame: np.ndarray | None, end: bool) -> list[SegmentationResult]:
        if self.closed:
            raise InvalidInputError("session: this video stream is finished; open a new one")
        inputs: dict[str, np.ndarray] = {}
        if frame is not None:
            inputs["pixels"] = read_image(frame, f"frame {self.frames_sent}")
        else:  # Triton takes no request without inputs: a 0-byte frame ends the stream
            inputs["frame"] = np.array([b""], dtype=object)
        if self.frames_sent == 0 and self.first_mask is not None:
            inputs["first_mask"] = np.asarray(self.first_mask, np.int32)
        parameters = {"stream_id": self.stream_id, "frame_index": self.frames_sent,
                      "task": self.task, "end": end}
        out = self.client._infer("video", inputs, ("results",), parameters)
        if frame is not None:
            self.frames_sent += 1
        self.closed = end
        records = json.loads(bytes(out["results"][0]))
        return [SegmentationResult.from_record(r) for r in records]

    def step(self, frame: np.ndarray) -> list[SegmentationResult]:
        """Send one frame; returns the frames whose clip completed (possibly none)."""
        return self._send(frame, end=False)

    def finish(self) -> list[SegmentationResult]:
        """End the stream: the last clip's frames; the server frees the stream."""
        return self._send(None, end=True)

    def run(self, frames: Iterable[np.ndarray]) -> list[SegmentationResult]:
        results = [r for frame in frames for r in self.step(frame)]
        return results + self.finish()


def _typed(message: str) -> OmgRtError:
    """A server error message as the error type the runtime itself would raise."""
    if "Exceeds maximum queue size" in message or "busy" in message:
        return QueueFullError(f"server busy: {message}")
    for kind in (InvalidInputError, BundleError, BackendUnavailableError, OmgRtError):
        marker = f"{kind.__name__}: "
        if marker in message:  # the handler's own message, without the server's traceback
            return kind(message.split(marker, 1)[1].split("\n", 1)[0].strip())
    if "[400]" in message:
        return InvalidInputError(message)
    return OmgRtError(message)


def _error(exc: Exception) -> OmgRtError:
    return _typed(str(exc))
