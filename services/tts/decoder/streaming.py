"""Seam handling for chunked decoding: mel cross-fade between overlapping flow chunks, and a
vocoder that runs HiFT on overlapping mel windows with a carried NSF phase and a short sample
cross-fade. Both only see absolute frame positions, so any chunking of the same tokens lines up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch


def fade_in(length: int) -> np.ndarray:
    """Raised-cosine ramp 0 → 1 (sin²), length samples/frames; fade-out is 1 − ramp (they sum to 1)."""
    if length <= 0:
        return np.zeros(0, dtype=np.float32)
    return (np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2).astype(np.float32)


class MelStitcher:
    """Turns overlapping flow chunks into a stream of final mel frames.

    Chunk k covers absolute frames [fs, fe) and owns frames up to its boundary B; the ``fade``
    frames centred on B are blended from chunk k (fading out) and chunk k+1 (fading in), both of
    which were computed with context on both sides of that region."""

    def __init__(self, fade_frames: int) -> None:
        self.half = fade_frames // 2
        self.tail: np.ndarray | None = None
        self.tail_start = 0
        self.done = 0  # frames [0, done) have been returned

    def push(self, mel: np.ndarray, start: int, boundary: int, final: bool) -> np.ndarray:
        """mel [80, n] for absolute frames [start, start + n) → final frames [done, new_done)."""
        end = start + mel.shape[1]
        if start > self.done:
            raise ValueError(f"chunk starts at frame {start}, after the {self.done} frames already final")
        out_end = end if final else min(boundary - self.half, end)
        out_end = max(out_end, self.done)
        out = mel[:, self.done - start : out_end - start].copy()
        if self.tail is not None:
            width = min(self.tail.shape[1], out.shape[1])
            ramp = fade_in(self.tail.shape[1])[:width]
            out[:, :width] = self.tail[:, :width] * (1 - ramp) + out[:, :width] * ramp
        self.tail = None
        if not final and self.half > 0:
            tail_end = min(boundary + self.half, end)
            self.tail = mel[:, out_end - start : tail_end - start].copy()
        self.done = out_end
        return out


class VocoderStream:
    """Streams HiFT over final mel frames.

    Each call vocodes the frames from ``context`` before the first unplayed frame to the newest
    frame, keeps the samples of [first unplayed, newest − lookahead), and cross-fades ``fade``
    samples with the previous call's extra tail. The NSF sine phase at the window start is the
    phase the previous call computed there; NSF noise and harmonic phases come from the
    position-addressed banks, so the excitation equals the whole-utterance one."""

    def __init__(
        self,
        vocode: Callable[[np.ndarray, int, np.ndarray | None, int], tuple[np.ndarray, np.ndarray | None]],
        hop: int,
        context_frames: int,
        lookahead_frames: int,
        fade_samples: int,
    ) -> None:
        self._vocode = vocode
        self.hop, self.context, self.lookahead = hop, context_frames, lookahead_frames
        self.fade = min(fade_samples, lookahead_frames * hop)
        self._mel = np.zeros((0, 0), dtype=np.float32)
        self._mel_start = 0
        self._played = 0  # frames whose samples were emitted
        self._phase_frame = 0
        self._phase: np.ndarray | None = None
        self._stash: np.ndarray | None = None

    def push(self, mel: np.ndarray, final: bool) -> Iterator[np.ndarray]:
        if mel.shape[1]:
            self._mel = mel if self._mel.size == 0 else np.concatenate([self._mel, mel], axis=1)
        newest = self._mel_start + self._mel.shape[1]
        target = newest if final else newest - self.lookahead
        if target <= self._played and not final:
            return
        start = max(0, self._played - self.context)
        if newest <= start:
            return
        if start != self._phase_frame:
            raise AssertionError("vocoder phase bookkeeping out of step")
        next_start = max(0, target - self.context)
        window = self._mel[:, start - self._mel_start :]
        wav, phase = self._vocode(window, start, self._phase, next_start)
        begin = (self._played - start) * self.hop
        stop = (target - start) * self.hop + (0 if final else self.fade)
        out = wav[begin:stop].copy()
        if self._stash is not None and out.size:
            width = min(self._stash.size, out.size)
            ramp = fade_in(self._stash.size)[:width]
            out[:width] = self._stash[:width] * (1 - ramp) + out[:width] * ramp
        self._stash = None
        if not final and self.fade:
            self._stash, out = out[-self.fade :].copy(), out[: -self.fade]
        self._played = target
        self._phase_frame, self._phase = next_start, phase
        keep_from = next_start - self._mel_start
        self._mel, self._mel_start = self._mel[:, keep_from:], next_start
        if out.size:
            yield out


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
