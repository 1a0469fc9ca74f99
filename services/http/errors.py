"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

import grpc

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

_STATUS_BY_GRPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def error_type_for(status_code: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    return _TYPE_BY_STATUS.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error the caller gets as ``status_code`` with OpenAI's error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type or error_type_for(status_code)
        self.param = param
        self.code = code


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)


def api_error_from_grpc(err: grpc.aio.AioRpcError) -> ApiError:
    """The HTTP form of a gateway error: its status code mapped, its details as the message."""
    code = err.code()
    status = _STATUS_BY_GRPC_CODE.get(code, 500)
    message = err.details() or code.name.lower().replace("_", " ")
    return ApiError(status, message, code=code.name.lower())


def error_body(e: ApiError) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
