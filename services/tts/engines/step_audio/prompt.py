"""The Step-Audio-TTS-3B prompt as token ids (pure: no vLLM, no transformers).

The reference (Step-Audio ``tts.py`` ``tokenize``) encodes each piece ON ITS OWN with the LM tokenizer's ``encode``
(transformers' default, ``add_special_tokens=True``) and concatenates::

    [1]
    + [4] + enc("system\\n" + SYS)          + [3]
    + [4] + enc("human\\n")     + P          + [3]     P = the voice's prompt transcript
    + [4] + enc("assistant\\n") + prompt_code + [3]    the voice's prompt audio ids (65536+N)
    + [4] + enc("human\\n")     + T          + [3]     T = the text, instruction tags included
    + [4] + enc("assistant\\n")

where P and T are ``enc("\\n" + text)[len(enc("\\n")):]`` (whatever ``enc`` puts before the text: BOS, the
sentencepiece ``▁`` prefix, is cut with the encoding of ``"\\n"``). Unlike the chat prompt, the role pieces are
encoded as separate strings, so they carry whatever a lone ``encode`` adds (BOS, ``▁``): this module reproduces that
literally, so ``encode`` must be the tokenizer's plain ``encode`` (see ``reference_encoder``).

SYS (the reference's ``sys_prompt_dict``) depends on the music style of the first instruction tag and the voice:
RAP → the RAP prompt, 哼唱 → the humming prompt (the reference picks humming whenever "哼唱" occurs anywhere in a
music-mode text; reproduced), a built-in voice → the speaker prompt with ``[{voice_id}]``, a cloned voice or none →
the speaker-less prompt. With no voice at all (not a reference case: the reference always has one) the two prompt
turns are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

BOS_ID = 1  # <s>
EOT_ID = 3  # <|EOT|>: ends every turn; the model's eos, so generation stops on it
BOT_ID = 4  # <|BOT|>: starts every turn
AUDIO_BASE = 65536  # <audio_N> = 65536 + N
AUDIO_CODES = 5120  # N in 0..1023 is vq02, 1024..5119 is vq06
AUDIO_IDS = range(AUDIO_BASE, AUDIO_BASE + AUDIO_CODES)
OUTPUT_IDS = (*AUDIO_IDS, EOT_ID)  # everything the TTS LM may emit

# --- The reference's system prompts (Step-Audio tts.py, sys_prompt_dict; sha256 pinned in the tests) ---------------
SYS_PROMPT_RAP = "请参考对话历史里的音色，用RAP方式将文本内容大声说唱出来。"
SYS_PROMPT_HUMMING = "请参考对话历史里的音色，用哼唱的方式将文本内容大声唱出来。"
_TAG_LIST = (
    "作为一名卓越的声优演员，你的任务是根据文本中（）或()括号内标注的情感、语种或方言、音乐哼唱、语音调整等标签，"
    "以丰富细腻的情感和自然顺畅的语调来朗读文本。\n"
    "# 情感标签涵盖了多种情绪状态，包括但不限于：\n"
    '- "高兴1"\n- "高兴2"\n- "生气1"\n- "生气2"\n- "悲伤1"\n- "撒娇1"\n'
    "\n"
    "# 语种或方言标签包含多种语言或方言，包括但不限于：\n"
    '- "中文"\n- "英文"\n- "韩语"\n- "日语"\n- "四川话"\n- "粤语"\n- "广东话"\n'
    "\n"
    "# 音乐哼唱标签包含多种类型歌曲哼唱，包括但不限于：\n"
    '- "RAP"\n- "哼唱"\n'
    "\n"
    "# 语音调整标签，包括但不限于：\n"
    '- "慢速1"\n- "慢速2"\n- "快速1"\n- "快速2"\n'
    "\n"
)
_CLOSING = (
    "根据这些情感标签的指示，调整你的情感、语气、语调和哼唱节奏，以确保文本的情感和意义得到准确而生动的传达，"
    "如果没有()或（）括号，则根据文本语义内容自由演绎。"
)
SYS_PROMPT_WITHOUT_SPEAKER = _TAG_LIST + "请在朗读时，" + _CLOSING
SYS_PROMPT_WITH_SPEAKER = _TAG_LIST + "请在朗读时，使用[{}]的声音，" + _CLOSING  # str.format(speaker)

MUSIC_STYLES = ("rap", "humming")

TextEncoder = Callable[[str], Sequence[int]]


@dataclass(frozen=True)
class PromptVoice:
    """What the prompt needs of a voice. ``speaker``: the built-in speaker name written into SYS ("" for a cloned
    voice: the reference sets ``prompt_speaker = ''`` when cloning)."""

    speaker: str
    prompt_text: str
    prompt_ids: tuple[int, ...]  # 65536+N


def system_prompt(text: str, style: str | None, speaker: str) -> str:
    """The reference's SYS choice. ``style``: the music style of the text's first tag ("rap", "humming", None)."""
    if style is not None:
        if style not in MUSIC_STYLES:
            raise ValueError(f"unknown music style {style!r}")
        # tts.py: `if "哼唱" in text` (anywhere in the text), else RAP.
        return SYS_PROMPT_HUMMING if "哼唱" in text else SYS_PROMPT_RAP
    if speaker:
        return SYS_PROMPT_WITH_SPEAKER.format(speaker)
    return SYS_PROMPT_WITHOUT_SPEAKER


def after_newline(encode: TextEncoder) -> TextEncoder:
    """The reference's content encoder: ``enc("\\n" + text)[len(enc("\\n")):]``."""
    prefix = len(encode("\n"))

    def encode_content(text: str) -> list[int]:
        return list(encode("\n" + text))[prefix:]

    return encode_content


def check_audio_ids(ids: Sequence[int], where: str) -> None:
    for token in ids:
        if token not in AUDIO_IDS:
            raise ValueError(f"{where} holds {token}, not an audio id ({AUDIO_BASE}..{AUDIO_BASE + AUDIO_CODES - 1})")


def build_tts_prompt(encode: TextEncoder, text: str, voice: PromptVoice | None, style: str | None) -> list[int]:
    """The reference TTS prompt for ``text`` (tags included) in ``voice``. ``encode``: the tokenizer's plain
    ``encode`` as the reference calls it (``tokenizer.encode(s)``, special tokens added as it adds them)."""
    content = after_newline(encode)
    human, assistant = list(encode("human\n")), list(encode("assistant\n"))
    sys_text = system_prompt(text, style, voice.speaker if voice else "")
    ids = [BOS_ID, BOT_ID, *encode("system\n" + sys_text), EOT_ID]
    if voice is not None:
        check_audio_ids(voice.prompt_ids, "the voice's prompt tokens")
        ids += [BOT_ID, *human, *content(voice.prompt_text), EOT_ID]
        ids += [BOT_ID, *assistant, *voice.prompt_ids, EOT_ID]
    ids += [BOT_ID, *human, *content(text), EOT_ID]
    ids += [BOT_ID, *assistant]
    return ids


def audio_codes(output_ids: Sequence[int]) -> list[int]:
    """Generated ids → decoder codes (id − 65536), dropping the final ``<|EOT|>`` as the reference's ``[:-1]``.
    Any other non-audio id is dropped (the decoder refuses them; with ``allowed_token_ids`` there are none)."""
    return [token - AUDIO_BASE for token in output_ids if token in AUDIO_IDS]
