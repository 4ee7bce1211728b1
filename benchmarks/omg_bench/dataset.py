"""The data every ``omg-bench`` target is scored on (loaded by :mod:`.accuracy`, or by
:mod:`.photos` for the photos set)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Dataset:
    """What every target is scored on.

    Attributes:
        ground_truth_from_reference: the records carry no annotations yet (``photos``);
            ``photos.reference_ground_truth`` fills them from the reference target's outputs.
    """

    source: str
    categories: Any  # training.data.formats.Categories
    images: list[Any]  # ImageRecord
    videos: list[Any]  # VideoRecord
    note: str = ""
    ground_truth_from_reference: bool = False

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": len(self.images), "videos": len(self.videos),
                "frames_per_video": int(self.videos[0].frames.shape[0]) if self.videos else 0,
                "classes": list(self.categories.names),
                "num_things": int(self.categories.num_things), "note": self.note}
