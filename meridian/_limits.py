"""Named concurrency limits as the SDK and CLI see them (``meridian limits``)."""

from __future__ import annotations

from dataclasses import dataclass

from protos.meridian.v1 import control_pb2


@dataclass(frozen=True)
class LimitInfo:
    """A named global concurrency limit: its size, what holds its slots (``step <run>/<key>``
    or ``run <id>``) and how many wait for one."""

    name: str
    limit: int
    holders: tuple[str, ...]
    waiting: int


def limit_from_proto(msg: control_pb2.LimitInfo) -> LimitInfo:
    return LimitInfo(msg.name, msg.limit, tuple(msg.holders), msg.waiting)
