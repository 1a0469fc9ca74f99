"""Step-Audio-TTS-3B speech decoder (``CosyVoice-300M-25Hz``): codes → 22.05 kHz audio.

No gRPC here; the TTS engine wraps ``StepAudioDecoder``. See docs/decoder.md.
"""

from services.tts.decoder.checkpoint import CheckpointMismatch
from services.tts.decoder.config import DecoderConfigError
from services.tts.decoder.decoder import (
    LLM_AUDIO_OFFSET,
    DecoderOptions,
    StepAudioDecoder,
    VoiceConditioning,
)

__all__ = [
    "LLM_AUDIO_OFFSET",
    "CheckpointMismatch",
    "DecoderConfigError",
    "DecoderOptions",
    "StepAudioDecoder",
    "VoiceConditioning",
]
