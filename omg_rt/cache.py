"""The encoder cache: pixel-decoder outputs (and CLIP dense features) of preprocessed images.

Keyed by the content hash of the preprocessed image plus the bundle's identity and precision, so
prompts, re-queries with another task or vocabulary, and repeated frames skip the encoder and
pixel decoder. An LRU bounded in bytes, with hit / miss / eviction / byte counters; thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from omg_rt.arrays import Array
from omg_rt.errors import InvalidInputError

DEFAULT_CACHE_BYTES = 512 << 20


@dataclass(frozen=True)
class EncodedImage:
    """What the decoders need of one frame (batch axis 1).

    Attributes:
        mask_features: (1, C, Hp/4, Wp/4) float32.
        memory_s32, memory_s16, memory_s8: (1, C, Hp/s, Wp/s) float32.
        clip_features: (1, C5, Hp/32, Wp/32) float32, the stride-32 backbone map (dense CLIP
            features for the open-vocabulary ensemble).

    Numpy arrays, or tensors on the device of the backend that computed them (the PyTorch
    backend's: :mod:`omg_rt.arrays`); ``nbytes`` counts either, so a cache of a GPU backend is
    bounded in device memory.
    """

    mask_features: Array
    memory_s32: Array
    memory_s16: Array
    memory_s8: Array
    clip_features: Array

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.mask_features,
                self.memory_s32,
                self.memory_s16,
                self.memory_s8,
                self.clip_features,
            )
        )


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int
    max_bytes: int


class EncoderCache:
    """LRU of :class:`EncodedImage` bounded in bytes.

    Args:
        max_bytes: the bound (>= 0; 0 disables caching). An entry larger than the bound is not
            stored.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise InvalidInputError(f"cache_bytes: expected an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[Any, ...], EncodedImage] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, key: tuple[Any, ...]) -> EncodedImage | None:
        """The entry (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def peek(self, key: tuple[Any, ...]) -> EncodedImage | None:
        """The entry without counting or reordering."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[Any, ...], value: EncodedImage) -> None:
        """Insert (or refresh) an entry, evicting least recently used ones past the bound."""
        size = value.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                bytes=self._bytes,
                entries=len(self._entries),
                max_bytes=self.max_bytes,
            )
