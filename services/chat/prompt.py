"""The Step-Audio-Chat prompt as token ids (pure: no vLLM, no transformers).

The reference (Step-Audio ``stepaudio.py``) renders the conversation as one string and encodes it with the chat
tokenizer, which prepends ``<s>``::

    <|BOT|>{role}\\n{content}<|EOT|>   for each message, role "user" written "human"
    <|BOT|>assistant\\n                 at the end

Audio content is the ``<audio_N>…`` string, whose pieces are single added tokens (id 65536+N). This module builds the
same ids piece by piece so that audio arrives as validated ids, never as text:

    [1] + for each message: [4] + enc(role + "\\n" + text) + audio ids + [3]  +  [4] + enc("assistant\\n")

``enc`` must encode text exactly as the tokenizer does when the text FOLLOWS a special token in one string: the
tokenizer (sentencepiece Unigram, Metaspace ``prepend_scheme: first``) puts the ``▁`` prefix only on a text section
at the very start of the string, and every text section of the reference prompt follows ``<|BOT|>``. So there is no
``▁`` before the role. ``after_special`` makes such an encoder from any ``encode(text) -> ids`` without BOS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from services.chat.engine import Message
from services.common.errors import InvalidArgument

BOS_ID = 1  # <s>
EOT_ID = 3  # <|EOT|>: ends every message; also the model's eos, so generation stops on it
BOT_ID = 4  # <|BOT|>: starts every message
BOT = "<|BOT|>"
EOT = "<|EOT|>"
AUDIO_BASE = 65536  # <audio_N> = 65536 + N
AUDIO_CODES = 5120  # N in 0..1023 is vq02, 1024..5119 is vq06
ROLE_NAMES = {"system": "system", "user": "human", "assistant": "assistant"}

TextEncoder = Callable[[str], Sequence[int]]

_AUDIO_TOKEN = re.compile(r"<audio_(\d{1,9})>")
_SPACE = re.compile(r"\s*")


def after_special(encode: TextEncoder, marker: str = BOT, marker_id: int = BOT_ID) -> TextEncoder:
    """An encoder for text that follows a special token: encode ``marker + text`` and drop the marker's id.

    ``encode`` returns ids without BOS (e.g. ``tokenizer.encode(s, add_special_tokens=False)``).
    """

    def encode_after(text: str) -> list[int]:
        ids = list(encode(marker + text))
        if not ids or ids[0] != marker_id:
            raise ValueError(f"the tokenizer does not encode {marker!r} as the single id {marker_id}")
        return ids[1:]

    return encode_after


def audio_token_ids(tokens: str, where: str = "audio_tokens") -> list[int]:
    """Parse ``"<audio_N><audio_M>…"`` (whitespace between tokens allowed) into ids 65536+N, N < 5120."""
    ids = []
    position = _SPACE.match(tokens).end()
    while position < len(tokens):
        match = _AUDIO_TOKEN.match(tokens, position)
        if match is None:
            raise InvalidArgument(
                f"{where} has {tokens[position : position + 20]!r} at character {position}: "
                "expected only <audio_N> tokens"
            )
        code = int(match.group(1))
        if code >= AUDIO_CODES:
            raise InvalidArgument(f"{where} has <audio_{code}>: audio codes run from 0 to {AUDIO_CODES - 1}")
        ids.append(AUDIO_BASE + code)
        position = _SPACE.match(tokens, match.end()).end()
    return ids


def build_prompt(messages: Sequence[Message], encode: TextEncoder) -> list[int]:
    """The reference chat prompt as token ids. ``encode``: text after a special token (see ``after_special``).

    Text comes first in a message, then its audio tokens (the proto's order). Raises InvalidArgument for an unknown
    role or a bad audio token.
    """
    ids = [BOS_ID]
    for index, message in enumerate(messages):
        role = ROLE_NAMES.get(message.role)
        if role is None:
            raise InvalidArgument(f"messages[{index}].role {message.role!r} is not one of {sorted(ROLE_NAMES)}")
        ids.append(BOT_ID)
        ids += encode(f"{role}\n{message.text}")
        ids += audio_token_ids(message.audio_tokens, f"messages[{index}].audio_tokens")
        ids.append(EOT_ID)
    ids.append(BOT_ID)
    ids += encode("assistant\n")
    return ids


def reference_text(messages: Sequence[Message]) -> str:
    """The reference's prompt string (before ``<s>``), for checking ``build_prompt`` against a real tokenizer."""
    parts = [f"{BOT}{ROLE_NAMES[m.role]}\n{m.text}{''.join(m.audio_tokens.split())}{EOT}" for m in messages]
    return "".join(parts) + f"{BOT}assistant\n"
