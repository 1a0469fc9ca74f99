"""The reference's repetition-aware rule (Step-Audio tts.py RepetitionAwareLogitsProcessor) as a pure function."""

from __future__ import annotations

import random

from services.tts.engines.step_audio.repetition import banned_id, violations


def reference_rule(sequence: list[int], window: int = 10, threshold: float = 0.1) -> int | None:
    """A literal transcription of the reference's arithmetic on one row, for comparison."""
    recent = sequence[-window:]
    if len(recent) < window:
        return None
    last = recent[-1]
    return last if sum(1 for token in recent if token == last) / window > threshold else None


def test_bans_the_last_id_when_it_occurs_twice_in_the_last_ten() -> None:
    assert banned_id([1, 2, 3, 4, 5, 6, 7, 8], [9, 9]) == 9
    assert banned_id([1, 2, 3, 4, 5, 9, 6, 7], [8, 9]) == 9  # the window reaches into the prompt
    assert banned_id([9, 2, 3, 4, 5, 6, 7, 8], [1, 9]) == 9
    assert banned_id([9, 1, 2, 3, 4, 5, 6, 7, 8], [0, 9]) is None  # the earlier 9 left the window
    assert banned_id([1, 2, 3, 4, 5, 6, 7, 8], [0, 9]) is None  # once is allowed


def test_skipped_while_the_sequence_is_shorter_than_the_window() -> None:
    assert banned_id([7, 7, 7], [7, 7, 7]) is None
    assert banned_id([7, 7, 7, 7], [7, 7, 7, 7, 7, 7]) == 7


def test_matches_the_reference_arithmetic() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        prompt = [rng.randrange(6) for _ in range(rng.randrange(0, 14))]
        output = [rng.randrange(6) for _ in range(rng.randrange(0, 14))]
        assert banned_id(prompt, output) == reference_rule(prompt + output)


def sample(prompt: list[int], steps: int, rule: bool, seed: int = 0) -> list[int]:
    """A stand-in for a degenerate LM: repeats its last id with probability 0.9, else picks one of 50."""
    rng = random.Random(seed)
    output: list[int] = []
    for _ in range(steps):
        previous = (prompt + output)[-1]
        candidates = [previous] * 45 + [rng.randrange(50) for _ in range(5)]
        banned = banned_id(prompt, output) if rule else None
        allowed = [token for token in candidates if token != banned] or [rng.randrange(50, 100)]
        output.append(rng.choice(allowed))
    return output


def test_with_the_rule_no_banned_id_is_generated_and_without_it_many_are() -> None:
    prompt = list(range(20))
    assert violations(prompt, sample(prompt, 300, rule=True)) == 0
    assert violations(prompt, sample(prompt, 300, rule=False)) > 100  # the test above would fail without the rule


def test_violations_counts_each_forbidden_step() -> None:
    prompt = list(range(10))
    assert violations(prompt, [9]) == 0  # the window [0..9] holds 9 once: allowed
    assert violations(prompt, [9, 9]) == 1  # window [1..9, 9] holds 9 twice: the second 9 was forbidden
    assert violations(prompt, [5, 5, 5]) == 2  # [1..9, 5] holds the prompt's 5 too: both later 5s were forbidden
    assert violations(prompt, [5, 4, 5, 4]) == 0  # only the LAST id is banned: alternation passes
