"""Is synthesised speech intelligible? Compare a text with the transcript of its audio."""

from __future__ import annotations

import re
import unicodedata

_DROP = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, no punctuation or spaces, full-width folded (so CER works for zh and en)."""
    return _DROP.sub("", unicodedata.normalize("NFKC", text).lower())


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def character_error_rate(reference: str, hypothesis: str) -> float:
    reference, hypothesis = normalise(reference), normalise(hypothesis)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return edit_distance(reference, hypothesis) / len(reference)


def speakable_reference(text: str) -> str:
    """What the embedded voices actually say: in a mostly-Chinese reply, Latin-letter words are
    dropped by the Mandarin voice (it has no English front end), so they are not expected."""
    cjk = len(re.findall(r"[\u3400-\u9fff]", text))
    latin = len(re.findall(r"[A-Za-z]", text))
    if cjk and cjk * 2 >= latin:
        return re.sub(r"[A-Za-z]+", "", text)
    return text
