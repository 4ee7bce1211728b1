"""Datasets with different class lists trained as one: the merged vocabulary and relabelled
readers (OMG-Seg's joint training merges COCO, YouTube-VIS, VIPSeg, ... into one list of
names, things first, a class shared by name across datasets taking one index).

Torch-free, like the readers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from training.data.formats import Categories


def merge_categories(lists: Sequence[Categories]) -> tuple[Categories, list[np.ndarray]]:
    """One vocabulary for several datasets, and each dataset's labels in it.

    Names are matched exactly. The merged list holds every thing name (in the order the
    datasets name them), then every stuff name that is not already a thing: a name that is a
    thing in one dataset and stuff in another is a thing (its stuff masks train the same class).

    Returns:
        (merged, maps): ``maps[d][k]`` is the merged index of dataset ``d``'s class ``k``.
        The merged ``category_ids`` are 1..K.
    """
    things: dict[str, None] = {}
    stuff: dict[str, None] = {}
    for cats in lists:
        things.update(dict.fromkeys(cats.thing_names))
    for cats in lists:
        stuff.update(dict.fromkeys(n for n in cats.stuff_names if n not in things))
    names = (*things, *stuff)
    index = {name: k for k, name in enumerate(names)}
    merged = Categories(names, tuple(range(1, len(names) + 1)), len(things))
    return merged, [np.asarray([index[n] for n in cats.names], np.int64) for cats in lists]


class Relabelled:
    """A reader whose records carry labels of a merged vocabulary (``labels = mapping[labels]``).

    Keeps the reader's interface: ``len``, ``reader[i]``, and ``num_frames`` / ``clip`` of video
    readers.
    """

    def __init__(self, reader: Any, categories: Categories, mapping: np.ndarray) -> None:
        self.reader, self.categories, self.mapping = reader, categories, mapping

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Any:
        return self._relabel(self.reader[index])

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def num_frames(self, index: int) -> int:
        return int(self.reader.num_frames(index))

    def clip(self, index: int, frame_indices: list[int] | None) -> Any:
        return self._relabel(self.reader.clip(index, frame_indices))

    def _relabel(self, record: Any) -> Any:
        return replace(record, labels=self.mapping[record.labels])
