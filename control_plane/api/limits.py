"""Per-caller limits on calls in flight, so one misbehaving agent cannot starve the others."""

from __future__ import annotations


class InFlightLimit:
    """Counts calls in flight per key (an agent id) and refuses one above ``limit``.

    Used only from the server's event loop, so plain counters suffice. Pair every successful
    ``try_acquire`` with one ``release`` (in a ``finally``).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an in-flight limit must be at least 1")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def in_flight(self, key: str) -> int:
        return self._counts.get(key, 0)

    def try_acquire(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if count >= self.limit:
            return False
        self._counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        left = self._counts.pop(key) - 1
        if left:  # idle keys leave no entry behind: the map stays as small as the load
            self._counts[key] = left
