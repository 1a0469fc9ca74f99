"""2:3 interleave of vq02 and vq06 codes into Step-Audio audio-token ids, and their text form."""

from __future__ import annotations

import re
from collections.abc import Sequence

AUDIO_BASE = 65536
VQ02_OFFSET = AUDIO_BASE  # vq02 code c -> 65536 + c      (c < 1024)
VQ06_OFFSET = AUDIO_BASE + 1024  # vq06 code c -> 65536 + 1024 + c (c < 4096)
VQ02_PER_GROUP = 2
VQ06_PER_GROUP = 3
GROUP = VQ02_PER_GROUP + VQ06_PER_GROUP
GROUP_SECONDS = 0.12  # 2 vq02 frames at 16.67 Hz = 3 vq06 frames at 25 Hz
ID_LIMIT = VQ06_OFFSET + 4096
_TEXT = re.compile(r"<audio_(\d+)>")


def group_count(vq02: int, vq06: int) -> int:
    return min(vq02 // VQ02_PER_GROUP, vq06 // VQ06_PER_GROUP)


def interleave(vq02: Sequence[int], vq06: Sequence[int], groups: int | None = None) -> list[int]:
    """Ids of the first ``groups`` groups (default: all complete ones); leftovers are not used."""
    count = group_count(len(vq02), len(vq06)) if groups is None else groups
    ids: list[int] = []
    for g in range(count):
        ids += [VQ02_OFFSET + int(c) for c in vq02[g * VQ02_PER_GROUP : (g + 1) * VQ02_PER_GROUP]]
        ids += [VQ06_OFFSET + int(c) for c in vq06[g * VQ06_PER_GROUP : (g + 1) * VQ06_PER_GROUP]]
    return ids


def parse_audio_token_text(text: str) -> list[int]:
    """Inverse of ``audio_token_text``: ``<audio_N>…`` -> ids 65536 + N (the whole string must match)."""
    ids = [AUDIO_BASE + int(n) for n in _TEXT.findall(text)]
    if "".join(f"<audio_{i - AUDIO_BASE}>" for i in ids) != text:
        raise ValueError("not a sequence of <audio_N> tokens")
    return ids
