"""The step-audio engine's cache of decoder conditioning, one entry per voice variant, bounded (LRU).

Pure Python (no vLLM, no torch), so it is tested in the services' environment.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A thread-safe map of at most ``capacity`` entries; the least recently used one leaves first.

    ``get_or_compute`` computes a missing value outside the lock (conditioning takes a while and
    must not hold up hits on other voices); two threads missing the same key at once both compute
    it, and the first value stored is the one both get.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, not {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = compute()
        with self._lock:
            if key in self._entries:  # another thread computed it meanwhile
                self._entries.move_to_end(key)
                return self._entries[key]
            self._entries[key] = value
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
            return value

    def discard(self, matches: Callable[[K], bool]) -> None:
        """Drop every entry whose key ``matches`` (e.g. all variants of a deleted voice)."""
        with self._lock:
            for key in [key for key in self._entries if matches(key)]:
                del self._entries[key]
