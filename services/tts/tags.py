"""Step-Audio instruction tags: typed controls → tag prefix, leading-tag parsing, conflict rules.

Step-Audio-TTS reads instructions as a parenthesised prefix of the text, ``(高兴1)`` or
``（高兴1）``. The reference parses only the FIRST tag (to pick the music decoder and the
``{spk}RAP``/``{spk}哼唱`` speaker entry); every tag stays in the text the LM reads, and its demo
concatenates ``(emotion)(language)(speed)text``.

Decisions (see docs/voices.md):

* **Speed is post-processing, not a tag.** ``Controls.speed`` is an exact factor (0.5–2.0) applied
  by :func:`services.tts.postprocess.change_speed` (tempo change, pitch kept) — the reference's own
  ``speed_ratio`` sox-tempo step. The LM speed tags (慢速1/2, 快速1/2) are coarse and unquantified,
  so ``tags_for`` never emits them; raw speed tags in the text still reach the LM unchanged.
* **Music mode is exclusive.** RAP/哼唱 must be the first tag (only the first is parsed) and the
  reference then swaps the whole system prompt for a music one that lists no emotion or language
  tags, and the music decoder. So a music style (typed or raw) combined with an emotion or a
  language is rejected rather than silently ignored — and a typed emotion/language prefix would
  push a raw ``(RAP)`` out of first place and turn music mode off.
* A typed control that contradicts a raw tag of the same kind in the text is rejected; a raw tag
  that says the same thing is accepted and not repeated.
"""

from __future__ import annotations

import re

from services.common.controls import Controls
from services.common.errors import InvalidArgument

EMOTION_TAGS = ("高兴1", "高兴2", "生气1", "生气2", "悲伤1", "撒娇1")
LANGUAGE_TAGS = ("中文", "英文", "韩语", "日语", "四川话", "粤语", "广东话")
MUSIC_TAGS = ("RAP", "哼唱")
SPEED_TAGS = ("慢速1", "慢速2", "快速1", "快速2")
KNOWN_TAGS = EMOTION_TAGS + LANGUAGE_TAGS + MUSIC_TAGS + SPEED_TAGS

# Typed emotion → the reference tag (the "…1" intensity; "…2" stays reachable as a raw tag).
EMOTION_TO_TAG = {"happy": "高兴1", "angry": "生气1", "sad": "悲伤1", "coquettish": "撒娇1"}
STYLE_TO_TAG = {"rap": "RAP", "humming": "哼唱"}
_TAG_TO_STYLE = {tag: style for style, tag in STYLE_TO_TAG.items()}

# BCP-47 (lower-cased, "_" → "-") → language tag. Longest prefix wins, so "zh-sichuan" beats "zh".
LANGUAGE_TO_TAG = {
    "zh": "中文",
    "cmn": "中文",
    "en": "英文",
    "ko": "韩语",
    "ja": "日语",
    "zh-sichuan": "四川话",
    "zh-x-sichuan": "四川话",
    "yue": "粤语",
    "zh-yue": "粤语",
    "zh-hk": "粤语",
}
# 广东话 (Cantonese, colloquial name) and 粤语 name the same language.
_SAME_LANGUAGE = {"广东话": "粤语"}

# The reference regex is r"^([（\(][^\(\)()]*[）\)]).*$" (re.DOTALL). Its character class only
# excludes ASCII parentheses, so with full-width tags a greedy match runs to the LAST closing
# parenthesis ("（高兴1）你好（笑）" → "高兴1）你好（笑"). We keep its open/close sets but stop at the
# first closing parenthesis, which is what "the first tag" means (documented deviation).
_LEADING_TAG = re.compile(r"[（(]([^()（）]*)[）)]")


def split_leading_tag(text: str) -> tuple[str | None, str]:
    """Split the first instruction tag off ``text``: ``"(高兴1)你好"`` → ``("高兴1", "你好")``.

    Only a tag at the very start counts (leading whitespace is skipped); a second tag stays in the
    remainder: ``"(RAP)(哼唱)x"`` → ``("RAP", "(哼唱)x")``. No tag, or an empty ``()``:
    ``(None, text)`` with the text unchanged. The tag name is stripped of whitespace.
    """
    match = _LEADING_TAG.match(text.lstrip())
    if match is None or not match.group(1).strip():
        return None, text
    return match.group(1).strip(), text.lstrip()[match.end() :]


def leading_tags(text: str) -> list[str]:
    """Every tag in the run of tags at the start of ``text`` (``"(高兴1)(英文)hi"`` →
    ``["高兴1", "英文"]``). For conflict checks only: engines parse just the first."""
    tags = []
    while True:
        tag, rest = split_leading_tag(text)
        if tag is None:
            return tags
        tags.append(tag)
        text = rest


def music_style(tag: str | None) -> str | None:
    """``"RAP"`` → ``"rap"``, ``"哼唱"`` → ``"humming"``, anything else → None (exact match, as the
    reference compares)."""
    return _TAG_TO_STYLE.get(tag or "")


