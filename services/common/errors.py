"""Typed domain errors and their one mapping to gRPC status codes.

Engines and servicers raise these; the error interceptor (see ``server.py``) turns them into
canonical status codes. Anything else that escapes a handler is an INTERNAL error.
"""

from __future__ import annotations

import grpc


class DomainError(Exception):
    """Base of errors a caller can act on. ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed: bad audio, empty text, out-of-range parameter."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """A named thing (voice, session) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    """A thing with this name already exists (e.g. a voice id)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The request is valid but the loaded engine cannot serve it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    """Admission control rejected the request (queue full, too many streams)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(DomainError):
    """A dependency (another stage) is down or shutting down; retrying may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DomainError):
    """The work did not finish before the caller's deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class EngineUnhealthy(Exception):
    """An engine's liveness check failed (see ``check_health`` on the engine interfaces).

    ``recoverable`` False means only a new process can help (the vLLM engine core died, the model is
    gone): the service then exits non-zero at once so the orchestrator restarts it. A recoverable
    failure (a voice worker being restarted, a stalled step) turns the service NOT_SERVING until a
    later check passes, and exits only if it lasts longer than the configured limit.
    """

    def __init__(self, message: str, recoverable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.recoverable = recoverable


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for ``error``."""
    if isinstance(error, DomainError):
        return error.code, error.message
    if isinstance(error, grpc.aio.AioRpcError):
        # A downstream stage failed: pass its status through (a caller error stays a caller error).
        return error.code(), error.details() or error.code().name
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"
