"""Cutting a stream of reply text into clauses that can be synthesised on their own.

The first clause is cut early (at a comma) so the first audio leaves soon; later clauses are
longer, which sounds more natural and costs fewer TTS calls.
"""

from __future__ import annotations

import re

_HARD = set("。！？!?；;\n")
_SOFT = set("，,、：:")
_SPEAKABLE = re.compile(r"[0-9A-Za-z\u3400-\u9fff\u00c0-\u024f]")
_MAX_CHARS = 160


def speakable(text: str) -> bool:
    return bool(_SPEAKABLE.search(text))


class ClauseSplitter:
    def __init__(self, first_min_chars: int, min_chars: int) -> None:
        self._first_min = first_min_chars
        self._min = min_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        """Add text; return the clauses now complete."""
        self._buffer += delta
        clauses = []
        while (cut := self._cut_position()) is not None:
            clause, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if speakable(clause):
                clauses.append(clause)
                self._emitted += 1
        return clauses

    def flush(self) -> list[str]:
        clause, self._buffer = self._buffer.strip(), ""
        return [clause] if speakable(clause) else []

    def _cut_position(self) -> int | None:
        minimum = self._first_min if self._emitted == 0 else self._min
        buffer = self._buffer
        for index, char in enumerate(buffer):
            end = index + 1
            if char == ".":
                # A full stop ends a sentence before whitespace, or at the end of the text so far
                # after a letter; after a digit it may be a decimal point ("3.5"): wait and see.
                if end < len(buffer):
                    if buffer[end].isspace():
                        return end
                elif index > 0 and buffer[index - 1].isalpha():
                    return end
            elif char in _HARD:
                return end
            elif char in _SOFT and index >= minimum:
                return end
        if len(buffer) > _MAX_CHARS:
            space = buffer.rfind(" ", 0, _MAX_CHARS)
            return space + 1 if space > 0 else _MAX_CHARS
        return None


_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
# Hiragana, katakana (with its phonetic extensions and half-width forms): Japanese writes them in nearly every
# sentence, Chinese never.
_KANA = re.compile(r"[\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_LATIN = re.compile(r"[A-Za-z]")


def reply_language(text: str) -> str:
    """ "ja", "zh" or "en": the language of a piece of a reply, by its script. CJK characters must outweigh the
    Latin letters (half as many or more) for Chinese or Japanese; then kana (at least one in ten of them) mean
    Japanese and their absence Chinese. A Japanese clause written in kanji alone reads as Chinese: the gateway
    decides on a reply's first clause, which nearly always has kana."""
    han, kana, latin = len(_HAN.findall(text)), len(_KANA.findall(text)), len(_LATIN.findall(text))
    cjk = han + kana
    if not cjk or cjk * 2 < latin:
        return "en"
    return "ja" if kana and kana * 10 >= cjk else "zh"


def looks_chinese(text: str) -> bool:
    """True when the text reads as Chinese (see ``reply_language``)."""
    return reply_language(text) == "zh"
