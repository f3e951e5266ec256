"""Environment scopes of API tokens and of the runs they trigger: the rules, as pure functions.

A *scope* is a tuple of environment names; the empty tuple means "not scoped" (every
environment). A run records the scope of the token that triggered it, and the runner token
minted for the run carries the run's scope. One rule decides both what a token may see of runs
and what it may grant (see docs/security.md, "Environment scopes"):

    a caller scoped to E covers a thing scoped to S  iff  E is empty, or S is not empty and
    S is a subset of E.

So an unscoped run (one an unscoped token triggered) is visible to unscoped tokens only: what it
may target was never limited, and whether it stays inside E could change with every step it
submits, so visibility would change under a viewer's feet.

Steps of a scoped run must name their environments: a selector reaches only the environments
its ``environment=...`` / ``environment in (...)`` requirements allow (every agent carries the
label ``environment`` from its certificate), and a step whose selector does not bound that
label could run anywhere, so it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meridian.core.errors import PermissionDenied
from meridian.core.selectors import ENVIRONMENT_LABEL, Selector, parse_selector

Scope = tuple[str, ...]


def normalize(environments: Iterable[str]) -> Scope:
    """The canonical form stored on runs and tokens: sorted, without duplicates or blanks."""
    return tuple(sorted({e.strip() for e in environments if e.strip()}))


def covers(caller: Sequence[str], scope: Sequence[str]) -> bool:
    """Whether a caller scoped to ``caller`` may see (or grant) something scoped to ``scope``."""
    return not caller or (bool(scope) and set(scope) <= set(caller))


def reachable_environments(selector: Selector) -> frozenset[str] | None:
    """The environments a step with ``selector`` could run in; ``None`` when not bounded."""
    reachable: frozenset[str] | None = None
    for requirement in selector.requirements:
        if requirement.key == ENVIRONMENT_LABEL and requirement.operator in ("=", "in"):
            values = frozenset(requirement.values)
            reachable = values if reachable is None else reachable & values
    return reachable


def check_step_targets(targets: Iterable[tuple[str, str]], scope: Sequence[str]) -> None:
    """Refuse any ``(step key, target selector)`` that could run outside ``scope``.

    Raises:
        PermissionDenied: naming the step, its target and the environments allowed.
    """
    if not scope:
        return
    allowed = set(scope)
    for key, target in targets:
        reachable = reachable_environments(parse_selector(target))
        if reachable is not None and reachable <= allowed:
            continue
        step = f"step {key[:200]!r}"
        shown = f'target "{target[:200]}"' if target else "no target"
        if reachable is None:
            problem = f"{step} has {shown}, which does not limit the environment"
        else:
            problem = f"{step} targets environment(s) {', '.join(sorted(reachable - allowed))}"
        raise PermissionDenied(
            f"{problem}; this run is scoped to environment(s) {', '.join(scope)}: add "
            f'"environment=<name>" or "environment in (<name>, ...)" to the step\'s target'
        )
