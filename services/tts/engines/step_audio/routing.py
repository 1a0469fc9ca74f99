"""Which text, prompt voice and decoder a request uses (pure: no vLLM, no torch).

As the reference (Step-Audio tts.py ``__call__``): only the FIRST instruction tag counts; RAP or 哼唱 there is
music mode, which takes a built-in voice's ``{spk}RAP`` / ``{spk}哼唱`` prompt (here ``VoicePrompt.music``) and the
``CosyVoice-300M-25Hz-Music`` decoder. A cloned voice keeps its own prompt in music mode, and its SYS names no
speaker (the reference sets ``prompt_speaker = ''`` when cloning).
"""

from __future__ import annotations

import logging

from services.common.controls import Controls
from services.tts.engines.step_audio.prompt import PromptVoice
from services.tts.tags import compose, music_style, split_leading_tag
from services.tts.voices import VoicePrompt

log = logging.getLogger(__name__)

COMMON_DECODER = "CosyVoice-300M-25Hz"
MUSIC_DECODER = "CosyVoice-300M-25Hz-Music"
DECODER_FOLDERS = (COMMON_DECODER, MUSIC_DECODER)


def route(text: str, controls: Controls) -> tuple[str, str | None]:
    """(the text the LM reads: typed controls as tags + the text, the music style of its first tag).
    InvalidArgument for controls that contradict each other or the text's tags (``tags.compose``)."""
    composed = compose(text, controls)
    tag, _ = split_leading_tag(composed)
    return composed, music_style(tag)


def decoder_folder(style: str | None) -> str:
    return MUSIC_DECODER if style else COMMON_DECODER


def prompt_voice(voice: VoicePrompt, style: str | None) -> tuple[VoicePrompt, PromptVoice]:
    """(the registry entry whose prompt WAV conditions the decoder, the prompt fields for the LM)."""
    variant = voice
    if style is not None and voice.builtin:
        variant = voice.music.get(style, voice)
        if variant is voice:
            log.warning("voice has no %s variant; its speech prompt is used", style, extra={"voice": voice.voice_id})
    speaker = voice.voice_id if voice.builtin else ""
    return variant, PromptVoice(speaker, variant.prompt_text, tuple(variant.prompt_tokens))
