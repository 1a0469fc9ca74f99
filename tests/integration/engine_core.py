"""Killing the engine side of a vLLM-backed service: its engine core child process(es)."""

from __future__ import annotations

import psutil


def kill_engine_cores(service_pid: int) -> int:
    """SIGKILL every vLLM engine core process under ``service_pid``; how many there were."""
    cores = [
        child
        for child in psutil.Process(service_pid).children(recursive=True)
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline())
    ]
    for core in cores:
        core.kill()
    return len(cores)
