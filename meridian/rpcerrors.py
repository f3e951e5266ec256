"""The mapping of gRPC failures of the control API to ``meridian.core.errors``.

Callers (CLI, flow runner) only ever see Meridian errors, with messages a user can act on:
the class its status code names, or the subclass the control plane named in the trailing
metadata (``meridian.core.wireerrors``, e.g. ``ResidencyRefused``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from meridian.core.errors import (
    ConflictError,
    ConnectionFailed,
    MeridianError,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from meridian.core.wireerrors import ERROR_KIND_KEY, refine

_TLS_HINTS = ("ssl", "tls", "handshake", "certificate", "tsi_", "x509")


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.Call) else None


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return details or str(exc)


def _kind(exc: grpc.RpcError) -> str:
    """The error kind the control plane named in the trailing metadata ("" if none)."""
    trailers: Any = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailers or ():
        if key == ERROR_KIND_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def map_rpc_error(exc: grpc.RpcError, address: str, ca_file: Path) -> MeridianError:
    """Turn a gRPC failure into the Meridian error a user can act on."""
    return refine(_by_code(exc, address, ca_file), _kind(exc))


def _by_code(exc: grpc.RpcError, address: str, ca_file: Path) -> MeridianError:
    code, details = _code(exc), _details(exc)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _connection_error(code, details, address, ca_file)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ValidationError(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
        return ConflictError(details)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ValidationError(f"request too large: {details}")
    name = code.name if code is not None else "UNKNOWN"
    return MeridianError(f"the control plane at {address} answered {name}: {details}")


def _connection_error(
    code: grpc.StatusCode, details: str, address: str, ca_file: Path
) -> ConnectionFailed:
    lowered = details.lower()
    if any(hint in lowered for hint in _TLS_HINTS):
        return ConnectionFailed(
            f"cannot verify the control plane at {address} with the CA file {ca_file}: "
            f"TLS handshake failed ({details}); check --ca-file / MERIDIAN_CA_FILE"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer before the deadline ({details})"
    return ConnectionFailed(
        f"cannot reach the control plane at {address}: {details} "
        "(check --control-plane / MERIDIAN_CONTROL_PLANE and --ca-file)"
    )
