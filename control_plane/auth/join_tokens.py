"""Join tokens: the one-time secrets an agent trades for its certificate at enrollment.

Format ``mjt_<token_id>.<secret>``. The id is public (it names the stored row and appears in the
audit log); the secret is 32 random bytes, base64url without padding, and only its SHA-256 is
stored. A plain hash is enough here, unlike for passwords: the secret has 256 bits of entropy,
so there is nothing to brute-force. Validity, expiry and single use live in the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from meridian.core.errors import ValidationError

TOKEN_PREFIX = "mjt_"
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"^mjt_(?P<id>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{43})$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def new_join_token() -> tuple[str, str, str]:
    """Return ``(token_id, plaintext_token, secret_hash)``; show the plaintext once, store the
    hash."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return token_id, f"{TOKEN_PREFIX}{token_id}.{secret}", hash_secret(secret)


def parse_join_token(text: str) -> tuple[str, str]:
    """Split a join token into ``(token_id, secret)``.

    Raises:
        ValidationError: the text is not a join token. The message never repeats the input,
            which may be a real secret pasted into the wrong place.
    """
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        raise ValidationError(
            "malformed join token: expected 'mjt_<id>.<secret>' exactly as printed when the "
            "token was created"
        )
    return match["id"], match["secret"]


def hash_secret(secret: str) -> str:
    """The stored form of a secret: lowercase hex SHA-256."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def verify_secret(secret: str, stored_hash: str) -> bool:
    """Compare in constant time, so response timing reveals nothing about the stored hash."""
    if not _HASH_RE.match(stored_hash):
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)
