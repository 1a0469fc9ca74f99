"""Engine liveness → grpc.health.v1 status and the process's exit code; the stall watchdog; loop lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common.errors import EngineUnhealthy
from services.common.health_monitor import HealthMonitor, HealthPolicy, watch_loop_lag
from services.common.server import ServiceDefinition, serve
from services.common.settings import ServiceSettings
from services.common.watchdog import StallWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedCheck:
    """A liveness check that does what its script says, one step per call: "ok", "fail", "fatal", "hang"."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)

    async def __call__(self) -> None:
        step = self.script.pop(0)
        if step == "fail":
            raise EngineUnhealthy("worker gone")
        if step == "fatal":
            raise EngineUnhealthy("engine core died", recoverable=False)
        if step == "crash":
            raise RuntimeError("boom")
        if step == "hang":
            await asyncio.sleep(10)


def monitor_for(check: ScriptedCheck, clock: Clock, exit_after: float = 30.0):
    serving: list[bool] = []
    fatal: list[str] = []

    async def set_serving(value: bool) -> None:
        serving.append(value)

    monitor = HealthMonitor(check, set_serving, fatal.append, HealthPolicy(0.01, 0.05, exit_after), clock)
    return monitor, serving, fatal


async def test_failure_turns_not_serving_and_recovery_serving_again() -> None:
    clock = Clock()
    monitor, serving, fatal = monitor_for(ScriptedCheck("ok", "fail", "fail", "ok"), clock)
    assert await monitor.check_once()
    assert serving == []  # healthy from the start: nothing to change
    assert await monitor.check_once()
    assert await monitor.check_once()
    assert serving == [False]  # once, not on every failed check
    assert await monitor.check_once()
    assert serving == [False, True]
    assert fatal == []


@pytest.mark.parametrize("step", ["hang", "crash"])
async def test_a_hung_or_crashing_check_counts_as_failed(step: str) -> None:
    monitor, serving, _ = monitor_for(ScriptedCheck(step), Clock())
    started = time.monotonic()
    assert await monitor.check_once()
    assert time.monotonic() - started < 1.0  # the check's deadline (0.05 s), not the hang's 10 s
    assert serving == [False]


async def test_unrecoverable_failure_asks_to_exit_at_once() -> None:
    monitor, serving, fatal = monitor_for(ScriptedCheck("fatal"), Clock())
    assert not await monitor.check_once()
    assert serving == [False]
    assert fatal == ["engine core died"]


async def test_recoverable_failure_exits_only_after_the_limit() -> None:
    clock = Clock()
    monitor, _, fatal = monitor_for(ScriptedCheck("fail", "fail", "fail"), clock, exit_after=30)
    assert await monitor.check_once()
    clock.now += 29
    assert await monitor.check_once()
    assert fatal == []
    clock.now += 2
    assert not await monitor.check_once()
    assert "unhealthy for 31 s" in fatal[0]


async def test_limit_zero_never_exits_on_recoverable_failures() -> None:
    clock = Clock()
    monitor, _, fatal = monitor_for(ScriptedCheck("fail", "fail"), clock, exit_after=0)
    assert await monitor.check_once()
    clock.now += 10_000
    assert await monitor.check_once()
    assert fatal == []


def test_watchdog_counts_only_time_without_progress_while_busy() -> None:
    clock = Clock()
    watchdog = StallWatchdog(clock)
    clock.now += 500
    assert watchdog.stalled_seconds() == 0  # idle is not stalled
    with watchdog.working():
        clock.now += 5
        assert watchdog.stalled_seconds() == 5
        watchdog.progress()
        clock.now += 2
        with watchdog.working():  # new work arriving does not hide the stall
            clock.now += 1
            assert watchdog.stalled_seconds() == 3
    assert watchdog.stalled_seconds() == 0


async def test_loop_lag_is_measured() -> None:
    watcher = asyncio.create_task(watch_loop_lag(0.01))
    await asyncio.sleep(0.05)
    before = REGISTRY.get_sample_value("stepaudio_event_loop_lag_seconds_bucket", {"le": "0.1"}) or 0
    time.sleep(0.2)  # noqa: ASYNC251 - blocks the loop on purpose
    await asyncio.sleep(0.05)
    watcher.cancel()
    above_100ms = REGISTRY.get_sample_value("stepaudio_event_loop_lag_seconds_count") - (
        REGISTRY.get_sample_value("stepaudio_event_loop_lag_seconds_bucket", {"le": "0.1"})
    )
    assert above_100ms >= 1, before
    assert REGISTRY.get_sample_value("stepaudio_event_loop_lag_last_seconds") < 0.1  # recovered since


async def test_serve_exits_non_zero_when_the_engine_cannot_recover(tmp_path: Path) -> None:
    """The whole path in one process: SERVING → the check fails fatally → NOT_SERVING → serve returns 1."""
    checks = ScriptedCheck("ok", "ok", "fail", "fail", "fatal")
    definition = ServiceDefinition(
        name="test",
        settings=ServiceSettings(
            port_file=str(tmp_path / "ports"), health_check_interval_seconds=0.2, shutdown_grace_seconds=0
        ),
        register=lambda server: None,
        service_names=["test.Service"],
        health_check=checks,
    )
    statuses: list[int] = []

    async def watch_health() -> None:
        port = await wait_for_port(tmp_path / "ports")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                except grpc.aio.AioRpcError:
                    return
                statuses.append(response.status)
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_health())
    code = await asyncio.wait_for(serve(definition), 10)
    await asyncio.wait_for(watcher, 5)
    assert code == 1
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


async def wait_for_port(port_file: Path) -> int:
    for _ in range(250):
        if ports := await asyncio.to_thread(lambda: port_file.read_text().split() if port_file.exists() else []):
            return int(ports[0])
        await asyncio.sleep(0.02)
    raise TimeoutError("the server did not bind")
