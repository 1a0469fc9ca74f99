"""The step-audio engine's decoder-conditioning cache: bounded, least recently used out first, thread-safe."""

from __future__ import annotations

import threading
import time

import pytest

from services.tts.engines.step_audio.conditioning import LruCache


def computed(log: list[str], key: str):
    def compute() -> str:
        log.append(key)
        return f"conditioning of {key}"

    return compute


def test_keeps_at_most_capacity_entries_and_drops_the_least_recently_used() -> None:
    cache: LruCache[str, str] = LruCache(2)
    log: list[str] = []
    assert cache.get_or_compute("a", computed(log, "a")) == "conditioning of a"
    cache.get_or_compute("b", computed(log, "b"))
    cache.get_or_compute("a", computed(log, "a"))  # a hit: a is now the most recent
    cache.get_or_compute("c", computed(log, "c"))  # evicts b
    assert cache.keys() == ["a", "c"] and len(cache) == 2
    cache.get_or_compute("b", computed(log, "b"))  # b is computed again, a leaves
    assert log == ["a", "b", "c", "b"] and cache.keys() == ["c", "b"]


def test_discard_drops_matching_entries() -> None:
    cache: LruCache[tuple[str, str], int] = LruCache(8)
    for voice, variant in [("alice", "plain"), ("alice", "rap"), ("bob", "plain")]:
        cache.get_or_compute((voice, variant), lambda: 1)
    cache.discard(lambda key: key[0] == "alice")
    assert cache.keys() == [("bob", "plain")]


def test_a_failed_computation_stores_nothing() -> None:
    cache: LruCache[str, str] = LruCache(2)

    def fail() -> str:
        raise RuntimeError("unreadable prompt")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("a", fail)
    assert len(cache) == 0


def test_concurrent_misses_of_one_key_all_get_the_first_value_stored() -> None:
    cache: LruCache[str, object] = LruCache(4)
    results: list[object] = []

    def compute() -> object:
        time.sleep(0.05)  # all threads miss before any stores
        return object()

    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("a", compute))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(result is results[0] for result in results) and len(cache) == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruCache(0)
