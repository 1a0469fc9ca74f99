"""The ``synthetic`` chat engine: a made-up reply streamed at a set pace, no model.

For benchmarks and fault tests of the serving stack (docs/synthetic.md). The reply is a function of the last user
message (its text and audio tokens): ``synthetic_reply_words`` words drawn from a small vocabulary — Chinese when
the message holds Chinese characters, else English — in sentences of 12 words with a comma after the 6th, so the
gateway's clause splitter cuts it as it would a model's. One word is one token. The first token comes after
``synthetic_first_token_seconds``, then one every 1 / ``synthetic_tokens_per_second`` seconds on a fixed schedule
(asyncio sleeps: any number of replies stream at once without a thread). Sampling parameters other than
``max_tokens`` are ignored. A conversation longer than ``CHAT_CONTEXT_TOKENS`` (words + Chinese characters + audio
tokens) is rejected as the model engines reject it.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

from services.chat.engine import ChatEngine, EngineInfo, Message, Sampling, Usage
from services.chat.settings import ChatSettings
from services.common.errors import InvalidArgument
from services.common.synthetic import check_health_switch, stable_seed

SENTENCE_WORDS = 12  # a typical spoken sentence
COMMA_AFTER = 6
_ENGLISH = (
    "audio", "stream", "answer", "every", "clause", "steady", "voice", "model", "token", "reply", "quickly",
    "server", "gateway", "measured", "listen", "simple", "careful", "window", "signal", "bright", "river",
    "morning", "number", "garden", "travel", "little", "question", "reason", "nothing", "always",
)  # fmt: skip
_CHINESE = (
    "今天", "天气", "我们", "一起", "测试", "服务", "每个", "请求", "都有", "回答", "声音", "清楚",
    "速度", "稳定", "时间", "问题", "朋友", "城市", "音乐", "学习", "工作", "简单", "安静", "明天",
)  # fmt: skip
_CJK = re.compile(r"[\u3400-\u9fff]")
_AUDIO_TOKEN = "<audio_"


def reply_tokens(message: Message, words: int) -> list[str]:
    """The deltas of the reply to ``message``: ``words`` tokens with their spacing and punctuation."""
    chinese = bool(_CJK.search(message.text))
    vocabulary = _CHINESE if chinese else _ENGLISH
    comma, stop, space = ("，", "。", "") if chinese else (",", ".", " ")
    chooser = random.Random(stable_seed(message.text, message.audio_tokens))
    tokens = []
    for index in range(words):
        position = index % SENTENCE_WORDS
        word = chooser.choice(vocabulary)
        if position == 0 and not chinese:
            word = word.capitalize()
        if position == SENTENCE_WORDS - 1 or index == words - 1:
            word += stop
        elif position == COMMA_AFTER - 1:
            word += comma
        tokens.append(word if index == 0 else space + word)
    return tokens


def prompt_tokens(messages: list[Message]) -> int:
    """A model-free token count: words, Chinese characters and audio tokens."""
    return sum(
        len(_CJK.sub(" ", m.text).split()) + len(_CJK.findall(m.text)) + m.audio_tokens.count(_AUDIO_TOKEN)
        for m in messages
    )


class SyntheticChatEngine(ChatEngine):
    def __init__(self, settings: ChatSettings) -> None:
        self._settings = settings
        self.active_generations = 0  # replies being streamed now (tests: closing a stream ends its work)
        self._info = EngineInfo(
            name="synthetic",
            model="synthetic",
            supports_audio_tokens=True,
            max_context_tokens=settings.context_tokens,
            default_sampling=settings.default_sampling(),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def generate(self, messages: list[Message], sampling: Sampling, usage: Usage) -> AsyncIterator[str]:
        usage.prompt_tokens = prompt_tokens(messages)
        budget = self._settings.context_tokens - usage.prompt_tokens
        if budget < 1:
            raise InvalidArgument(
                f"the conversation is {usage.prompt_tokens} tokens; the context holds {self._settings.context_tokens}: "
                "shorten it or start a new session"
            )
        last_user = next((m for m in reversed(messages) if m.role == "user"), messages[-1])
        words = min(self._settings.synthetic_reply_words, sampling.max_tokens, budget)
        finish_reason = "stop" if words == self._settings.synthetic_reply_words else "length"
        return self._stream(reply_tokens(last_user, words), finish_reason, usage)

    async def _stream(self, tokens: list[str], finish_reason: str, usage: Usage) -> AsyncIterator[str]:
        self.active_generations += 1
        try:
            loop = asyncio.get_running_loop()
            first = loop.time() + self._settings.synthetic_first_token_seconds
            interval = 1.0 / self._settings.synthetic_tokens_per_second
            for index, token in enumerate(tokens):
                # A fixed schedule: a slow reader delays tokens, but the pace does not drift.
                await asyncio.sleep(max(0.0, first + index * interval - loop.time()))
                usage.completion_tokens = index + 1
                yield token
            usage.finish_reason = finish_reason
        finally:
            self.active_generations -= 1

    async def check_health(self) -> None:
        await check_health_switch(self._settings.synthetic_fail_health_file, "chat")
