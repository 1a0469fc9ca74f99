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
    otlp_endpoint: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="OpenTelemetry collector that receives this service's traces over OTLP/gRPC: "
        "http://host:4317 (plaintext) or https://host:4317 (TLS). Empty: tracing is off and costs nothing (no "
        "OpenTelemetry module is loaded). Headers and certificates: the SDK's OTEL_EXPORTER_OTLP_* variables.",
    )
    trace_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of traces kept, by trace id, among those that start here (the gateway's decides for a "
        "whole turn: a call that arrives with a trace context follows its caller's choice).",
    )
    trace_service_name: str = Field(
        "", description="service.name of this service's spans; empty: stepaudio-<service> (stepaudio-gateway, ...)."
    )
    max_connection_age_seconds: float = Field(
        300.0,
        ge=0,
        description="A client connection older than this (gRPC varies it by ±10 %) is sent GOAWAY, so the "
        "client reconnects and re-resolves DNS and a scaled-up service gets its share of new calls within about "
        "this long; calls in flight go on (max_connection_age_grace_seconds). 0: connections are never aged out.",
    )
    max_connection_age_grace_seconds: float = Field(
        0.0,
        ge=0,
        description="After an aged connection's GOAWAY, seconds its calls in flight get to finish before the "
        "connection is closed (cutting the calls still open). 0: no limit, a long stream ends on its own terms.",
    )


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(cls: type[SettingsT], argv: Sequence[str] | None) -> SettingsT:
    """Environment first, then command-line flags on top (``argv`` None: no flags)."""
    if argv is None:
        return cls()
    return cls(_cli_parse_args=list(argv))
