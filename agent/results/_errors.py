"""The errors a result store raises; each message names the store and the key."""

from __future__ import annotations

from meridian.core.errors import ConflictError, MeridianError, NotFound, ValidationError


class ResultStoreError(MeridianError):
    """Base of result-store errors."""


class ResultStoreConfigError(ValidationError):
    """A ``[result_stores.NAME]`` table is invalid; the message names the table and the key."""


class InvalidKey(ValidationError):
    """An object key is not allowed (empty, too long, '..', a character outside the set)."""


class ResultNotFound(NotFound):
    """No complete object exists under the key."""


class DigestMismatch(ResultStoreError):
    """The bytes do not have the size or sha256 they were announced with; nothing was kept."""


class ResultConflict(ConflictError):
    """A complete object with a different digest already exists under the key."""


class PresignUnsupported(ResultStoreError):
    """This store (or its credentials) cannot hand out presigned URLs."""


class ResultStoreUnavailable(ResultStoreError):
    """The backing service failed or could not be reached; retrying may help."""
