"""The ``step-audio`` TTS engine: Step-Audio-TTS-3B on vLLM's AsyncLLM, audio codes streamed into the decoder.

Per request:

1. Text: the typed controls become tags in front of the text (``services.tts.tags.compose``: emotion, language,
   RAP/哼唱); the FIRST tag decides music mode (``split_leading_tag`` + ``music_style``), as in the reference.
2. Voice: the registry's prompt (built-in or cloned). Music mode with a built-in voice takes its ``rap``/``humming``
   variant (the reference's ``{spk}RAP``/``{spk}哼唱`` entries) and the ``-Music`` decoder.
3. Prompt: ``prompt.build_tts_prompt`` (the reference's ids, token for token), sent as ``TokensPrompt``.
4. Generation: temperature 0.7, top_k 50, length ≤ 8192 ids prompt included (reference), output restricted to the
   audio ids 65536..70655 and ``<|EOT|>`` (``allowed_token_ids``), the repetition-aware rule as a registered
   logits processor enabled per request.
5. Audio: the ids stream (asyncio side) into a thread-safe feed that the decoder's ``decode_stream`` reads on a
   decode thread (``iterate_in_thread``); 22.05 kHz PCM chunks come back as they are made. Speed is a streaming
   tempo change (``postprocess.SpeedChanger``) on the same decode thread; volume is applied by the servicer.
   Per-request accounting (the repetition check over all ids) runs on an executor thread after the stream ends:
   nothing but hand-offs happens on the event loop.

Closing the returned iterator (client cancel, deadline, shutdown) cancels the generation task, which aborts the
vLLM request (its KV cache is freed at once), and stops the decode thread at its next code.

Decoder conditioning (CAM++ embedding, prompt mel, prompt codes) is computed once per voice variant and cached (an
LRU of ``TTS_STEP_AUDIO_CONDITIONING_CACHE_SIZE`` variants); as in the reference it comes from the common decoder's
front end for both decoders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
from prometheus_client import Counter, Gauge
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from services.common.concurrency import iterate_in_thread, run_blocking
from services.common.controls import Controls
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.vllm import runtime
from services.common.vllm.checkpoint import CheckpointError, Step1Options, Step1Plan, plan_step1
from services.common.vllm.runtime import EngineOptions
from services.common.watchdog import StallWatchdog
from services.tts.decoder import DecoderOptions, StepAudioDecoder, VoiceConditioning
from services.tts.engine import PcmChunk, TtsEngine, VoiceInfo
from services.tts.engines.step_audio.conditioning import LruCache
from services.tts.engines.step_audio.logits import EXTRA_ARG, PROCESSOR
from services.tts.engines.step_audio.prompt import (
    AUDIO_BASE,
    AUDIO_IDS,
    BOT_ID,
    EOT_ID,
    OUTPUT_IDS,
    audio_codes,
    build_tts_prompt,
)
from services.tts.engines.step_audio.repetition import violations
from services.tts.engines.step_audio.routing import COMMON_DECODER, MUSIC_DECODER, prompt_voice, route
from services.tts.postprocess import SpeedChanger
from services.tts.settings import TtsSettings
from services.tts.voices import VoicePrompt, VoiceRegistry

log = logging.getLogger(__name__)

NAME = "step-audio"
DECODER_FOLDERS = {None: COMMON_DECODER, "music": MUSIC_DECODER}
SUPPORTED_CONTROLS = ("emotion", "language", "style", "speed", "volume", "pitch")
PREFIX = "TTS_STEP_AUDIO_"

GENERATED = Counter("stepaudio_tts_step_audio_generated_ids", "Ids the step-audio LM generated (final EOT included).")
NON_AUDIO = Counter(
    "stepaudio_tts_step_audio_non_audio_ids",
    "Generated ids outside the audio ids 65536..70655, the final <|EOT|> excepted (0 with allowed_token_ids).",
)
REPETITIONS = Counter(
    "stepaudio_tts_step_audio_repetition_violations",
    "Generated ids the reference repetition rule forbids at their step (0 while the rule is on).",
)
UNFINISHED = Gauge("stepaudio_tts_step_audio_vllm_requests", "Requests the step-audio engine's vLLM front end holds.")


class _Stopped(Exception):
    """The consumer went away: the decode thread stops here."""


class CodeFeed:
    """Audio codes handed from the event loop (vLLM outputs) to a decode thread, as a blocking iterator."""

    _END = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def put(self, codes: list[int]) -> None:
        if codes:
            self._queue.put(codes)

    def finish(self) -> None:
        self._queue.put(self._END)

    def fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def stop(self) -> None:
        self._stopped.set()

    def __iter__(self) -> Iterator[int]:
        while True:
            if self._stopped.is_set():
                raise _Stopped
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item  # type: ignore[misc]


def _decode(
    decoder: StepAudioDecoder, conditioning: VoiceConditioning, feed: CodeFeed, speed: float
) -> Iterator[np.ndarray]:
    """PCM of the codes in ``feed``, at ``speed`` (runs on a decode thread: WSOLA is CPU work too)."""
    chunks = decoder.decode_stream(conditioning, iter(feed))
    if speed == 1.0:
        return chunks
    return _change_tempo(chunks, SpeedChanger(decoder.sample_rate, speed))


def _change_tempo(chunks: Iterator[np.ndarray], changer: SpeedChanger) -> Iterator[np.ndarray]:
    try:
        for pcm in chunks:
            yield changer.push(pcm)
        yield changer.finish()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stops the decoder's generator now, on this thread


def step1_options(settings: TtsSettings) -> Step1Options:
    return Step1Options(
        models_dir=settings.step_audio_models_dir,
        model=settings.step_audio_model,
        tensor_parallel_size=settings.step_audio_tensor_parallel_size,
        pipeline_parallel_size=settings.step_audio_pipeline_parallel_size,
        distributed_executor_backend=settings.step_audio_distributed_executor_backend,
        max_model_len=settings.step_audio_max_model_len,
        prefix=PREFIX,
        models_dir_setting=f"{PREFIX}MODELS_DIR",
        model_setting=f"{PREFIX}MODEL",
    )


def engine_options(settings: TtsSettings) -> EngineOptions:
    return EngineOptions(
        served_model_name=settings.step_audio_model,
        dtype=settings.step_audio_dtype,
        tensor_parallel_size=settings.step_audio_tensor_parallel_size,
        pipeline_parallel_size=settings.step_audio_pipeline_parallel_size,
        distributed_executor_backend=settings.step_audio_distributed_executor_backend,
        gpu_memory_utilization=settings.step_audio_gpu_memory_utilization,
        max_num_seqs=settings.step_audio_max_num_seqs,
        enforce_eager=settings.step_audio_enforce_eager,
        attention_backend=settings.step_audio_attention_backend,
        logits_processors=(PROCESSOR,),
    )


def _check_tokenizer(tokenizer: object) -> None:
    expected = {"<|BOT|>": BOT_ID, "<|EOT|>": EOT_ID, "<audio_0>": AUDIO_BASE, "<audio_5119>": AUDIO_BASE + 5119}
    found = {piece: tokenizer.convert_tokens_to_ids(piece) for piece in expected}  # type: ignore[attr-defined]
    if found != expected:
        raise SystemExit(f"step-audio tts engine: the tokenizer maps special pieces to {found}, expected {expected}")


class StepAudioTtsEngine(TtsEngine):
    name = NAME

    def __init__(
        self,
        llm: AsyncLLM,
        plan: Step1Plan,
        settings: TtsSettings,
        registry: VoiceRegistry,
        decoders: dict[str | None, StepAudioDecoder],
    ) -> None:
        self._llm = llm
        self._settings = settings
        self._registry = registry
        self._decoders = decoders
        self._max_length = min(settings.step_audio_max_length, plan.max_model_len)
        tokenizer = llm.get_tokenizer()
        self._encode = lambda text: tokenizer.encode(text)  # as the reference calls it (special tokens added)
        self._conditioning: LruCache[tuple[str, str, tuple[int, ...]], VoiceConditioning] = LruCache(
            settings.step_audio_conditioning_cache_size
        )
        self._decode_pool = ThreadPoolExecutor(settings.step_audio_decode_threads, thread_name_prefix="step-audio")
        self._in_flight = 0
        self._watchdog = StallWatchdog()
        UNFINISHED.set_function(llm.output_processor.get_num_unfinished_requests)

    @classmethod
    def load(cls, settings: TtsSettings) -> StepAudioTtsEngine:
        try:
            plan = plan_step1(step1_options(settings))
        except CheckpointError as error:
            raise SystemExit(f"step-audio tts engine: {error}") from None
        folders = {style: plan.path / name for style, name in DECODER_FOLDERS.items()}
        missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
        if missing:
            raise SystemExit(f"step-audio tts engine: decoder folder(s) missing: {', '.join(missing)}")
        registry = VoiceRegistry.open(
            Path(settings.voices_dir) if settings.voices_dir else None,
            Path(settings.registry_dir),
            max_voices=settings.max_cloned_voices,
            max_bytes=settings.max_cloned_voice_bytes,
        )
        if not registry.list():
            raise SystemExit(
                f"step-audio tts engine: no voices (TTS_VOICES_DIR={settings.voices_dir!r} has none, nor "
                f"TTS_REGISTRY_DIR={settings.registry_dir!r}): build them with `python -m tools.build_voices`"
            )
        options = DecoderOptions(
            device=settings.step_audio_decoder_device,
            flow_dtype=settings.step_audio_decoder_flow_dtype,
            seed=settings.step_audio_decoder_seed,
        )
        decoders = {style: StepAudioDecoder.load(folder, options) for style, folder in folders.items()}
        llm = runtime.start_engine(engine_options(settings), plan, "tts")
        try:
            _check_tokenizer(llm.get_tokenizer())
            engine = cls(llm, plan, settings, registry, decoders)
        except BaseException:
            runtime.shutdown(llm)
            raise
        log.info(
            "step-audio engine ready",
            extra={"path": str(plan.path), "max_length": engine._max_length, "voices": len(registry.list())},
        )
        return engine

    # --- voices ---------------------------------------------------------------------------------------------------

    def _info(self, voice: VoicePrompt) -> VoiceInfo:
        return VoiceInfo(
            voice_id=voice.voice_id,
            display_name=voice.display_name,
            language_codes=voice.language_codes,
            native_sample_rate_hz=self._decoders[None].sample_rate,
            engine=NAME,
            supported_controls=SUPPORTED_CONTROLS,
            cloned=not voice.builtin,
        )

    def voices(self) -> list[VoiceInfo]:
        return [self._info(voice) for voice in self._registry.list()]

    @property
    def default_voice_id(self) -> str:
        ids = [voice.voice_id for voice in self._registry.list()]
        return self._settings.step_audio_default_voice if self._settings.step_audio_default_voice in ids else ids[0]

    async def register_voice(
        self,
        voice_id: str,
        display_name: str,
        wav: bytes,
        transcript: str,
        prompt_tokens: tuple[int, ...],
        language_codes: tuple[str, ...],
    ) -> VoiceInfo:
        if not prompt_tokens:
            raise InvalidArgument(
                "the step-audio engine needs the prompt's Step-Audio audio tokens (prompt_tokens) to clone a voice: "
                "tokenize the recording with the step-audio tokenizer"
            )
        voice = await run_blocking(
            self._registry.register, voice_id, display_name, wav, transcript, tuple(prompt_tokens),
            tuple(language_codes),
        )  # fmt: skip
        return self._info(voice)

    async def delete_voice(self, voice_id: str) -> None:
        await run_blocking(self._registry.delete, voice_id)
        self._conditioning.discard(lambda key: key[0] == voice_id)

    def conditioning(self, variant: VoicePrompt) -> VoiceConditioning:
        """Decoder conditioning of a voice variant, cached (blocking: call on a thread)."""
        key = (variant.voice_id, str(variant.prompt_wav), tuple(variant.prompt_tokens))
        return self._conditioning.get_or_compute(key, lambda: self._prepare_voice(variant))

    def _prepare_voice(self, variant: VoicePrompt) -> VoiceConditioning:
        wav, rate = soundfile.read(variant.prompt_wav, dtype="float32", always_2d=True)
        codes = [token - AUDIO_BASE for token in variant.prompt_tokens]
        return self._decoders[None].prepare_voice(wav, rate, codes)

    # --- synthesis ------------------------------------------------------------------------------------------------

    def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        composed, style = route(text, controls)
        entry = self._registry.get(voice.voice_id)
        variant, fields = prompt_voice(entry, style)
        prompt = build_tts_prompt(self._encode, composed, fields, style)
        budget = self._max_length - len(prompt)
        if budget < 1:
            raise InvalidArgument(
                f"the TTS prompt is {len(prompt)} tokens (voice prompt + text); the limit is {self._max_length}: "
                "send a shorter text"
            )
        limit = self._settings.step_audio_max_num_seqs + self._settings.step_audio_decode_threads
        if self._in_flight >= limit:
            raise ResourceExhausted(f"the step-audio engine has {self._in_flight} syntheses in hand; retry later")
        params = SamplingParams(
            n=1,
            temperature=self._settings.step_audio_temperature,
            top_k=self._settings.step_audio_top_k,
            top_p=1.0,
            max_tokens=budget,
            stop_token_ids=[EOT_ID],
            allowed_token_ids=list(OUTPUT_IDS),
            extra_args={EXTRA_ARG: True} if self._settings.step_audio_repetition_rule else None,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )
        decoder = self._decoders["music" if style else None]
        return self._stream(prompt, params, decoder, variant, controls.speed, style)

    async def _generate(self, prompt: list[int], params: SamplingParams, feed: CodeFeed, stats: dict) -> None:
        """Runs as a task: vLLM outputs → codes into ``feed``. Cancelling the task aborts the vLLM request."""
        generated: list[int] = stats["ids"]
        try:
            async for output in runtime.stream_request(
                self._llm, prompt, params, f"tts-{uuid.uuid4().hex}", self._watchdog
            ):
                new = list(output.outputs[0].token_ids)
                if new and not generated:
                    stats["first_id_at"] = time.monotonic()
                generated.extend(new)
                feed.put(audio_codes(new))
            feed.finish()
        except asyncio.CancelledError:
            feed.stop()
            raise
        except Exception as error:  # reaches the consumer through the feed
            feed.fail(error)

    async def _stream(
        self,
        prompt: list[int],
        params: SamplingParams,
        decoder: StepAudioDecoder,
        variant: VoicePrompt,
        speed: float,
        style: str | None,
    ) -> AsyncIterator[PcmChunk]:
        self._in_flight += 1
        started = time.monotonic()
        stats: dict = {"ids": []}
        feed = CodeFeed()
        task: asyncio.Task | None = None
        samples = 0
        first_chunk_at = None
        try:
            conditioning = await run_blocking(self.conditioning, variant, executor=self._decode_pool)
            task = asyncio.create_task(self._generate(prompt, params, feed, stats))
            chunks = iterate_in_thread(lambda: _decode(decoder, conditioning, feed, speed), self._decode_pool)
            try:
                async for pcm in chunks:
                    if len(pcm):
                        first_chunk_at = first_chunk_at or time.monotonic()
                        samples += len(pcm)
                        yield PcmChunk(np.asarray(pcm, dtype=np.float32), decoder.sample_rate)
            finally:
                await chunks.aclose()
        finally:
            self._in_flight -= 1
            feed.stop()
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The repetition count walks every generated id: off the event loop, and nothing waits for it.
            asyncio.get_running_loop().run_in_executor(
                None,
                self._account,
                prompt, stats, time.monotonic() - started,
                first_chunk_at - started if first_chunk_at else None, samples, decoder.sample_rate, style,
            )  # fmt: skip

    def _account(
        self,
        prompt: list[int],
        stats: dict,
        elapsed: float,
        first_chunk_seconds: float | None,
        samples: int,
        rate: int,
        style: str | None,
    ) -> None:
        ids: list[int] = stats["ids"]
        body = ids[:-1] if ids and ids[-1] == EOT_ID else ids
        non_audio = sum(1 for token in body if token not in AUDIO_IDS)
        repeated = violations(prompt, ids)
        GENERATED.inc(len(ids))
        NON_AUDIO.inc(non_audio)
        REPETITIONS.inc(repeated)
        log.info(
            "step-audio synthesis",
            extra={
                "prompt_ids": len(prompt),
                "generated_ids": len(ids),
                "non_audio_ids": non_audio,
                "repetition_violations": repeated,
                "ended_with_eot": bool(ids) and ids[-1] == EOT_ID,
                "music": style or "",
                "audio_seconds": round(samples / rate, 3),
                "seconds": round(elapsed, 3),
                "first_chunk_seconds": round(first_chunk_seconds, 3) if first_chunk_seconds is not None else None,
                "rtf": round(elapsed / (samples / rate), 3) if samples else None,
            },
        )

    async def check_health(self) -> None:
        runtime.check_alive(self._llm, self._watchdog, self._settings.engine_stall_seconds, "tts")

    async def close(self) -> None:
        runtime.shutdown(self._llm)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
