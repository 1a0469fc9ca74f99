"""Composition root of the HTTP service: ``python -m services.http [--flags]``."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from services.common.logs import configure_logging
from services.common.settings import load_settings
from services.http.app import create_app
from services.http.settings import HttpSettings

log = logging.getLogger("services.http")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so port 0 gives a free port the port file can name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def build_server(settings: HttpSettings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,  # the root logger's JSON lines, like the other services
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        lifespan="on",
    )
    return uvicorn.Server(config)


def _ignore(signum: int, frame: object) -> None:
    """After a graceful shutdown uvicorn raises the signal that caused it again, for the previous handler; this
    handler makes that a no-op so the process exits 0, as the gRPC services do on SIGTERM."""


def main(argv: Sequence[str]) -> int:
    settings = load_settings(HttpSettings, argv)  # type: ignore[type-var]
    configure_logging("http", settings.log_level)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    log.info("serving HTTP on %s:%d (gateway %s)", settings.host, port, settings.gateway_address)
    if settings.port_file:
        # The socket already listens: a client that connects before uvicorn accepts waits in the backlog.
        Path(settings.port_file).write_text(f"{port} {port}\n")
    asyncio.run(build_server(settings).serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
