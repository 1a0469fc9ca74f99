"""Crash-safe file writes: write a temporary file beside the target, fsync, rename over it.

A reader (or a process restarted after a crash) sees either the old file or the new one, never a
torn one. Leftover temporaries (``*.tmp``) from a crash are harmless; owners may sweep them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry change (a rename, an unlink) to disk. No-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, payload: str | bytes, *, sync_directory: bool = True) -> None:
    """Replace ``path`` with ``payload`` (text is written as UTF-8) atomically and durably."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    if sync_directory:
        fsync_directory(path.parent)
