"""Validation of voice-cloning prompts (WAV + transcript + prompt tokens), shared by the TTS
service's registry and the gateway (which fails fast before asking the tokenizer for tokens)."""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile

from services.common.audio import DeclaredFormat, check_sample_rate, decode_pcm16, to_wav_bytes
from services.common.errors import InvalidArgument

# Prompt validation (cloned voices). The reference takes any prompt; these bounds keep prompts
# useful: Step-Audio's LM sees the prompt's tokens (41.67/s) in its 8192-token window, and the
# decoder conditions on the whole clip.
MIN_PROMPT_SECONDS = 3.0
MAX_PROMPT_SECONDS = 30.0
MIN_PROMPT_RATE_HZ = 16000  # the tokenizer works at 16 kHz and refuses to upsample
MAX_PROMPT_RATE_HZ = 48000
MIN_PROMPT_PEAK = 0.01  # -40 dBFS: below this the reference energy-norm would amplify noise 100x
MIN_PROMPT_RMS = 0.001  # -60 dBFS
MAX_TRANSCRIPT_CHARS = 500
MAX_DISPLAY_NAME_CHARS = 100
AUDIO_TOKEN_BASE = 65536
AUDIO_TOKEN_COUNT = 5120  # vq02 1024 + vq06 4096
# 2 vq02 + 3 vq06 ids every 120 ms: a 30 s prompt has 1250 (one group of slack)
MAX_PROMPT_TOKENS = round(MAX_PROMPT_SECONDS / 0.12) * 5 + 5
# ASCII only: the id names the prompt's file (a 64-character id of 4-byte UTF-8 letters would exceed a file name's
# 255 bytes), and Unicode ids that look the same can differ (NFC vs NFD). Used with fullmatch: "$" would accept "x\n".
VOICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_LANGUAGE_CODES = 16


def decode_prompt_wav(wav: bytes) -> tuple[np.ndarray, int]:
    """Decode and validate a cloning prompt: (mono float32 samples, sample rate).

    InvalidArgument, with the reason and the fix, for anything that would make a poor prompt."""
    if not wav:
        raise InvalidArgument("prompt audio is empty: send a WAV file of 3-30 s of clear speech")
    try:
        data, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise InvalidArgument(f"prompt audio is not a readable WAV/FLAC/OGG file ({error})") from None
    if rate < MIN_PROMPT_RATE_HZ:
        raise InvalidArgument(
            f"prompt audio is {rate} Hz; voice cloning needs at least {MIN_PROMPT_RATE_HZ} Hz: "
            "record or export at 16-48 kHz (upsampling does not help)"
        )
    if rate > MAX_PROMPT_RATE_HZ:
        raise InvalidArgument(f"prompt audio is {rate} Hz; the limit is {MAX_PROMPT_RATE_HZ} Hz: resample it")
    samples = data.mean(axis=1)
    duration = samples.size / rate
    if duration < MIN_PROMPT_SECONDS:
        raise InvalidArgument(
            f"prompt audio is {duration:.1f} s long; voice cloning needs {MIN_PROMPT_SECONDS:g}-"
            f"{MAX_PROMPT_SECONDS:g} s of speech: send a longer clip"
        )
    if duration > MAX_PROMPT_SECONDS:
        raise InvalidArgument(
            f"prompt audio is {duration:.1f} s long; the limit is {MAX_PROMPT_SECONDS:g} s: "
            "cut one clean sentence or two"
        )
    if not np.isfinite(samples).all():
        raise InvalidArgument("prompt audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(samples)))
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if peak < MIN_PROMPT_PEAK or rms < MIN_PROMPT_RMS:
        raise InvalidArgument(
            f"prompt audio is (nearly) silent (peak {20 * np.log10(max(peak, 1e-9)):.0f} dBFS, "
            f"RMS {20 * np.log10(max(rms, 1e-9)):.0f} dBFS): record the speaker closer or louder"
        )
    return samples.astype(np.float32, copy=False), int(rate)


def check_fields(
    voice_id: str,
    display_name: str,
    transcript: str,
    prompt_tokens: tuple[int, ...],
    language_codes: tuple[str, ...],
) -> None:
    if not VOICE_ID_PATTERN.fullmatch(voice_id or ""):
        raise InvalidArgument(
            f"voice_id {voice_id[:80]!r} is not valid: use 1-64 ASCII letters, digits, '_' or '-', starting "
            "with a letter or digit (e.g. 'yuqian' or 'alice-2')"
        )
    if len(display_name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidArgument(f"display_name is longer than {MAX_DISPLAY_NAME_CHARS} characters")
    if not transcript.strip():
        raise InvalidArgument("transcript is missing: send the exact words spoken in the prompt audio")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise InvalidArgument(
            f"transcript is {len(transcript)} characters; the limit is {MAX_TRANSCRIPT_CHARS}: "
            "use a shorter prompt clip"
        )
    if len(prompt_tokens) > MAX_PROMPT_TOKENS:
        raise InvalidArgument(
            f"{len(prompt_tokens)} prompt tokens is more than a {MAX_PROMPT_SECONDS:g} s prompt has "
            f"({MAX_PROMPT_TOKENS}): send the tokens of the prompt audio"
        )
    for token in prompt_tokens:
        if not AUDIO_TOKEN_BASE <= token < AUDIO_TOKEN_BASE + AUDIO_TOKEN_COUNT:
            raise InvalidArgument(
                f"prompt token {token} is not a Step-Audio audio token "
                f"({AUDIO_TOKEN_BASE}..{AUDIO_TOKEN_BASE + AUDIO_TOKEN_COUNT - 1})"
            )
    if len(language_codes) > MAX_LANGUAGE_CODES:
        raise InvalidArgument(f"{len(language_codes)} language codes is over the limit of {MAX_LANGUAGE_CODES}")
    for code in language_codes:
        if not re.fullmatch(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,7}", code):
            raise InvalidArgument(f"language code {code[:40]!r} is not a BCP-47 tag (e.g. 'zh', 'en-US')")


def prompt_wav_from(content: bytes, declared: DeclaredFormat) -> bytes:
    """Prompt audio as file bytes for :meth:`VoiceRegistry.register`: WAV/FLAC/OGG pass through
    (validated there); raw PCM16 is wrapped in a WAV header (its sample rate is required)."""
    if declared.encoding == "pcm16":
        if not declared.sample_rate_hz:
            raise InvalidArgument("PCM16 prompt audio needs format.sample_rate_hz (or send a WAV file)")
        check_sample_rate(declared.sample_rate_hz, "format.sample_rate_hz")
        return to_wav_bytes(decode_pcm16(content, declared.sample_rate_hz, declared.channels), declared.sample_rate_hz)
    return content


def check_registration(
    voice_id: str, display_name: str, wav: bytes, transcript: str, language_codes: tuple[str, ...] = ()
) -> None:
    """Everything :meth:`VoiceRegistry.register` checks except id collisions, for callers that
    want to fail fast (the gateway, before it asks the tokenizer for prompt tokens)."""
    check_fields(voice_id, display_name, transcript.strip(), (), tuple(language_codes))
    decode_prompt_wav(wav)
