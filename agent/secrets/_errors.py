"""Why a step's secret could not be resolved, classified the way the control plane retries.

Messages name the environment variable and the reference, never a value: they travel to the
control plane inside the attempt's error and are stored there.
"""

from __future__ import annotations

from typing import ClassVar, Literal

SecretErrorClass = Literal["permanent", "infrastructure"]


class SecretError(Exception):
    """Base of every secret failure; ``error_class`` is what the attempt's failure reports."""

    error_class: ClassVar[SecretErrorClass] = "infrastructure"


class SecretNotFound(SecretError):
    """The reference names no usable secret (missing, wrong shape, not text).

    Retrying the attempt cannot help until someone fixes the reference or creates the secret,
    so the attempt fails as ``permanent``.
    """

    error_class: ClassVar[SecretErrorClass] = "permanent"


class SecretUnavailable(SecretError):
    """The secret store could not be asked: transport error, credentials, permission, missing
    SDK. Another attempt (possibly on another agent of the environment) may succeed, so the
    attempt fails as ``infrastructure`` and the control plane's retry policy applies."""


class SecretConfigError(SecretError, ValueError):
    """The agent's ``secrets`` configuration is invalid; raised when the agent starts."""
