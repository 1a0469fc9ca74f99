"""Running blocking model code off the event loop.

Engines are plain synchronous Python (numpy, onnxruntime, llama.cpp). ``iterate_in_thread``
drives a blocking iterator on an executor thread and hands its items to async code, with
back-pressure, error propagation and cancellation: when the async consumer stops (client
cancelled, deadline, error downstream), the producer stops at its next item and the iterator is
closed in its own thread, so a generator's ``finally`` releases model state there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]],
    executor: Executor | None = None,
    buffer: int = 4,
) -> AsyncIterator[T]:
    """Yield the items of ``make_iterator()`` (called on an executor thread) asynchronously.

    At most ``buffer`` items are produced ahead of the consumer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    slots = threading.Semaphore(buffer)
    stopped = threading.Event()

    def put(item: object) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        iterator = None
        try:
            iterator = make_iterator()
            for item in iterator:
                while not slots.acquire(timeout=0.05):
                    if stopped.is_set():
                        return
                if stopped.is_set():
                    return
                put(item)
        except BaseException as error:
            put(_Failure(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_END)

    producer = loop.run_in_executor(executor, produce)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            slots.release()
            yield item  # type: ignore[misc]
    finally:
        stopped.set()
        # Do not wait for the producer thread: it notices `stopped` within 50 ms or at its
        # next item. Its result is retrieved so no "exception never retrieved" warning appears.
        producer.add_done_callback(lambda f: f.exception())


async def run_blocking(function: Callable[..., T], *args: object, executor: Executor | None = None) -> T:
    """Run ``function(*args)`` on ``executor`` (default: the loop's) and await its result."""
    return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
