"""The reference's RepetitionAwareLogitsProcessor as a pure rule (Step-Audio tts.py; no torch, no vLLM).

At each step take the last ``WINDOW`` (10) ids of the WHOLE sequence, prompt included. If the last id makes up more
than ``THRESHOLD`` (0.1) of that window, i.e. it occurs at least twice in it, it may not be generated next (its
logit becomes −inf). While the sequence is shorter than the window the rule does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

WINDOW = 10
THRESHOLD = 0.1


def banned_id(prompt_ids: Sequence[int], output_ids: Sequence[int], window: int = WINDOW) -> int | None:
    """The id the rule forbids as the next token, or None."""
    generated = len(output_ids)
    if generated >= window:
        recent = list(output_ids[generated - window :])
    else:
        missing = window - generated
        if len(prompt_ids) < missing:
            return None
        recent = [*prompt_ids[len(prompt_ids) - missing :], *output_ids]
    last = recent[-1]
    if recent.count(last) / window > THRESHOLD:
        return last
    return None


def violations(prompt_ids: Sequence[int], output_ids: Sequence[int], window: int = WINDOW) -> int:
    """How many generated ids the rule would have forbidden at their step (0 when it was applied)."""
    sequence = [*prompt_ids, *output_ids]
    count = 0
    for position in range(len(prompt_ids), len(sequence)):
        if position < window:
            continue
        recent = sequence[position - window : position]
        last = recent[-1]
        if sequence[position] == last and recent.count(last) / window > THRESHOLD:
            count += 1
    return count
