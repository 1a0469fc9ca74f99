"""Tag routing of the step-audio engine: typed controls → tags, the first tag → music mode, voice variant, decoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.controls import Controls
from services.common.errors import InvalidArgument
from services.tts.engines.step_audio.prompt import (
    SYS_PROMPT_HUMMING,
    SYS_PROMPT_RAP,
    SYS_PROMPT_WITH_SPEAKER,
    SYS_PROMPT_WITHOUT_SPEAKER,
    system_prompt,
)
from services.tts.engines.step_audio.routing import (
    COMMON_DECODER,
    MUSIC_DECODER,
    decoder_folder,
    prompt_voice,
    route,
)
from services.tts.voices import VoicePrompt


def voice(voice_id: str, text: str, tokens: tuple[int, ...], builtin: bool, **music: VoicePrompt) -> VoicePrompt:
    return VoicePrompt(voice_id, voice_id, ("zh",), text, Path(f"{voice_id}.wav"), tokens, builtin, dict(music))


TINGTING = voice(
    "Tingting",
    "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？",
    (65536, 65537),
    True,
    rap=voice("Tingting", "（RAP）远远甩开的笑", (65540,), True),
    humming=voice("Tingting", "（哼唱）你从一座叫 我 的小镇经过", (65541,), True),
)
CLONE = voice("yuqian", "今天天气很好", (65550, 65551), False)


@pytest.mark.parametrize(
    ("text", "controls", "composed", "style"),
    [
        ("你好", Controls(), "你好", None),
        ("(RAP)你好", Controls(), "(RAP)你好", "rap"),
        ("（哼唱）你好", Controls(), "（哼唱）你好", "humming"),
        ("你好", Controls(style="rap"), "(RAP)你好", "rap"),
        ("你好", Controls(style="humming"), "(哼唱)你好", "humming"),
        ("你好", Controls(emotion="happy", language="en"), "(高兴1)(英文)你好", None),
        ("(高兴1)(RAP)你好", Controls(), "(高兴1)(RAP)你好", None),  # only the FIRST tag counts
        ("你好", Controls(speed=1.5), "你好", None),  # speed is post-processing, not a tag
    ],
)
def test_route(text: str, controls: Controls, composed: str, style: str | None) -> None:
    assert route(text, controls) == (composed, style)


def test_contradicting_controls_are_rejected() -> None:
    with pytest.raises(InvalidArgument):
        route("(RAP)你好", Controls(emotion="happy"))


def test_builtin_voice_in_music_mode_takes_its_variant_and_the_music_decoder() -> None:
    for style, sys_prompt in (("rap", SYS_PROMPT_RAP), ("humming", SYS_PROMPT_HUMMING)):
        text, routed = route("你好", Controls(style=style))
        variant, fields = prompt_voice(TINGTING, routed)
        assert variant is TINGTING.music[style]
        assert (fields.prompt_text, fields.prompt_ids) == (variant.prompt_text, variant.prompt_tokens)
        assert system_prompt(text, routed, fields.speaker) == sys_prompt
        assert decoder_folder(routed) == MUSIC_DECODER


def test_builtin_voice_speaks_with_its_name() -> None:
    variant, fields = prompt_voice(TINGTING, None)
    assert variant is TINGTING and fields.speaker == "Tingting"
    assert system_prompt("你好", None, fields.speaker) == SYS_PROMPT_WITH_SPEAKER.format("Tingting")
    assert decoder_folder(None) == COMMON_DECODER


def test_cloned_voice_keeps_its_prompt_and_names_no_speaker() -> None:
    variant, fields = prompt_voice(CLONE, None)
    assert variant is CLONE and fields.speaker == ""
    assert system_prompt("你好", None, "") == SYS_PROMPT_WITHOUT_SPEAKER
    variant, fields = prompt_voice(CLONE, "rap")  # as the reference: the clone's own prompt, the music decoder
    assert variant is CLONE and fields.prompt_ids == CLONE.prompt_tokens
    assert decoder_folder("rap") == MUSIC_DECODER


def test_builtin_voice_without_a_variant_falls_back_to_its_speech_prompt() -> None:
    plain = voice("Plain", "你好", (65536,), True)
    variant, _ = prompt_voice(plain, "rap")
    assert variant is plain
