"""A growing 1-D array kept as a list of chunks, for per-stream audio and code buffers.

``np.concatenate`` onto a growing array copies everything held so far on every append, so a buffer
fed frame by frame costs time quadratic in its length. Here an append only stores a reference;
elements are copied once, when they are read out (``peek``/``take``), so a stream's buffering cost
stays linear in the audio it carries. Appended arrays are copied once too, so a buffer never
holds a view into (and keeps alive) a caller's larger array, nor sees it change.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class ChunkBuffer:
    """FIFO of 1-D arrays of one dtype: each element is copied once in and once per read out."""

    def __init__(self, dtype: type = np.float32) -> None:
        self._dtype = np.dtype(dtype)
        self._chunks: deque[np.ndarray] = deque()
        self._length = 0
        self.copied = 0  # elements copied in and out so far (tests check buffering stays linear)

    def __len__(self) -> int:
        return self._length

    @property
    def nbytes(self) -> int:
        return self._length * self._dtype.itemsize

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.array(chunk, dtype=self._dtype, copy=True).reshape(-1)
        if chunk.size:
            self._chunks.append(chunk)
            self._length += chunk.size
            self.copied += chunk.size

    def drop(self, count: int) -> None:
        """Forget the first ``count`` elements (all of them if fewer are held)."""
        count = min(max(count, 0), self._length)
        self._length -= count
        while count:
            first = self._chunks[0]
            if first.size <= count:
                self._chunks.popleft()
                count -= first.size
            else:
                self._chunks[0] = first[count:]
                count = 0

    def peek(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """A copy of elements ``start:end`` (clipped to what is held), leaving the buffer as it is."""
        end = self._length if end is None else min(end, self._length)
        start = max(start, 0)
        out = np.empty(max(end - start, 0), dtype=self._dtype)
        filled = 0
        position = 0
        for chunk in self._chunks:
            if filled == out.size:
                break
            chunk_end = position + chunk.size
            if chunk_end > start:
                piece = chunk[max(start - position, 0) : min(end - position, chunk.size)]
                out[filled : filled + piece.size] = piece
                filled += piece.size
            position = chunk_end
        self.copied += out.size
        return out

    def take(self, count: int) -> np.ndarray:
        """Remove and return the first ``count`` elements."""
        out = self.peek(0, count)
        self.drop(out.size)
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self._length = 0
