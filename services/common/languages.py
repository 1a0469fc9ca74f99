"""Language hints for speech recognition (``TokenizeConfig.language``, the gateway's ``language`` fields).

A hint is "" (detect the language) or a BCP-47 tag whose primary language the recogniser knows: the embedded
tokenizer's whisper-base hears the languages below. Validating here turns a hint the engine would choke on into
INVALID_ARGUMENT naming the accepted values, instead of an engine error (INTERNAL).
"""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

# whisper-base's languages (faster_whisper.tokenizer._LANGUAGE_CODES less "yue", which only large-v3 knows;
# tests/unit/test_languages.py checks the two agree).
RECOGNITION_LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy "
    "id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa "
    "sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh".split()
)
# language[-script][-region][-variant…]: "zh", "en-US", "zh-Hans-CN"
_TAG = re.compile(r"([A-Za-z]{2,3})((?:-[A-Za-z0-9]{1,8}){0,7})")


def language_hint(value: str, field: str = "language") -> str:
    """``value`` checked and normalised (the primary language in lower case: "ZH-CN" → "zh-CN"); "" stays ""."""
    if not value:
        return ""
    match = _TAG.fullmatch(value)
    if match is None or match.group(1).lower() not in RECOGNITION_LANGUAGES:
        raise InvalidArgument(
            f"{field} {value[:40]!r} is not a language the recogniser knows: leave it empty to detect the language, "
            "or send a BCP-47 tag such as 'zh', 'en-US' or 'ja' whose language is one of "
            f"{', '.join(sorted(RECOGNITION_LANGUAGES))}"
        )
    return match.group(1).lower() + match.group(2)
