"""Meridian's error tree. Every error carries a message a user can act on.

MeridianError
├── ValidationError        bad input: flow definitions, parameters, selectors, bundles
│   ├── SelectorError
│   └── BundleError
├── NotFound
├── PermissionDenied
│   └── Unauthenticated    the credentials themselves are unknown, expired, used or revoked
├── LimitExceeded          a bound on concurrent use was hit; retry once some work finishes
├── ConnectionFailed       the control plane cannot be reached or its TLS identity is wrong
├── ConflictError          the request contradicts stored state
├── SealError              a sealed value cannot be made or opened (key missing, wrong or
│                          altered ciphertext, bad key file); never names key material
├── ApprovalRejected       an operator rejected an approval (raised by ``approve`` in the body)
│   └── ApprovalTimedOut   nobody decided before the approval's timeout: not approved either
└── StepFailed             a step run ended without a result (raised in the flow body)
    └── StepCancelled      also raised by ``approve`` when the run is cancelled while it waits

``Permanent`` is not a MeridianError: step code raises it to say "do not retry this".
"""

from __future__ import annotations


class MeridianError(Exception):
    """Base of every error Meridian raises on purpose."""


class ValidationError(MeridianError):
    """Input was rejected; the message says what to change."""


class SelectorError(ValidationError):
    """A label selector could not be parsed."""


class BundleError(ValidationError):
    """A code bundle is too large, corrupt, or unsafe to unpack."""


class NotFound(MeridianError):
    """The named run, step, agent or bundle does not exist."""


class PermissionDenied(MeridianError):
    """The caller may not do this."""


class Unauthenticated(PermissionDenied):
    """The caller's credentials (a join token, a certificate) are not valid at all."""


class LimitExceeded(MeridianError):
    """A bound on concurrent use was reached; the message says which, and when to retry."""


class ConnectionFailed(MeridianError):
    """The control plane could not be reached, or its identity could not be verified."""


class ConflictError(MeridianError):
    """The request contradicts what is already recorded."""


class SealError(MeridianError):
    """A value could not be sealed or opened; the message names the key group, never a key."""


class ApprovalRejected(MeridianError):
    """An approval the flow body waited for was not given; catch it to take another branch.

    ``decided_by`` is the audit actor that decided (``token:<id>``; ``system`` for a timeout).
    """

    def __init__(self, key: str, decided_by: str, reason: str, message: str = "") -> None:
        super().__init__(
            message or f"approval {key} was rejected by {decided_by or 'an operator'}: {reason}"
        )
        self.key = key
        self.decided_by = decided_by
        self.reason = reason


class ApprovalTimedOut(ApprovalRejected):
    """Nobody decided the approval before its timeout (enforced by the control plane)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, "system", reason, f"approval {key} timed out: {reason}")


class StepFailed(MeridianError):
    """A step run failed. Carries the remote error so the flow body can decide what to do."""

    def __init__(
        self,
        step_key: str,
        error_class: str,
        error_type: str,
        message: str,
        traceback: str = "",
        *,
        sealed_with: str = "",
    ) -> None:
        super().__init__(f"step {step_key} failed ({error_class}): {error_type}: {message}")
        self.step_key = step_key
        self.error_class = error_class
        self.error_type = error_type
        self.remote_message = message
        self.remote_traceback = traceback
        # The key group of a sealed step: its message and traceback were opened here and must
        # not reach the control plane in plaintext (see meridian.sdk.runner.error_info).
        self.sealed_with = sealed_with


class StepCancelled(StepFailed):
    """The step run was cancelled; flow bodies may catch it to run compensation."""


class Permanent(Exception):
    """Raise (or raise from) this inside a step to fail it at once, without retries."""
