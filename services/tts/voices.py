"""Voice registry: built-in voices (a read-only voices directory) and cloned voices (a registry
directory written crash-safely).

Built-in voices directory (written by ``python -m tools.build_voices``)::

    voices/manifest.json   {"version": 1, "voices": {"Tingting": {<entry>, "music": {"rap": {<entry>},
                                                                             "humming": {<entry>}}}}}
    voices/<file>.wav      prompt WAVs named by the entries

where ``<entry>`` is ``{"display_name", "language_codes", "prompt_text", "wav", "prompt_tokens"}``
(``wav`` relative to the directory).

Registry directory (cloned voices)::

    registry/index.json          {"version": 1, "voices": {"<id>": <entry>}}  — the only source of truth
    registry/wavs/<id>.<nonce>.wav

Registration writes the WAV under a fresh unique name (temp file, fsync, rename), then replaces
``index.json`` (temp file, fsync, rename, directory fsync). A crash before the index rename leaves an
unreferenced WAV, which the next ``open`` deletes; a crash after it leaves a complete voice. Deleting
replaces the index first and unlinks the WAV after. Mutations hold an exclusive ``flock`` on
``registry/.lock`` so two processes cannot interleave index updates.

Cloned voices are bounded by count and by the bytes of their stored prompt WAVs (``max_voices``,
``max_bytes``): a registration past either is refused with ResourceExhausted.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from services.common.atomic import TEMP_SUFFIX, fsync_directory, write_atomically
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from services.common.voice_prompts import (  # noqa: F401 - re-exported for the registry's users
    AUDIO_TOKEN_BASE,
    check_fields,
    check_registration,
    decode_prompt_wav,
    prompt_wav_from,
)

log = logging.getLogger(__name__)

INDEX_VERSION = 1
MUSIC_STYLES = ("rap", "humming")
MiB = 1024 * 1024
DEFAULT_MAX_VOICES = 100
DEFAULT_MAX_BYTES = 256 * MiB


@dataclass(frozen=True)
class VoicePrompt:
    voice_id: str  # e.g. "Tingting", or a cloned voice's id
    display_name: str
    language_codes: tuple[str, ...]
    prompt_text: str  # transcript of the prompt WAV (reference: speakers_info.json text)
    prompt_wav: Path  # the prompt WAV on disk (any rate; the decoder resamples)
    # Step-Audio interleaved ids 65536+N of the prompt WAV (trim + energy-norm); () for engines
    # that need none.
    prompt_tokens: tuple[int, ...]
    builtin: bool
    # Optional style variants: keys "rap", "humming" (reference {spk}RAP / {spk}哼唱 entries).
    music: dict[str, VoicePrompt] = field(default_factory=dict, hash=False)


def _prompt_from_entry(voice_id: str, entry: dict, directory: Path, builtin: bool) -> VoicePrompt:
    music = {
        style: _prompt_from_entry(voice_id, variant, directory, builtin)
        for style, variant in (entry.get("music") or {}).items()
    }
    unknown = set(music) - set(MUSIC_STYLES)
    if unknown:
        raise ValueError(f"voice {voice_id}: unknown music styles {sorted(unknown)}")
    return VoicePrompt(
        voice_id=voice_id,
        display_name=entry.get("display_name") or voice_id,
        language_codes=tuple(entry.get("language_codes") or ()),
        prompt_text=entry["prompt_text"],
        prompt_wav=directory / entry["wav"],
        prompt_tokens=tuple(int(token) for token in entry.get("prompt_tokens") or ()),
        builtin=builtin,
        music=music,
    )


def load_builtin(voices_dir: Path) -> dict[str, VoicePrompt]:
    """Built-in voices of a voices directory (``manifest.json``); checks every WAV exists."""
    manifest = json.loads((voices_dir / "manifest.json").read_text(encoding="utf-8"))
    voices = {}
    for voice_id, entry in manifest["voices"].items():
        prompt = _prompt_from_entry(voice_id, entry, voices_dir, builtin=True)
        for each in (prompt, *prompt.music.values()):
            if not each.prompt_wav.is_file():
                raise FileNotFoundError(f"voice {voice_id}: prompt WAV {each.prompt_wav} is missing")
        voices[voice_id] = prompt
    return voices


class VoiceRegistry:
    """Built-in voices plus cloned voices. Thread-safe; mutations are atomic and crash-safe."""

    def __init__(
        self,
        builtin: dict[str, VoicePrompt],
        registry_dir: Path,
        max_voices: int = DEFAULT_MAX_VOICES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._builtin = builtin
        self._max_voices = max_voices
        self._max_bytes = max_bytes
        self._dir = registry_dir
        self._wavs = registry_dir / "wavs"
        self._index_path = registry_dir / "index.json"
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        self._cloned: dict[str, VoicePrompt] = {}

    @classmethod
    def open(
        cls,
        builtin_dir: Path | None,
        registry_dir: Path,
        max_voices: int = DEFAULT_MAX_VOICES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> VoiceRegistry:
        """Load built-in voices (if ``builtin_dir``) and the registry (created if missing). Sweeps
        what an interrupted registration or deletion left behind. ``max_voices`` and ``max_bytes``
        bound the cloned voices (a registry already over them keeps its voices but takes no more)."""
        builtin = load_builtin(Path(builtin_dir)) if builtin_dir else {}
        registry = cls(builtin, Path(registry_dir), max_voices, max_bytes)
        registry._dir.mkdir(parents=True, exist_ok=True)
        registry._wavs.mkdir(exist_ok=True)
        with registry._exclusive():
            registry._load_index()
            registry._sweep()
        return registry

    # -- reading -------------------------------------------------------------------------------

    def get(self, voice_id: str) -> VoicePrompt:
        with self._lock:
            voice = self._builtin.get(voice_id) or self._cloned.get(voice_id)
        if voice is None:
            available = ", ".join(v.voice_id for v in self.list()) or "none"
            raise NotFound(f"unknown voice {voice_id!r}; available voices: {available}")
        return voice

    def list(self) -> list[VoicePrompt]:
        """Built-in voices first (manifest order), then cloned voices by id."""
        with self._lock:
            return [*self._builtin.values(), *(self._cloned[key] for key in sorted(self._cloned))]

    # -- writing -------------------------------------------------------------------------------

    def register(
        self,
        voice_id: str,
        display_name: str,
        wav: bytes,
        transcript: str,
        prompt_tokens: tuple[int, ...],
        language_codes: tuple[str, ...],
    ) -> VoicePrompt:
        """Validate and store a cloned voice. InvalidArgument for a bad id, prompt or transcript;
        AlreadyExists when the id (case-insensitively) is taken by any voice; ResourceExhausted when
        the cloned voices are at their count or byte bound."""
        prompt_tokens = tuple(int(token) for token in prompt_tokens)
        language_codes = tuple(language_codes)
        transcript = transcript.strip()
        display_name = display_name.strip() or voice_id
        check_fields(voice_id, display_name, transcript, prompt_tokens, language_codes)
        samples, rate = decode_prompt_wav(wav)
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
        with self._lock, self._exclusive():
            self._load_index()  # another process may have changed it
            self._check_free(voice_id)
            self._check_room(len(buffer.getvalue()))
            wav_name = f"{voice_id}.{uuid.uuid4().hex[:12]}.wav"
            write_atomically(self._wavs / wav_name, buffer.getvalue())
            entry = {
                "display_name": display_name,
                "language_codes": list(language_codes),
                "prompt_text": transcript,
                "wav": f"wavs/{wav_name}",
                "prompt_tokens": list(prompt_tokens),
                "sample_rate_hz": rate,
                "created_unix": round(time.time(), 3),
            }
            entries = {**self._entries, voice_id: entry}
            self._write_index(entries)
            self._set(entries)
            log.info("registered voice %s (%.1f s at %d Hz)", voice_id, samples.size / rate, rate)
            return self._cloned[voice_id]

    def delete(self, voice_id: str) -> None:
        """Remove a cloned voice. FailedPrecondition for a built-in voice, NotFound if unknown."""
        if voice_id in self._builtin:
            raise FailedPrecondition(f"voice {voice_id!r} is built in and cannot be deleted")
        with self._lock, self._exclusive():
            self._load_index()
            entry = self._entries.get(voice_id)
            if entry is None:
                raise NotFound(
                    f"unknown cloned voice {voice_id!r}; cloned voices: {', '.join(self._entries) or 'none'}"
                )
            entries = {key: value for key, value in self._entries.items() if key != voice_id}
            self._write_index(entries)
            self._set(entries)
            try:
                (self._dir / entry["wav"]).unlink()
            except FileNotFoundError:
                pass
            fsync_directory(self._wavs)
            log.info("deleted voice %s", voice_id)

    # -- internals -----------------------------------------------------------------------------

    def _check_free(self, voice_id: str) -> None:
        taken = {key.casefold(): key for key in (*self._builtin, *self._entries)}
        existing = taken.get(voice_id.casefold())
        if existing is not None:
            kind = "a built-in voice" if existing in self._builtin else "a cloned voice"
            raise AlreadyExists(
                f"voice id {voice_id!r} is taken by {kind} ({existing!r}): pick another id "
                "or delete the cloned voice first"
            )

    def _check_room(self, wav_bytes: int) -> None:
        count = len(self._entries)
        if count >= self._max_voices:
            raise ResourceExhausted(
                f"{count} cloned voices are registered, the limit (TTS_MAX_CLONED_VOICES={self._max_voices}): "
                "delete unused cloned voices (DeleteVoice) first"
            )
        used = self._stored_bytes()
        if used + wav_bytes > self._max_bytes:
            raise ResourceExhausted(
                f"cloned voices hold {used / MiB:.1f} MiB of prompt audio and this prompt needs {wav_bytes / MiB:.1f} "
                f"MiB more; the limit is {self._max_bytes / MiB:.1f} MiB (TTS_MAX_CLONED_VOICE_BYTES): delete unused "
                "cloned voices (DeleteVoice) first, or send a shorter prompt"
            )

    def _stored_bytes(self) -> int:
        """Bytes of the cloned voices' prompt WAVs on disk."""
        total = 0
        for entry in self._entries.values():
            try:
                total += (self._dir / entry["wav"]).stat().st_size
            except FileNotFoundError:
                pass
        return total

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with open(self._dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_index(self) -> None:
        try:
            index = json.loads(self._index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            index = {"version": INDEX_VERSION, "voices": {}}
        if index.get("version") != INDEX_VERSION:
            raise RuntimeError(f"{self._index_path}: unsupported registry version {index.get('version')}")
        entries = {}
        for voice_id, entry in index["voices"].items():
            if not (self._dir / entry["wav"]).is_file():
                # Cannot happen with this writer; keep serving the rest and say so.
                log.error("voice %s: prompt WAV %s is missing; voice skipped", voice_id, entry["wav"])
                continue
            entries[voice_id] = entry
        self._set(entries)

    def _set(self, entries: dict[str, dict]) -> None:
        self._entries = entries
        self._cloned = {
            voice_id: _prompt_from_entry(voice_id, entry, self._dir, builtin=False)
            for voice_id, entry in entries.items()
        }

    def _write_index(self, entries: dict[str, dict]) -> None:
        payload = json.dumps({"version": INDEX_VERSION, "voices": entries}, ensure_ascii=False, indent=1)
        write_atomically(self._index_path, payload)

    def _sweep(self) -> None:
        """Delete WAVs no index entry names and temporaries of interrupted writes."""
        referenced = {Path(entry["wav"]).name for entry in self._entries.values()}
        for directory in (self._dir, self._wavs):
            for path in directory.iterdir():
                stale_temp = path.name.endswith(TEMP_SUFFIX)
                orphan = directory == self._wavs and path.suffix == ".wav" and path.name not in referenced
                if stale_temp or orphan:
                    log.info("removing leftover %s", path)
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
        fsync_directory(self._wavs)


__all__ = [
    "AlreadyExists",
    "VoicePrompt",
    "VoiceRegistry",
    "check_registration",
    "decode_prompt_wav",
    "load_builtin",
    "prompt_wav_from",
]
