"""ChunkBuffer: the tokenizer engines' per-stream buffers (same contents as one growing array, linear cost)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from services.tokenizer.engines.buffers import ChunkBuffer

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 700)),
        st.tuples(st.just("take"), st.integers(0, 900)),
        st.tuples(st.just("drop"), st.integers(0, 900)),
        st.tuples(st.just("peek"), st.integers(0, 900), st.integers(0, 900)),
    ),
    max_size=40,
)


@given(operations)
def test_behaves_like_one_growing_array(steps: list[tuple]) -> None:
    buffer = ChunkBuffer()
    reference = np.zeros(0, dtype=np.float32)
    counter = 0
    for step in steps:
        if step[0] == "append":
            chunk = np.arange(counter, counter + step[1], dtype=np.float32)
            counter += step[1]
            buffer.append(chunk)
            chunk[:] = -1  # the buffer holds its own copy
            reference = np.concatenate([reference, np.arange(counter - step[1], counter, dtype=np.float32)])
        elif step[0] == "take":
            np.testing.assert_array_equal(buffer.take(step[1]), reference[: step[1]])
            reference = reference[step[1] :]
        elif step[0] == "drop":
            buffer.drop(step[1])
            reference = reference[step[1] :]
        else:
            np.testing.assert_array_equal(buffer.peek(step[1], step[2]), reference[step[1] : step[2]])
        assert len(buffer) == len(reference) and buffer.nbytes == reference.nbytes
    np.testing.assert_array_equal(buffer.peek(), reference)


def test_frame_by_frame_use_copies_each_sample_a_constant_number_of_times() -> None:
    buffer = ChunkBuffer()
    frames = 20_000  # 10 minutes of 32 ms frames
    for _ in range(frames):
        buffer.append(np.ones(512, dtype=np.float32))
        if len(buffer) >= 1024:
            buffer.take(512)
    # An append onto one growing array would have copied ~frames² / 2 frames.
    assert buffer.copied <= 2 * frames * 512


def test_int_codes_keep_their_dtype() -> None:
    buffer = ChunkBuffer(np.int64)
    buffer.append(np.array([1, 2, 3]))
    buffer.append(np.array([4]))
    taken = buffer.take(3)
    assert taken.dtype == np.int64 and taken.tolist() == [1, 2, 3] and buffer.take(5).tolist() == [4]
