"""Console sessions: a server-side table keyed by a random id in an HttpOnly cookie.

The cookie carries 256 random bits and nothing else; the API token a person logged in with
stays in this process's memory (never in the cookie, a URL or a log). Each session has an
absolute lifetime and an idle timeout, its own CSRF token, and is checked against the token
store again every ``RECHECK_S`` (as the gRPC interceptor's cache does), so revoking or
expiring the API token ends the console session within seconds. Decision 0014 says why this
is not a signed cookie.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from control_plane.auth.api_token_store import Principal

COOKIE = "meridian_session"
LOGIN_COOKIE = "meridian_login"  # double-submit CSRF token of the login form (no session yet)
LIFETIME_S = 8 * 3600.0
IDLE_S = 3600.0
RECHECK_S = 5.0
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    token: str
    principal: Principal
    csrf: str
    created: float
    last_used: float
    checked: float = field(default=0.0)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, str(presented))


class SessionTable:
    """In-memory sessions with expiry; ``clock`` is monotonic seconds (a test passes its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, token: str, principal: Principal) -> Session:
        now = self._clock()
        self._expire(now)
        if len(self._sessions) >= MAX_SESSIONS:  # bounded: drop the least recently used
            oldest = min(self._sessions.values(), key=lambda s: s.last_used)
            del self._sessions[oldest.id]
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            created=now,
            last_used=now,
            checked=now,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for a cookie value, or None (unknown, expired or idle too long)."""
        if not session_id or len(session_id) > 128:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.created > LIFETIME_S or now - session.last_used > IDLE_S:
            del self._sessions[session_id]
            return None
        session.last_used = now
        return session

    def needs_check(self, session: Session) -> bool:
        return self._clock() - session.checked > RECHECK_S

    def checked(self, session: Session, principal: Principal) -> None:
        session.principal = principal
        session.checked = self._clock()

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        for sid in [
            s.id
            for s in self._sessions.values()
            if now - s.created > LIFETIME_S or now - s.last_used > IDLE_S
        ]:
            del self._sessions[sid]


def same_token(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens; absent never matches."""
    return bool(expected) and bool(presented) and hmac.compare_digest(str(expected), str(presented))
