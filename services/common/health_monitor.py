"""Health that tells the truth: the engine's liveness check drives grpc.health.v1 and the process's life.

Every ``interval`` seconds the monitor runs the engine's ``check_health`` under a deadline. A failure (an
``EngineUnhealthy``, any other error, or no answer in time) turns the service NOT_SERVING at once, so load
balancers and readiness probes stop sending it work; a later passing check turns it SERVING again. When the
engine says only a new process can help (``recoverable=False``), or the failures have lasted ``exit_after``
seconds, the monitor asks the server to stop with a non-zero exit code, so the orchestrator (kubelet,
compose ``restart:``) restarts the service.

The event-loop lag monitor lives here too: a sleeper that measures how late the loop wakes it, exported as a
histogram and a gauge. Blocking work on the loop shows up there first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from services.common.errors import EngineUnhealthy

log = logging.getLogger(__name__)

ENGINE_HEALTHY = Gauge("stepaudio_engine_healthy", "1 when the engine's last liveness check passed, else 0.")
ENGINE_HEALTH_FAILURES = Counter(
    "stepaudio_engine_health_failures_total", "Failed engine liveness checks (errors and time-outs)."
)
LOOP_LAG = Histogram(
    "stepaudio_event_loop_lag_seconds",
    "How late the event loop ran a timer (blocking work on the loop delays every stream of the process).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LOOP_LAG_LAST = Gauge("stepaudio_event_loop_lag_last_seconds", "The latest event-loop lag measurement.")


@dataclass(frozen=True)
class HealthPolicy:
    interval: float
    timeout: float
    exit_after: float  # seconds of continuous failure before the process exits; 0: never for recoverable ones


class HealthMonitor:
    """Runs ``check`` periodically; reports serving changes through ``set_serving`` and a fatal state
    through ``on_fatal(reason)``."""

    def __init__(
        self,
        check: Callable[[], Awaitable[None]],
        set_serving: Callable[[bool], Awaitable[None]],
        on_fatal: Callable[[str], None],
        policy: HealthPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._set_serving = set_serving
        self._on_fatal = on_fatal
        self._policy = policy
        self._clock = clock
        self._failing_since: float | None = None
        ENGINE_HEALTHY.set(1)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._policy.interval)
            if not await self.check_once():
                return

    async def check_once(self) -> bool:
        """One check; False once the service must exit."""
        try:
            await asyncio.wait_for(self._check(), self._policy.timeout)
        except EngineUnhealthy as error:
            return await self._failed(error.message, fatal=not error.recoverable)
        except TimeoutError:
            return await self._failed(f"the liveness check did not answer within {self._policy.timeout:g} s")
        except Exception as error:  # a check that crashes says nothing good about the engine
            return await self._failed(f"the liveness check failed: {type(error).__name__}: {error}")
        if self._failing_since is not None:
            log.warning("engine healthy again", extra={"failed_seconds": round(self._clock() - self._failing_since, 1)})
            self._failing_since = None
            ENGINE_HEALTHY.set(1)
            await self._set_serving(True)
        return True

    async def _failed(self, reason: str, fatal: bool = False) -> bool:
        ENGINE_HEALTH_FAILURES.inc()
        ENGINE_HEALTHY.set(0)
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
            log.error("engine unhealthy: NOT_SERVING", extra={"detail": reason})
            await self._set_serving(False)
        failed_for = now - self._failing_since
        if fatal or (self._policy.exit_after and failed_for >= self._policy.exit_after):
            why = reason if fatal else f"{reason} (unhealthy for {failed_for:.0f} s)"
            self._on_fatal(why)
            return False
        return True


async def watch_loop_lag(interval: float = 0.1) -> None:
    """Measure, forever, how much later than asked the loop wakes a sleeper."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - asked - interval)
        LOOP_LAG.observe(lag)
        LOOP_LAG_LAST.set(lag)
