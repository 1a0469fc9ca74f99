"""Settings shared by every service. Each service subclasses ``ServiceSettings`` with its own
``env_prefix`` (``TTS_PORT=...``) and the same names as command-line flags (``--port ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class ServiceSettings(BaseSettings):
    """Network, shutdown and limit settings every gRPC service has."""

    model_config = SettingsConfigDict(extra="forbid", cli_kebab_case=True, cli_implicit_flags=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds (0.0.0.0 in containers).")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free port (tests).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 picks a free port.")
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics HTTP server binds.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM: seconds in-flight RPCs get to finish before they are cancelled."
    )
    max_message_bytes: int = Field(16 * MiB, ge=MiB, description="Largest gRPC message accepted or sent, in bytes.")
    max_concurrent_rpcs: int = Field(
        64, ge=1, description="RPCs served at once; beyond this new calls get RESOURCE_EXHAUSTED."
    )
    health_check_interval_seconds: float = Field(
        2.0, gt=0, description="Seconds between liveness checks of the engine (drives grpc.health.v1)."
    )
    health_check_timeout_seconds: float = Field(
        5.0, gt=0, description="A liveness check that takes longer than this counts as failed (a hung engine)."
    )
    unhealthy_exit_seconds: float = Field(
        30.0,
        ge=0,
        description="Exit with code 1 once the engine has failed its checks this long (0: stay up NOT_SERVING); "
        "an engine that cannot recover (vLLM engine core dead) exits at once.",
    )
    engine_stall_seconds: float = Field(
        120.0,
        gt=0,
        description="An engine with work in hand and no progress (no token, frame or sentence) for this long is "
        "hung: the service turns NOT_SERVING and exits (stages only).",
    )
    port_file: str = Field(
        "", description="If set, write 'grpc_port metrics_port' to this file once serving (tests, supervisors)."
    )


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(cls: type[SettingsT], argv: Sequence[str] | None) -> SettingsT:
    """Environment first, then command-line flags on top (``argv`` None: no flags)."""
    if argv is None:
        return cls()
    return cls(_cli_parse_args=list(argv))
