"""The environment-scope rules: pure functions, checked case by case."""

from __future__ import annotations

import pytest

from control_plane.orchestration.scopes import (
    check_step_targets,
    covers,
    normalize,
    reachable_environments,
)
from meridian.core.errors import PermissionDenied
from meridian.core.selectors import parse_selector


@pytest.mark.parametrize(
    ("caller", "scope", "expected"),
    [
        ((), (), True),  # unscoped callers see everything
        ((), ("a",), True),
        (("a",), ("a",), True),
        (("a", "b"), ("a",), True),
        (("a",), ("a", "b"), False),  # the run may target b
        (("a",), ("b",), False),
        (("a",), (), False),  # an unscoped run was never limited to a
    ],
)
def test_covers(caller: tuple[str, ...], scope: tuple[str, ...], expected: bool) -> None:
    assert covers(caller, scope) is expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("", None),
        ("cloud=aws", None),
        ("environment", None),
        ("environment!=a", None),
        ("environment notin (a)", None),
        ("!environment", None),
        ("environment=a", {"a"}),
        ("environment==a,cloud=aws", {"a"}),
        ("environment in (a,b)", {"a", "b"}),
        ("environment in (a,b),environment in (b,c)", {"b"}),
        ("environment=a,environment=b", set()),  # matches no agent at all
    ],
)
def test_reachable_environments(target: str, expected: set[str] | None) -> None:
    reachable = reachable_environments(parse_selector(target))
    assert (None if reachable is None else set(reachable)) == expected


def test_check_step_targets_names_the_step_and_the_allowed_environments() -> None:
    check_step_targets([("any#1", "cloud=aws")], ())  # unscoped: nothing to check
    check_step_targets([("in#1", "environment in (a,b)")], ("a", "b"))
    with pytest.raises(PermissionDenied) as raised:
        check_step_targets([("in#1", "environment=a"), ("out#1", "environment in (a,c)")], ("a",))
    assert str(raised.value).startswith("step 'out#1' targets environment(s) c; this run is "
                                        "scoped to environment(s) a: add")  # fmt: skip


def test_normalize() -> None:
    assert normalize(["b", " a", "b", "", "  "]) == ("a", "b")
