"""The bounded event queue between a call's producers (stage streams) and its client."""

from __future__ import annotations

import asyncio

from services.gateway import metrics

_WAKE = object()  # wakes a reader waiting on an empty queue when a failure arrives


class EventQueue:
    """Events on their way to one client, at most ``maxsize`` of them: a producer waits while the reader is that far
    behind, so it stops reading its stage stream and gRPC flow control slows the stage (a slow client slows
    generation, it never grows memory). A failure does not queue: it overtakes the buffered events, so the client
    hears of it at once; ``fail`` never blocks, so callbacks may call it."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self._failure: BaseException | None = None
        self._closed = False

    async def put(self, event: object) -> None:
        if self._closed:
            return
        await self._queue.put(event)
        if self._closed:  # closed while this waited for room
            self._queue.get_nowait()
        else:
            metrics.BUFFERED_EVENTS.inc()

    def fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        if self._queue.empty() and not self._closed:  # the reader may be waiting for an event
            self._queue.put_nowait(_WAKE)
            metrics.BUFFERED_EVENTS.inc()

    async def get(self) -> object:
        """The next event; raises the failure, if any, first."""
        self._raise_failure()
        event = await self._queue.get()
        metrics.BUFFERED_EVENTS.dec()
        self._raise_failure()
        return event

    def close(self) -> None:
        """The reader has stopped: drop what is buffered, and what producers still put."""
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
            metrics.BUFFERED_EVENTS.dec()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
