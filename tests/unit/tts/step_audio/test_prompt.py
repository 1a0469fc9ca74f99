"""The step-audio TTS prompt, token for token, against ids worked out by hand from the tiny tokenizer.

The tiny tokenizer (tools/tiny_step1.py) has the real id layout and behaves like the real one where it matters here:
``encode`` adds ``<s>`` and puts ``▁`` before the first piece, so a lone role string is ``[1, ▁role, \\n]`` and the
reference's ``enc("\\n" + text)[len(enc("\\n")):]`` strips ``[1, ▁, \\n]``.
"""

# ruff: noqa: RUF005 (the expected prompts are written turn by turn, as the reference concatenates them)
from __future__ import annotations

import hashlib

import pytest

from services.tts.engines.step_audio.prompt import (
    OUTPUT_IDS,
    SYS_PROMPT_HUMMING,
    SYS_PROMPT_RAP,
    SYS_PROMPT_WITH_SPEAKER,
    SYS_PROMPT_WITHOUT_SPEAKER,
    PromptVoice,
    audio_codes,
    build_tts_prompt,
    system_prompt,
)
from tools.tiny_step1 import build_tokenizer

TOKENIZER = build_tokenizer()


def encode(text: str) -> list[int]:
    return TOKENIZER.encode(text).ids  # as the reference's tokenizer.encode(text): special tokens added


def piece(name: str) -> int:
    token = TOKENIZER.token_to_id(name)
    assert token is not None, name
    return token


BOS, EOT, BOT, NEWLINE = 1, 3, 4, 78
HUMAN = [BOS, piece("▁human"), NEWLINE]  # enc("human\n")
ASSISTANT = [BOS, piece("▁assistant"), NEWLINE]  # enc("assistant\n")
HI = [piece("hi")]  # content "hi": enc("\nhi") = [1, ▁, \n, hi] minus enc("\n") = [1, ▁, \n]
HELLO = [piece("hello")]
RAP_HI = [piece(c) for c in "(RAP)"] + HI
HUMMING_HI = [piece("("), piece("哼"), piece("唱"), piece(")")] + HI
CODES = (65536, 66560, 70655)  # <audio_0>, <audio_1024>, <audio_5119>
RAP_CODES = (65537, 65538)


def system(text: str) -> list[int]:
    """The reference's enc(f"system\\n{SYS}"), checked by hand at its start."""
    ids = encode("system\n" + text)
    assert ids[:3] == [BOS, piece("▁system"), NEWLINE]
    assert ids[3] == piece(text[0])
    return ids


def test_system_prompts_are_the_reference_strings() -> None:
    digests = {
        SYS_PROMPT_RAP: "94e57ef98fca7e17c6b2cc8b68a6144284f75170ca4c958c3b67670959393ca8",
        SYS_PROMPT_HUMMING: "fe285fced376165407bb5cb87ac96dc7e947c207ed3166f5ed22458931277cf1",
        SYS_PROMPT_WITHOUT_SPEAKER: "fbfae76f256390123e00e65ebf99dc0f615f0b8e8727d24ff66083aeb6e90602",
        SYS_PROMPT_WITH_SPEAKER: "f18b3010e2b1bdcb402eaafbaf8c20a03ba0201e04c237f387f1391fc6d3c52e",
    }  # sha256 of the sys_prompt_dict values in Step-Audio tts.py (commit a52b94d)
    for text, digest in digests.items():
        assert hashlib.sha256(text.encode()).hexdigest() == digest


def test_builtin_voice() -> None:
    voice = PromptVoice("Tingting", "hello", CODES)
    sys_text = SYS_PROMPT_WITH_SPEAKER.format("Tingting")
    assert "使用[Tingting]的声音" in sys_text
    expected = (
        [BOS]
        + [BOT, *system(sys_text), EOT]
        + [BOT, *HUMAN, *HELLO, EOT]
        + [BOT, *ASSISTANT, *CODES, EOT]
        + [BOT, *HUMAN, *HI, EOT]
        + [BOT, *ASSISTANT]
    )
    assert build_tts_prompt(encode, "hi", voice, None) == expected
    speaker = [piece(c) for c in "[Tingting]"]
    ids = system(sys_text)
    assert any(ids[i : i + len(speaker)] == speaker for i in range(len(ids)))