def language_tag(language: str) -> str:
    """The dialect/language tag for a BCP-47 code; InvalidArgument for one Step-Audio lacks."""
    code = language.strip().lower().replace("_", "-")
    parts = code.split("-")
    for end in range(len(parts), 0, -1):
        tag = LANGUAGE_TO_TAG.get("-".join(parts[:end]))
        if tag is not None:
            return tag
    raise InvalidArgument(
        f"controls.language {language!r} has no Step-Audio tag; use one of: "
        "zh (中文), en (英文), ko (韩语), ja (日语), zh-sichuan (四川话), yue (粤语)"
    )


def _control_tags(controls: Controls) -> list[str]:
    tags = []
    if controls.style:
        tags.append(STYLE_TO_TAG[controls.style])
    if controls.emotion:
        tags.append(EMOTION_TO_TAG[controls.emotion])
    if controls.language:
        tags.append(language_tag(controls.language))
    return tags


def tags_for(controls: Controls) -> str:
    """The tag prefix for typed controls, in the reference order: music first (it must be the
    first tag to be parsed), then (emotion)(language). Speed and volume are post-processing and
    produce no tag. ``Controls(emotion="happy", language="en")`` → ``"(高兴1)(英文)"``.
    Raises InvalidArgument for an unsupported language or an exclusive combination."""
    conflicts(controls, None)
    return "".join(f"({tag})" for tag in _control_tags(controls))


def _kind(tag: str) -> str | None:
    if tag in EMOTION_TAGS:
        return "emotion"
    if tag in LANGUAGE_TAGS:
        return "language"
    if tag in MUSIC_TAGS:
        return "style"
    if tag in SPEED_TAGS:
        return "speed"
    return None


def _same(tag: str, other: str) -> bool:
    return _SAME_LANGUAGE.get(tag, tag) == _SAME_LANGUAGE.get(other, other)


def conflicts(controls: Controls, text_tag: str | list[str] | tuple[str, ...] | None) -> None:
    """Raise InvalidArgument when the typed controls cannot be honoured together with the raw
    tag(s) at the start of the text (``text_tag``: the first tag from :func:`split_leading_tag`,
    or all of :func:`leading_tags`), or with each other. Returns None when they agree.

    Rules (typed controls are checked; raw tags alone are passed through as the reference does):

    * a typed music style excludes a typed emotion or language, and raw emotion/language tags;
    * a typed emotion or language cannot join a text whose first tag is a music tag (its prefix
      would push the music tag out of first place, and music mode excludes them anyway);
    * a typed control must not contradict a raw tag of its kind: a typed style vs the other music
      tag, a typed emotion vs another emotion tag, a typed language vs another language tag
      (粤语 = 广东话), a typed speed other than 1.0 vs any raw speed tag.

    Unknown tags (e.g. "(笑)") are ordinary text and never conflict.
    """
    raw = [text_tag] if isinstance(text_tag, str) else list(text_tag or ())
    if controls.style and (controls.emotion or controls.language):
        named = " and ".join(
            f"{name} {value!r}"
            for name, value in (("emotion", controls.emotion), ("language", controls.language))
            if value
        )
        raise InvalidArgument(
            f"controls.style {controls.style!r} cannot be combined with {named}: Step-Audio's "
            "music mode (RAP/humming) uses its own prompt and decoder, without emotion or language"
        )
    typed = {_kind(tag): tag for tag in _control_tags(controls)}
    if raw and raw[0] in MUSIC_TAGS and (controls.emotion or controls.language):
        raise InvalidArgument(
            f"the text starts with the music tag ({raw[0]}): controls.emotion and "
            "controls.language cannot be combined with music mode (RAP/humming)"
        )
    for tag in raw:
        kind = _kind(tag)
        if kind is None:
            continue
        if kind == "speed" and controls.speed != 1.0:
            raise InvalidArgument(
                f"controls.speed {controls.speed:g} contradicts the speed tag ({tag}) in the text: use one of them"
            )
        if controls.style and kind in ("emotion", "language"):
            raise InvalidArgument(
                f"controls.style {controls.style!r} cannot be combined with the tag ({tag}) in the "
                "text: music mode (RAP/humming) has no emotion or language"
            )
        if kind in typed and not _same(typed[kind], tag):
            raise InvalidArgument(
                f"controls.{kind} ({typed[kind]}) contradicts the tag ({tag}) at the start of the "
                "text: remove the tag or the control"
            )


def compose(text: str, controls: Controls) -> str:
    """The text an engine gives the LM: the typed controls' tags, then ``text`` with its own raw
    tags. Checks :func:`conflicts` against all leading raw tags and does not repeat a tag the text
    already has. ``compose("(英文)hi", Controls(emotion="happy"))`` → ``"(高兴1)(英文)hi"``."""
    raw = leading_tags(text)
    conflicts(controls, raw)
    present = {_SAME_LANGUAGE.get(tag, tag) for tag in raw}
    prefix = [tag for tag in _control_tags(controls) if _SAME_LANGUAGE.get(tag, tag) not in present]
    if not prefix:
        return text
    # A raw music tag must stay first; conflicts() guarantees no typed tag joins one.
    return "".join(f"({tag})" for tag in prefix) + text.lstrip()
