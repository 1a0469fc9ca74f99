"""Conversation sessions, one JSON file each, written atomically so a crash never loses or
corrupts a stored turn. User audio is stored as its transcript (Step-Audio's context
compression); only text is kept."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.atomic import write_atomically
from services.common.concurrency import run_blocking
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted

_ID = re.compile(r"^[0-9a-f]{32}$")


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


class SessionStore:
    def __init__(self, directory: Path, max_sessions: int) -> None:
        self._directory = directory
        self._max_sessions = max_sessions
        self._locks: dict[str, asyncio.Lock] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, session_id: str) -> Path:
        if not _ID.match(session_id):
            raise InvalidArgument(f"session_id {session_id!r} is malformed: use the id CreateSession returned")
        return self._directory / f"{session_id}.json"

    def lock(self, session_id: str) -> asyncio.Lock:
        """Turns of one session run one at a time (history order stays consistent)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def create(self, system_prompt: str, voice_id: str) -> Session:
        count = await run_blocking(lambda: sum(1 for _ in self._directory.glob("*.json")))
        if count >= self._max_sessions:
            raise ResourceExhausted(f"the gateway holds {count} sessions, its limit: delete unused ones")
        session = Session(uuid.uuid4().hex, system_prompt, voice_id)
        await self.save(session)
        return session

    async def get(self, session_id: str) -> Session:
        path = self._path(session_id)
        try:
            raw = await run_blocking(path.read_text, "utf-8")
        except FileNotFoundError:
            raise NotFound(f"session {session_id} does not exist (expired or deleted): create a new one") from None
        data = json.loads(raw)
        data["history"] = [Turn(**turn) for turn in data.get("history", [])]
        return Session(**data)

    async def save(self, session: Session) -> None:
        path = self._path(session.session_id)
        payload = json.dumps(asdict(session), ensure_ascii=False)
        await run_blocking(write_atomically, path, payload)

    async def delete(self, session_id: str) -> None:
        path = self._path(session_id)
        try:
            await run_blocking(path.unlink)
        except FileNotFoundError:
            raise NotFound(f"session {session_id} does not exist") from None
        self._locks.pop(session_id, None)
