"""Why something failed, in one shape for every side: ``ErrorClass`` and ``ErrorInfo``.

Providers describe a failed attempt with it, the agent reports it, the control plane stores it
on attempts, step runs and flow runs (as a JSON object) and decides retries by its class, and
the SDK raises it into the flow body. ``common.proto``'s ``ErrorInfo`` is its wire form
(``meridian.core.convert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    """What kind of failure it was; the retry rules key on this."""

    TRANSIENT = "transient"  # the step's code raised; its retry policy may retry it
    PERMANENT = "permanent"  # meridian.Permanent, or not in retry_on: never retried
    INFRASTRUCTURE = "infrastructure"  # the provider could not start or watch the step
    TIMEOUT = "timeout"  # the step ran past its timeout and was stopped
    LOST_AGENT = "lost_agent"  # the agent holding the attempt stopped heartbeating
    CANCELLED = "cancelled"  # a person or the flow body stopped it
    SCHEDULING = "scheduling"  # no matching agent appeared within schedule_timeout


@dataclass(frozen=True)
class ErrorInfo:
    """Why an attempt, step run or flow run failed.

    ``error_class`` stays a plain string on the wire and in storage, so a value written by a
    newer version with a class this one does not know still loads (the retry rules refuse to
    retry an unknown class). ``type_mro`` lists qualified class names, most derived first.
    """

    error_class: str
    type: str
    message: str
    traceback: str = ""
    type_mro: tuple[str, ...] = ()

    def describe(self) -> str:
        """``class: type: message``, the one-line form shown in events and summaries."""
        return f"{self.error_class}: {self.type}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "error_class": self.error_class,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "type_mro": list(self.type_mro),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            error_class=str(data.get("error_class", "")),
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
            type_mro=tuple(str(name) for name in data.get("type_mro") or ()),
        )
