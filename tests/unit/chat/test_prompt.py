"""The Step-Audio-Chat prompt builder, token by token, against the fixture tokenizer (real id layout).

Expected ids are written out from the reference rules (shared STEP_AUDIO_REFERENCE §3):
[<s>=1] + per message [<|BOT|>=4] + enc(role "\\n" content) + [<|EOT|>=3] + [4] + enc("assistant\\n"), role "user"
written "human", audio as 65536+N, and no "▁" prefix on text that follows a special token.
"""

from __future__ import annotations

import pytest

from services.chat.engine import Message
from services.chat.prompt import after_special, audio_token_ids, build_prompt, reference_text
from services.common.errors import InvalidArgument
from tools.tiny_step1 import build_tokenizer

NL = 78  # "\n" = <0x0A>, by byte fallback, as in the real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def encode(tokenizer):
    return after_special(lambda text: tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.fixture(scope="module")
def piece(tokenizer):
    def lookup(text: str) -> int:
        token = tokenizer.token_to_id(text)
        assert token is not None, text
        return token

    return lookup


def test_the_fixture_has_the_real_id_layout(piece) -> None:
    assert [piece(p) for p in ("<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>", "<0x0A>")] == [0, 1, 2, 3, 4, NL]
    assert [piece(f"<audio_{n}>") for n in (0, 1023, 1024, 5119)] == [65536, 66559, 66560, 70655]


def test_text_only(encode, piece) -> None:
    ids = build_prompt([Message("user", "hello")], encode)
    assert ids == [1, 4, piece("human"), NL, piece("hello"), 3, 4, piece("assistant"), NL]


def test_spaces_and_chinese_inside_a_message(encode, piece) -> None:
    ids = build_prompt([Message("user", "hello you 你好")], encode)
    body = [piece("hello"), piece("\u2581you"), piece("\u2581"), piece("你"), piece("好")]
    assert ids == [1, 4, piece("human"), NL, *body, 3, 4, piece("assistant"), NL]


def test_audio_only(encode, piece) -> None:
    ids = build_prompt([Message("user", "", "<audio_0><audio_1023><audio_1024><audio_5119>")], encode)
    assert ids == [1, 4, piece("human"), NL, 65536, 66559, 66560, 70655, 3, 4, piece("assistant"), NL]


def test_text_then_audio_in_one_message(encode, piece) -> None:
    ids = build_prompt([Message("user", "hi", "<audio_7> <audio_2000>")], encode)
    assert ids == [1, 4, piece("human"), NL, piece("hi"), 65543, 67536, 3, 4, piece("assistant"), NL]


def test_multi_turn_with_system(encode, piece) -> None:
    messages = [
        Message("system", "you are helpful"),
        Message("user", "", "<audio_12><audio_1100>"),
        Message("assistant", "it is sunny"),
        Message("user", "thank you"),
    ]
    human, assistant = piece("human"), piece("assistant")
    expected = [
        1,
        4, piece("system"), NL, piece("you"), piece("\u2581are"), piece("\u2581helpful"), 3,
        4, human, NL, 65548, 66636, 3,
        4, assistant, NL, piece("it"), piece("\u2581is"), piece("\u2581sunny"), 3,
        4, human, NL, piece("thank"), piece("\u2581you"), 3,
        4, assistant, NL,
    ]  # fmt: skip
    assert build_prompt(messages, encode) == expected


@pytest.mark.parametrize(
    "messages",
    [
        [Message("user", "hello")],
        [Message("system", "You are a helpful assistant."), Message("user", "What is the weather today?")],
        [Message("user", "你好，天气怎么样？\n  two  spaces"), Message("assistant", "It is sunny.")],
        [Message("user", "", "<audio_1><audio_4000>"), Message("assistant", "ok"), Message("user", "", "<audio_9>")],
    ],
)
def test_piecewise_ids_equal_the_reference_whole_string_encoding(tokenizer, encode, messages) -> None:
    # What the reference does: render one string, encode it with BOS. The engine runs this same check at start-up
    # against the checkpoint's own tokenizer.
    assert build_prompt(messages, encode) == tokenizer.encode(reference_text(messages)).ids


def test_reference_text_format() -> None:
    text = reference_text([Message("system", "s"), Message("user", "u", "<audio_1>"), Message("assistant", "a")])
    assert text == "<|BOT|>system\ns<|EOT|><|BOT|>human\nu<audio_1><|EOT|><|BOT|>assistant\na<|EOT|><|BOT|>assistant\n"


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("<audio_5120>", "audio codes run from 0 to 5119"),
        ("<audio_1><audio_99999>", "<audio_99999>"),
        ("<audio_1>hello", "expected only <audio_N> tokens"),
        ("<audio_-1>", "expected only <audio_N> tokens"),
        ("<|BOT|>", "expected only <audio_N> tokens"),
    ],
)
def test_bad_audio_tokens_are_invalid_argument(encode, tokens, message) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.audio_tokens") as raised:
        build_prompt([Message("user", "", tokens)], encode)
    assert message in raised.value.message


def test_unknown_role_is_invalid_argument(encode) -> None:
    with pytest.raises(InvalidArgument, match="role 'tool'"):
        build_prompt([Message("tool", "x")], encode)


def test_audio_token_ids_accepts_whitespace_and_empty() -> None:
    assert audio_token_ids("") == []
    assert audio_token_ids(" <audio_0>\n<audio_5119> ") == [65536, 70655]


def test_after_special_rejects_a_tokenizer_without_the_marker() -> None:
    with pytest.raises(ValueError, match="single id 4"):
        after_special(lambda text: [9, 9])("hi")