def test_cloned_voice_names_no_speaker() -> None:
    voice = PromptVoice("", "hello", CODES)
    expected = (
        [BOS]
        + [BOT, *system(SYS_PROMPT_WITHOUT_SPEAKER), EOT]
        + [BOT, *HUMAN, *HELLO, EOT]
        + [BOT, *ASSISTANT, *CODES, EOT]
        + [BOT, *HUMAN, *HI, EOT]
        + [BOT, *ASSISTANT]
    )
    assert build_tts_prompt(encode, "hi", voice, None) == expected


def test_rap() -> None:
    voice = PromptVoice("Tingting", "hello", RAP_CODES)  # the voice's RAP variant
    expected = (
        [BOS]
        + [BOT, *system(SYS_PROMPT_RAP), EOT]
        + [BOT, *HUMAN, *HELLO, EOT]
        + [BOT, *ASSISTANT, *RAP_CODES, EOT]
        + [BOT, *HUMAN, *RAP_HI, EOT]  # the tag stays in the text the LM reads
        + [BOT, *ASSISTANT]
    )
    assert build_tts_prompt(encode, "(RAP)hi", voice, "rap") == expected


def test_humming() -> None:
    voice = PromptVoice("Tingting", "hello", RAP_CODES)
    expected = (
        [BOS]
        + [BOT, *system(SYS_PROMPT_HUMMING), EOT]
        + [BOT, *HUMAN, *HELLO, EOT]
        + [BOT, *ASSISTANT, *RAP_CODES, EOT]
        + [BOT, *HUMAN, *HUMMING_HI, EOT]
        + [BOT, *ASSISTANT]
    )
    assert build_tts_prompt(encode, "(哼唱)hi", voice, "humming") == expected


def test_no_voice_leaves_out_the_prompt_turns() -> None:
    expected = [BOS] + [BOT, *system(SYS_PROMPT_WITHOUT_SPEAKER), EOT] + [BOT, *HUMAN, *HI, EOT] + [BOT, *ASSISTANT]
    assert build_tts_prompt(encode, "hi", None, None) == expected


def test_full_width_tag_and_chinese_text() -> None:
    text = "（高兴1）你好"
    content = [*[piece(f"<0x{b:02X}>") for b in "（".encode()], piece("高"), piece("兴"), piece("1")]
    content += [*[piece(f"<0x{b:02X}>") for b in "）".encode()], piece("你"), piece("好")]
    ids = build_tts_prompt(encode, text, None, None)
    assert ids[-len(content) - 2 - len(ASSISTANT) : -2 - len(ASSISTANT)] == content


@pytest.mark.parametrize(
    ("text", "style", "speaker", "expected"),
    [
        ("(RAP)hi", "rap", "Tingting", SYS_PROMPT_RAP),
        ("(哼唱)hi", "humming", "", SYS_PROMPT_HUMMING),
        ("(RAP)我不哼唱", "rap", "Tingting", SYS_PROMPT_HUMMING),  # the reference tests `"哼唱" in text`
        ("(高兴1)hi", None, "Tingting", SYS_PROMPT_WITH_SPEAKER.format("Tingting")),
        ("hi", None, "", SYS_PROMPT_WITHOUT_SPEAKER),
    ],
)
def test_system_prompt_choice(text: str, style: str | None, speaker: str, expected: str) -> None:
    assert system_prompt(text, style, speaker) == expected


def test_prompt_tokens_must_be_audio_ids() -> None:
    with pytest.raises(ValueError, match="not an audio id"):
        build_tts_prompt(encode, "hi", PromptVoice("", "hello", (65536, 12)), None)


def test_output_ids_and_codes() -> None:
    assert len(OUTPUT_IDS) == 5121 and OUTPUT_IDS[0] == 65536 and OUTPUT_IDS[-2] == 70655 and OUTPUT_IDS[-1] == EOT
    assert audio_codes([65536, 65600, 70655, EOT]) == [0, 64, 5119]  # the final <|EOT|> is not a code
