"""Position-addressed Gaussian noise: the same (seed, stream, absolute position) always gives the
same values, however a sequence is cut into chunks. This is what lets a streamed decode reuse the
offline decode's flow noise and NSF noise frame for frame."""

from __future__ import annotations

import torch


class NoiseBank:
    """N(0, 1) noise of ``rows`` channels, generated in blocks of ``block`` positions, each block from
    its own seeded ``torch.Generator`` (CPU, so values do not depend on the device)."""

    def __init__(self, seed: int, stream: int, rows: int, block: int = 256) -> None:
        self.seed, self.stream, self.rows, self.block = seed, stream, rows, block
        self._cache: dict[int, torch.Tensor] = {}

    def _block(self, index: int) -> torch.Tensor:
        cached = self._cache.get(index)
        if cached is None:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.stream * 65_537 + index) % 2**63)
            cached = torch.randn(self.rows, self.block, generator=generator)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[index] = cached
        return cached

    def take(self, start: int, end: int) -> torch.Tensor:
        """float32 [rows, end - start] for positions [start, end)."""
        if end <= start:
            return torch.zeros(self.rows, 0)
        first, last = start // self.block, (end - 1) // self.block
        joined = torch.cat([self._block(i) for i in range(first, last + 1)], dim=1)
        offset = start - first * self.block
        return joined[:, offset : offset + end - start]


def uniform_phases(seed: int, count: int) -> torch.Tensor:
    """Per-harmonic initial phases in [-π, π) (the fundamental's is 0), float64 [count]."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + 7) % 2**63)
    phases = (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * torch.pi
    phases[0] = 0.0
    return phases
