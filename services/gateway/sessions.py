"""Conversation sessions, one JSON file each, written atomically so a crash never loses or
corrupts a stored turn. User audio is stored as its transcript (Step-Audio's context
compression); only text is kept.

A session's file time is its last use (a stored turn or a read); with a TTL, a session unused for longer is
deleted: when it is next asked for, and by a periodic sweep (``sweep_forever``, run by the composition root).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.atomic import TEMP_SUFFIX, write_atomically
from services.common.concurrency import run_blocking
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")
_SUFFIX = ".json"
_TEMP_MAX_AGE_SECONDS = 3600.0  # a write's temporary file older than this was left by a crash


@dataclass
class Turn:
    speaker: str  # "user" | "assistant"
    text: str


@dataclass
class Session:
    session_id: str
    system_prompt: str
    voice_id: str = ""
    history: list[Turn] = field(default_factory=list)

    def add(self, turns: list[Turn], keep: int) -> None:
        """Append ``turns``, keeping only the newest ``keep`` turns."""
        self.history = (self.history + turns)[-keep:]


class SessionStore:
    def __init__(self, directory: Path, max_sessions: int, ttl_seconds: float = 0.0) -> None:
        self._directory = directory
        self._max_sessions = max_sessions
        self._ttl = ttl_seconds
        self._locks: dict[str, asyncio.Lock] = {}
        self._count: int | None = None  # sessions stored, as of the last directory scan and this process's changes
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, session_id: str) -> Path:
        if not _ID.fullmatch(session_id):
            raise InvalidArgument(f"session_id {session_id!r} is malformed: use the id CreateSession returned")
        return self._directory / f"{session_id}{_SUFFIX}"

    def lock(self, session_id: str) -> asyncio.Lock:
        """Turns of one session run one at a time (history order stays consistent)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def create(self, system_prompt: str, voice_id: str) -> Session:
        if self._count is None or self._count >= self._max_sessions:  # others may have deleted some: recount
            self._count = await run_blocking(self._scan_count)
        if self._count >= self._max_sessions:
            raise ResourceExhausted(f"the gateway holds {self._count} sessions, its limit: delete unused ones")
        session = Session(uuid.uuid4().hex, system_prompt, voice_id)
        await self.save(session)
        self._count += 1
        return session

    async def get(self, session_id: str) -> Session:
        path = self._path(session_id)
        raw = await run_blocking(self._read_and_touch, path)
        if raw is None:
            raise NotFound(f"session {session_id} does not exist (expired or deleted): create a new one")
        data = json.loads(raw)
        data["history"] = [Turn(**turn) for turn in data.get("history", [])]
        return Session(**data)

    async def save(self, session: Session) -> None:
        path = self._path(session.session_id)
        payload = json.dumps(asdict(session), ensure_ascii=False)
        await run_blocking(write_atomically, path, payload)

    async def delete(self, session_id: str) -> None:
        path = self._path(session_id)
        # Under the session's lock: a turn being stored (read, add, write) would otherwise write it back.
        async with self.lock(session_id):
            try:
                await run_blocking(path.unlink)
            except FileNotFoundError:
                raise NotFound(f"session {session_id} does not exist") from None
            finally:
                self._locks.pop(session_id, None)
        if self._count:
            self._count -= 1

    async def sweep(self) -> int:
        """Delete the sessions unused for longer than the TTL (not those with a turn in progress); return how many."""
        expired, total = await run_blocking(self._scan_expired)
        idle = [session_id for session_id in expired if not self._in_use(session_id)]
        deleted = await run_blocking(self._delete_expired, idle)
        for session_id in deleted:
            self._locks.pop(session_id, None)
        self._count = total - len(deleted)
        return len(deleted)

    async def sweep_forever(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                deleted = await self.sweep()
            except Exception:  # a failed sweep (disk error) must not end the sweeping
                log.exception("session sweep failed")
            else:
                if deleted:
                    log.info("expired sessions deleted", extra={"count": deleted})

    # --- blocking helpers (run off the event loop) ---------------------------------------

    def _expired(self, modified: float) -> bool:
        return bool(self._ttl) and time.time() - modified > self._ttl

    def _read_and_touch(self, path: Path) -> str | None:
        """The session's text, its use recorded; None if it does not exist or has expired (then it is deleted)."""
        try:
            if self._expired(path.stat().st_mtime):
                path.unlink(missing_ok=True)
                return None
            raw = path.read_text("utf-8")
            os.utime(path)
        except FileNotFoundError:
            return None
        return raw

    def _scan_count(self) -> int:
        with os.scandir(self._directory) as entries:
            return sum(1 for entry in entries if entry.name.endswith(_SUFFIX))

    def _scan_expired(self) -> tuple[list[str], int]:
        """The ids of expired sessions, and how many sessions there are. Deletes temporaries a crash left."""
        expired, total = [], 0
        with os.scandir(self._directory) as entries:
            for entry in entries:
                try:
                    modified = entry.stat().st_mtime
                    if entry.name.endswith(TEMP_SUFFIX) and time.time() - modified > _TEMP_MAX_AGE_SECONDS:
                        os.unlink(entry.path)
                    elif entry.name.endswith(_SUFFIX):
                        total += 1
                        if self._expired(modified):
                            expired.append(entry.name.removesuffix(_SUFFIX))
                except FileNotFoundError:
                    pass
        return expired, total

    def _delete_expired(self, session_ids: list[str]) -> list[str]:
        deleted = []
        for session_id in session_ids:
            path = self._directory / f"{session_id}{_SUFFIX}"
            try:
                if self._expired(path.stat().st_mtime):  # still: it may have been used since the scan
                    path.unlink()
                    deleted.append(session_id)
            except FileNotFoundError:
                pass
        return deleted

    # --- bookkeeping --------------------------------------------------------------------

    def _in_use(self, session_id: str) -> bool:
        lock = self._locks.get(session_id)
        return lock is not None and lock.locked()
