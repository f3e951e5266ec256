"""A flow for tests/integration/test_hosted_runners.py: which Python types its body receives for
each annotated parameter (pydantic is imported by the test's caller only when installed)."""

from __future__ import annotations

import datetime as dt
import enum
import pathlib

import pydantic

from meridian import flow


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Cfg(pydantic.BaseModel):
    name: str
    size: int
    opt: float = 1.5


@flow
def probe(
    n: int,
    when: dt.datetime,
    day: dt.date,
    color: Color,
    p: pathlib.Path,
    cfg: Cfg,
    colors: list[Color] | None = None,
    maybe: int | None = None,
) -> dict:
    values = {"n": n, "when": when, "day": day, "color": color, "p": p, "cfg": cfg}
    types = {name: type(value).__name__ for name, value in values.items()}
    return {
        **types,
        "colors": [type(c).__name__ for c in colors or ()],
        "maybe": type(maybe).__name__,
        "is_member": color is Color.GREEN,
        "size": cfg.size,
    }
