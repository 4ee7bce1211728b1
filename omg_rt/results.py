"""What the runtime returns: one result type for every task, with numpy masks, scores, labels
and IDs, and conversions to COCO RLE, a COCO panoptic PNG + segments JSON, and overlay images."""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from omg_rt.errors import InvalidInputError

# Instance / VIS masks scoring at least this are the confident ones (``keep``; the CLI's
# ``--min-score`` default; Detectron2's demo uses the same).
DEFAULT_MIN_SCORE = 0.5


@dataclass(frozen=True)
class SegmentationResult:
    """Masks of one image or one video frame.

    Attributes:
        task: one of ``TASKS``.
        masks: (N, H, W) bool at the original image size.
        scores: (N,) float32: class probability x mask score; sigmoid(IoU logit) for prompts
            and VOS; for semantic results, the class's mean mask-weighted class probability
            over its pixels.
        labels: (N,) int64 class indices into ``names`` (-1 where a mask has no class, VOS).
        ids: (N,) int64 identities: panoptic segment ids, persistent track / object ids in video,
            1-based prompt order for prompts.
        class_names: the vocabulary the labels index.
        boxes: (N, 4) float32 tight ``(x0, y0, x1, y1)`` boxes, x1/y1 exclusive.
        id_map: (H, W) int32 for panoptic (segment id, -1 void), semantic (class, -1 none) and
            VOS (object id, 0 background); None otherwise.
        is_thing: (N,) bool.
        frame_index: the frame of a video session, None for images.
    """

    task: str
    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: tuple[str, ...] = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    id_map: np.ndarray | None = None
    is_thing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    frame_index: int | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of each mask ('' where it has none)."""
        return [self.class_names[i] if 0 <= i < len(self.class_names) else "" for i in self.labels]

    def keep(self, min_score: float = DEFAULT_MIN_SCORE) -> SegmentationResult:
        """The masks scoring at least ``min_score`` (same order), as a new result.

        Instance and VIS results hold the official top-100 (query, class) pairs, scored for
        COCO / YouTube-VIS AP, most of them near zero; what a viewer or a tracker wants is the
        confident ones (Detectron2's demo default is 0.5). Results with an ``id_map``
        (panoptic, semantic, VOS) are already one label per pixel and cannot be filtered.
        """
        if self.id_map is not None:
            raise InvalidInputError(
                f"keep: a {self.task} result is a per-pixel map; filter instance, vis or prompt "
                f"results"
            )
        if not 0.0 <= min_score <= 1.0:
            raise InvalidInputError(f"min_score: expected a float in [0, 1], got {min_score!r}")
        return self.subset(self.scores >= np.float32(min_score))

    def subset(self, kept: np.ndarray) -> SegmentationResult:
        """The masks where ``kept`` ((N,) bool) is true, same order, as a new result (for
        results without an id map)."""
        kept = np.asarray(kept, bool)
        if self.id_map is not None or kept.shape != (len(self),):
            raise InvalidInputError(
                f"subset: expected ({len(self)},) bool for a result without an id map, got "
                f"{kept.shape} for a {self.task} result")
        return dataclasses.replace(
            self,
            masks=self.masks[kept],
            scores=self.scores[kept],
            labels=self.labels[kept],
            ids=self.ids[kept],
            boxes=self.boxes[kept] if len(self.boxes) == len(kept) else self.boxes,
            is_thing=self.is_thing[kept] if len(self.is_thing) == len(kept) else self.is_thing,
        )

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO run-length encodings (pycocotools), ``counts`` as str, one per mask."""
        from pycocotools import mask as mask_utils

        if len(self) == 0:
            return []
        encoded = mask_utils.encode(
            np.asfortranarray(self.masks.transpose(1, 2, 0).astype(np.uint8))
        )
        for rle in encoded:
            rle["counts"] = rle["counts"].decode("ascii")
        return list(encoded)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable record: per mask its id, label, name, score, box and RLE."""
        rles = self.to_rle()
        return {
            "task": self.task,
            "frame_index": self.frame_index,
            "height": int(self.masks.shape[1]),
            "width": int(self.masks.shape[2]),
            "objects": [
                {
                    "id": int(self.ids[i]),
                    "label": int(self.labels[i]),
                    "name": self.names[i],
                    "score": float(self.scores[i]),
                    "isthing": bool(self.is_thing[i]) if self.is_thing.size else True,
                    "box": [float(v) for v in self.boxes[i]] if self.boxes.size else None,
                    "segmentation": rles[i],
                }
                for i in range(len(self))
            ],
        }

    def to_wire(self) -> bytes:
        """The whole result as UTF-8 JSON (:meth:`to_json` plus the vocabulary and the id map,
        zlib-compressed int32): what ``omg-rt serve`` sends; :meth:`from_wire` reads it back
        equal (masks, ids, labels and float32 scores exactly)."""
        record = self.to_json()
        record["class_names"] = list(self.class_names)
        record["has_is_thing"] = bool(self.is_thing.size)
        if self.id_map is not None:
            packed = zlib.compress(np.ascontiguousarray(self.id_map, np.int32).tobytes(), 1)
            record["id_map"] = base64.b64encode(packed).decode("ascii")
        return json.dumps(record).encode()

    @classmethod
    def from_wire(cls, data: bytes) -> SegmentationResult:
        """A result from :meth:`to_wire`'s bytes (InvalidInputError if they are not one)."""
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise InvalidInputError(f"result: not JSON ({exc})") from exc
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Any) -> SegmentationResult:
        """A result from :meth:`to_wire`'s JSON, parsed (InvalidInputError if it is not one)."""
        from pycocotools import mask as mask_utils

        try:
            h, w = int(record["height"]), int(record["width"])
            objects = record["objects"]
            if objects:
                rles = [dict(o["segmentation"], counts=o["segmentation"]["counts"].encode())
                        for o in objects]
                masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
            else:
                masks = np.zeros((0, h, w), bool)
            id_map = None
            if record.get("id_map") is not None:
                raw = zlib.decompress(base64.b64decode(record["id_map"]))
                id_map = np.frombuffer(raw, np.int32).reshape(h, w).copy()
            boxes = [o["box"] for o in objects if o["box"] is not None]
            return cls(
                task=str(record["task"]),
                masks=masks,
                scores=np.array([o["score"] for o in objects], np.float32),
                labels=np.array([o["label"] for o in objects], np.int64),
                ids=np.array([o["id"] for o in objects], np.int64),
                class_names=tuple(record.get("class_names", ())),
                boxes=np.array(boxes, np.float32).reshape(-1, 4),
                id_map=id_map,
                is_thing=np.array([o["isthing"] for o in objects], bool)
                if record.get("has_is_thing", True) else np.zeros(0, bool),
                frame_index=record.get("frame_index"),
            )
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise InvalidInputError(f"result: not an omg-rt result record ({exc})") from exc

    def to_panoptic_png(self) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """COCO panoptic format: an RGB PNG array (``id = R + 256 G + 256^2 B``, 0 = void) and
        its ``segments_info``. Segment ids are 1..N in mask order; overlaps go to the later mask.

        Returns:
            (png (H, W, 3) uint8 RGB, segments_info list of dicts).
        """
        h, w = self.masks.shape[1:]
        segment_map = np.zeros((h, w), dtype=np.int64)
        info = []
        for i in range(len(self)):
            segment_map[self.masks[i]] = i + 1
        for i in range(len(self)):
            area = int((segment_map == i + 1).sum())
            if area == 0:
                continue
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i]) if self.boxes.size else (0, 0, 0, 0)
            info.append(
                {
                    "id": i + 1,
                    "category_id": int(self.labels[i]),
                    "iscrowd": 0,
                    "isthing": int(bool(self.is_thing[i])) if self.is_thing.size else 1,
                    "area": area,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(self.scores[i]),
                    "name": self.names[i],
                }
            )
        png = np.stack(
            [segment_map % 256, segment_map // 256 % 256, segment_map // 65536 % 256], axis=-1
        ).astype(np.uint8)
        return png, info

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The image with each mask tinted by its id's colour and outlined.

        Args:
            image: (H, W, 3) uint8 RGB of the result's size.
            alpha: mask opacity in [0, 1].

        Returns:
            (H, W, 3) uint8 RGB.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.shape != (*self.masks.shape[1:], 3)
        ):
            got = (
                f"{image.dtype} {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
            raise InvalidInputError(
                f"image: expected uint8 ({self.masks.shape[1]}, {self.masks.shape[2]}, 3), "
                f"got {got}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise InvalidInputError(f"alpha: expected a float in [0, 1], got {alpha!r}")
        out = image.astype(np.float32)
        for i in range(len(self)):
            colour = np.asarray(id_colour(int(self.ids[i])), np.float32)
            mask = self.masks[i]
            out[mask] = out[mask] * (1 - alpha) + colour * alpha
        out = out.clip(0, 255).astype(np.uint8)
        for i in range(len(self)):
            contours, _ = cv2.findContours(
                self.masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(out, contours, -1, id_colour(int(self.ids[i])), 1)
        return out


def id_colour(identity: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for an id (golden-ratio hue steps)."""
    hue = int((identity * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def empty_result(task: str, hw: tuple[int, int], **kwargs: Any) -> SegmentationResult:
    h, w = hw
    return SegmentationResult(
        task=task,
        masks=np.zeros((0, h, w), bool),
        scores=np.zeros(0, np.float32),
        labels=np.zeros(0, np.int64),
        ids=np.zeros(0, np.int64),
        **kwargs,
    )
