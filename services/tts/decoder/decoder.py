"""``StepAudioDecoder``: Step-Audio-TTS-3B's speech decoder (CosyVoice-300M-25Hz folder) as a library.

    decoder = StepAudioDecoder.load("…/Step-Audio-TTS-3B/CosyVoice-300M-25Hz")
    voice = decoder.prepare_voice(prompt_wav, 16000, prompt_codes)       # cacheable
    audio = decoder.decode(voice, codes)                                  # float32 @ 22050 Hz
    for chunk in decoder.decode_stream(voice, iter(codes)): ...          # same, in chunks

Codes are audio-token values in [0, vocab) (LLM id − 65536). Thread-safe for concurrent calls
(no per-call state lives on the object); torch's intra-op threads are shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.tts.decoder.audio import log_mel, resample, to_mono
from services.tts.decoder.checkpoint import load_strict, read_state_dict
from services.tts.decoder.config import DecoderConfig, DecoderConfigError, load_config
from services.tts.decoder.flow import FlowModel, mel_frames
from services.tts.decoder.hift import ExcitationState, HiftModel
from services.tts.decoder.noise import NoiseBank
from services.tts.decoder.speaker import SpeakerEncoder
from services.tts.decoder.streaming import MelStitcher, VocoderStream, as_numpy

LLM_AUDIO_OFFSET = 65536
FILES = ("cosyvoice.yaml", "flow.pt", "hift.pt", "campplus.onnx")
_PROMPT_STREAM, _TARGET_STREAM, _NSF_STREAM = 1, 2, 3


@dataclass(frozen=True)
class DecoderOptions:
    """Runtime knobs (not in the checkpoint). See docs/decoder.md for the streaming ones."""

    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    flow_dtype: str = "auto"  # auto: bf16 on CUDA (the reference), fp32 on CPU | bfloat16 | float32
    seed: int = 0  # flow noise, NSF phases and noise; same seed + same codes → same audio
    n_timesteps: int | None = None  # Euler steps (None: 10, as the reference)
    cfg_rate: float | None = None  # None: cosyvoice.yaml inference_cfg_rate (class default 0.7)
    first_chunk_tokens: int = 25  # tokens of the first streamed chunk (5 tokens = 120 ms)
    hop_tokens: int = 50  # tokens per later chunk
    context_tokens: int = 20  # already-emitted tokens re-encoded as left context of each chunk
    lookahead_tokens: int = 10  # tokens after a chunk's boundary it waits for (right context)
    mel_fade_frames: int = 12  # mel frames cross-faded around each chunk boundary (0: hard cut)
    vocoder_context_frames: int = 24  # mel frames re-vocoded before the first unplayed frame
    vocoder_lookahead_frames: int = 12  # mel frames held back for the vocoder's right context
    sample_fade: int = 256  # samples cross-faded between vocoder windows


@dataclass(frozen=True)
class VoiceConditioning:
    """Everything the decoder needs about a voice; compute once per prompt and reuse."""

    embedding: np.ndarray  # float32 [192], CAM++ x-vector of the 16 kHz prompt
    prompt_mel: np.ndarray  # float32 [M1, 80], log-mel of the 22.05 kHz prompt
    prompt_tokens: np.ndarray  # int64 [T1], codes in [0, vocab)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name in ("bfloat16", "bf16"):
        return torch.bfloat16
    if name in ("float32", "fp32"):
        return torch.float32
    raise DecoderConfigError(f"flow_dtype={name!r}: use bfloat16, float32 or auto")


def check_folder(folder: Path) -> None:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DecoderConfigError(f"{folder}: missing {', '.join(missing)}")


class StepAudioDecoder:
    def __init__(
        self,
        config: DecoderConfig,
        flow: FlowModel,
        hift: HiftModel,
        speaker: SpeakerEncoder,
        options: DecoderOptions,
    ) -> None:
        self.config, self.flow, self.hift, self.speaker, self.options = config, flow, hift, speaker, options
        self.device = next(flow.parameters()).device
        self._check_options()

    @classmethod
    def load(cls, folder: str | Path, options: DecoderOptions | None = None) -> StepAudioDecoder:
        """Load a decoder folder strictly: every missing file, then every missing/unexpected/misshapen
        tensor of flow.pt and of hift.pt, is reported in one ``DecoderConfigError``."""
        options = options or DecoderOptions()
        folder = Path(folder)
        check_folder(folder)
        config = load_config(folder / "cosyvoice.yaml")
        device = _device(options.device)
        flow, hift = FlowModel(config.flow), HiftModel(config.hift)
        errors = []
        for module, name in ((flow, "flow.pt"), (hift, "hift.pt")):
            try:
                load_strict(module, read_state_dict(folder / name), name)
            except DecoderConfigError as error:
                errors.append(str(error))
        if errors:
            raise DecoderConfigError(f"{folder}: " + " | ".join(errors))
        flow = flow.to(device=device, dtype=_dtype(options.flow_dtype, device)).eval()
        hift = hift.to(device=device, dtype=torch.float32).eval()
        return cls(config, flow, hift, SpeakerEncoder(folder / "campplus.onnx"), options)

    # --- properties ----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.hift.sampling_rate

    @property
    def vocab_size(self) -> int:
        return self.config.flow.vocab_size

    def frames_for(self, tokens: int) -> int:
        mel = self.config.mel
        return mel_frames(tokens, self.config.flow.input_frame_rate, mel.sampling_rate, mel.hop_size)

    def _check_options(self) -> None:
        o = self.options
        frames_per_token = self.frames_for(1000) / 1000
        half = o.mel_fade_frames // 2
        problems = []
        if o.first_chunk_tokens < 1 or o.hop_tokens < 1:
            problems.append("first_chunk_tokens and hop_tokens must be >= 1")
        if half and min(o.context_tokens, o.lookahead_tokens) * frames_per_token < half + 2:
            problems.append("context_tokens and lookahead_tokens must cover half the mel fade (+2 frames)")
        if min(o.first_chunk_tokens, o.hop_tokens) * frames_per_token < o.mel_fade_frames + 2:
            problems.append("chunks must be longer than the mel fade")
        if o.vocoder_lookahead_frames * self.config.hift.hop_length < o.sample_fade:
            problems.append("vocoder_lookahead_frames must cover sample_fade")
        if problems:
            raise DecoderConfigError("decoder options: " + "; ".join(problems))

    # --- voice ---------------------------------------------------------------------------------

    def check_codes(self, codes: Iterable[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(list(codes) if not isinstance(codes, np.ndarray) else codes, dtype=np.int64).reshape(-1)
        bad = array[(array < 0) | (array >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"audio codes must lie in [0, {self.vocab_size}) (LLM id - {LLM_AUDIO_OFFSET}); got {bad[:5].tolist()}"
            )
        return array

    def prepare_voice(self, wav: np.ndarray, sample_rate: int, prompt_tokens: Iterable[int]) -> VoiceConditioning:
        """Prompt audio (any rate, mono or [N, channels]) + its codes → conditioning."""
        mono = to_mono(wav)
        embedding = self.speaker.embed(resample(mono, sample_rate, 16000))
        prompt_mel = log_mel(resample(mono, sample_rate, self.config.mel.sampling_rate), self.config.mel)
        return VoiceConditioning(embedding, prompt_mel, self.check_codes(prompt_tokens))

    # --- decoding ------------------------------------------------------------------------------

    def _banks(self) -> tuple[NoiseBank, NoiseBank, NoiseBank]:
        seed, mels = self.options.seed, self.config.flow.output_size
        return (
            NoiseBank(seed, _PROMPT_STREAM, mels),
            NoiseBank(seed, _TARGET_STREAM, mels),
            NoiseBank(seed, _NSF_STREAM, self.config.hift.nb_harmonics + 1, block=8192),
        )

    def _flow(
        self, voice: VoiceConditioning, codes: np.ndarray, first_frame: int, frames: int, banks: tuple[NoiseBank, ...]
    ) -> np.ndarray:
        """Mel [80, frames] for ``codes`` placed at absolute target frames [first_frame, +frames)."""
        prompt_bank, target_bank = banks[0], banks[1]
        prompt_frames = voice.prompt_mel.shape[0]
        noise = torch.cat([prompt_bank.take(0, prompt_frames), target_bank.take(first_frame, first_frame + frames)], 1)
        mel = self.flow.inference(
            torch.from_numpy(codes)[None].to(self.device),
            torch.from_numpy(voice.prompt_tokens)[None].to(self.device),
            torch.from_numpy(voice.prompt_mel)[None].to(self.device),
            torch.from_numpy(voice.embedding)[None].to(self.device),
            frames,
            noise[None],
            n_timesteps=self.options.n_timesteps,
            cfg_rate=self.options.cfg_rate,
        )
        return as_numpy(mel[0])

    def _vocode(
        self, mel: np.ndarray, start_frame: int, phase: np.ndarray | None, phase_at: int, bank: NoiseBank
    ) -> tuple[np.ndarray, np.ndarray | None]:
        wav, phase_out = self.hift.vocode(
            torch.from_numpy(np.ascontiguousarray(mel))[None].to(self.device),
            bank,
            self.options.seed,
            ExcitationState(start_frame, phase),
            phase_at,
        )
        return as_numpy(wav), phase_out

    def decode_mel(self, voice: VoiceConditioning, codes: Iterable[int] | np.ndarray) -> np.ndarray:
        """Offline flow only: mel [80, frames_for(len(codes))]."""
        array = self.check_codes(codes)
        return self._flow(voice, array, 0, self.frames_for(array.size), self._banks())

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        """Offline HiFT: mel [80, M] → float32 [M·256] at 22050 Hz."""
        return self._vocode(mel, 0, None, 0, self._banks()[2])[0]

    def decode(self, voice: VoiceConditioning, codes: Iterable[int] | np.ndarray) -> np.ndarray:
        """The reference's offline token2wav: one flow call over all codes, one HiFT call."""
        array = self.check_codes(codes)
        frames = self.frames_for(array.size)
        if frames == 0:
            return np.zeros(0, dtype=np.float32)
        banks = self._banks()
        mel = self._flow(voice, array, 0, frames, banks)
        return self._vocode(mel, 0, None, 0, banks[2])[0]

    def decode_stream(self, voice: VoiceConditioning, codes: Iterable[int]) -> Iterator[np.ndarray]:
        """Codes in as they are generated, float32 PCM chunks at 22050 Hz out. Concatenated, the
        chunks have exactly the length of ``decode``'s output for the same codes."""
        o = self.options
        banks = self._banks()
        stitcher = MelStitcher(o.mel_fade_frames)
        vocoder = VocoderStream(
            lambda mel, start, phase, phase_at: self._vocode(mel, start, phase, phase_at, banks[2]),
            self.config.hift.hop_length,
            o.vocoder_context_frames,
            o.vocoder_lookahead_frames,
            o.sample_fade,
        )
        buffer: list[int] = []
        emitted, boundary = 0, o.first_chunk_tokens
        source = iter(codes)
        finished = False
        while not finished:
            try:
                buffer.extend(self.check_codes([next(source)]).tolist())
            except StopIteration:
                finished = True
            while (finished and emitted < len(buffer)) or (
                not finished and len(buffer) >= boundary + o.lookahead_tokens
            ):
                final = finished
                end = len(buffer) if final else boundary
                first = max(0, emitted - o.context_tokens)
                last = len(buffer) if final else end + o.lookahead_tokens
                f_first, f_last = self.frames_for(first), self.frames_for(last)
                if f_last > f_first:
                    mel = self._flow(
                        voice, np.asarray(buffer[first:last], dtype=np.int64), f_first, f_last - f_first, banks
                    )
                else:
                    mel = np.zeros((self.config.flow.output_size, 0), dtype=np.float32)
                final_mel = stitcher.push(mel, f_first, self.frames_for(end), final)
                yield from vocoder.push(final_mel, final)
                emitted, boundary = end, end + o.hop_tokens
