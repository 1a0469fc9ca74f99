"""Pieces shared by the ``synthetic`` engines (docs/synthetic.md): a stable seed from text, and the
health switch file that lets a test make an engine's liveness check fail without touching the process."""

from __future__ import annotations

import zlib
from pathlib import Path

from services.common.concurrency import run_blocking
from services.common.errors import EngineUnhealthy

FATAL = "fatal"


def stable_seed(*parts: str) -> int:
    """A seed that is the same in every process and run (``hash()`` of a str is salted per process)."""
    return zlib.crc32("\x1f".join(parts).encode("utf-8"))


def _read_switch(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None


async def check_health_switch(path: str, engine: str) -> None:
    """Raise ``EngineUnhealthy`` while the file ``path`` exists (never when ``path`` is empty): not recoverable
    when the file holds ``fatal``, recoverable otherwise."""
    if not path:
        return
    content = await run_blocking(_read_switch, path)
    if content is None:
        return
    recoverable = content != FATAL
    kind = "recoverable" if recoverable else "fatal"
    raise EngineUnhealthy(f"the synthetic {engine} engine was made unhealthy ({kind}) by {path}", recoverable)
