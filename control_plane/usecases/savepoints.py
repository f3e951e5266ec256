"""Run one part of a use case in a savepoint, so a refused part leaves no trace while the rest
of the transaction commits.

An automated trigger (a schedule's slot, another run's outcome) runs inside a transaction that
must commit whatever the trigger's answer: the schedule's cursor advances, the upstream run
ends. When the triggered deployment refuses (its parameters no longer validate, it was
deleted), the rows, events and audit records the attempt had queued must go, and only they.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from control_plane.store.tx import Tx
from meridian.core.errors import MeridianError

T = TypeVar("T")


def attempt(tx: Tx, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | MeridianError:
    """``fn(tx, ...)`` in a savepoint: its result, or the :class:`MeridianError` it raised
    (then its rows, queued events and audit records are undone; effects it noted stay, and
    are harmless: a wake-up or a watcher told about a run that does not exist)."""
    marks = {key: len(value) for key, value in tx.session.info.items() if isinstance(value, list)}
    try:
        with tx.session.begin_nested():
            result = fn(tx, *args, **kwargs)
    except MeridianError as exc:
        for key, value in list(tx.session.info.items()):
            if isinstance(value, list):
                del value[marks.get(key, 0) :]
        return exc
    return result
