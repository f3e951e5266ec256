"""``@flow`` and the ``Flow`` object.

A flow is a plain Python function whose body is orchestration logic: ifs, loops, try/except
around step calls, fan-out decided at run time. The decorator only records the function, its
name and its sealing key group (``seal``); ``meridian.sdk.runner.run_flow`` runs the body with a
flow context so that step calls are dispatched through the control plane. Called directly, a
flow is just its function (steps then run in-process), which keeps flows unit-testable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from meridian.core.errors import ValidationError
from meridian.sdk._options import check_concurrency, check_seal, location
from meridian.sdk.context import current_context
from meridian.sdk.subflows import run_subflow

P = ParamSpec("P")
R = TypeVar("R")


class Flow(Generic[P, R]):
    """A function decorated with ``@flow``."""

    __meridian_flow__ = True

    def __init__(
        self,
        fn: Callable[P, R],
        name: str | None = None,
        seal: str | None = None,
        subflow: bool = False,
        concurrency: str | list[str] | tuple[str, ...] | None = None,
    ) -> None:
        if not callable(fn):
            raise ValidationError(f"@flow must decorate a function, got {fn!r}")
        flow_name = name if name is not None else getattr(fn, "__name__", "")
        if not isinstance(flow_name, str) or not flow_name.strip() or len(flow_name) > 200:
            raise ValidationError(
                f"flow ({location(fn)}): name must be a non-empty string of at most "
                f"200 characters, got {flow_name!r}"
            )
        self.fn = fn
        self.name = flow_name.strip()
        checked = check_seal(seal, f"flow {self.name!r} ({location(fn)})", allow_false=False)
        # The key group of every step that does not choose its own, and of the run's own
        # result and error (docs/security.md).
        self.seal: str | None = checked if isinstance(checked, str) else None
        if not isinstance(subflow, bool):
            raise ValidationError(f"flow {self.name!r}: subflow must be True or False")
        # Called in a running flow body, it runs as a child run (``sdk.subflows``).
        self.subflow = subflow
        # Named global limits each run holds from before its body starts to its end.
        self.concurrency = check_concurrency(concurrency, f"flow {self.name!r} ({location(fn)})")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Flow {self.name} ({location(self.fn)})>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        parent = current_context() if self.subflow else None
        if parent is not None:
            result: R = run_subflow(parent, self, args, dict(kwargs))
            return result
        return self.fn(*args, **kwargs)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    seal: str | None = None,
    subflow: bool = False,
    concurrency: str | list[str] | tuple[str, ...] | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    seal: str | None = None,
    subflow: bool = False,
    concurrency: str | list[str] | tuple[str, ...] | None = None,
) -> Any:
    """Declare a flow: ``@flow`` or ``@flow(name="nightly-etl", seal="eu-sites")``.

    ``seal`` names the key group that seals every step's inputs and results (unless a step
    says ``seal=...`` itself) and the flow run's own result and error, so the control plane
    stores only ciphertext for them.

    ``subflow=True``: called inside another flow's running body, the flow runs as a child
    run of that run (its own steps, result and history, linked to the parent: cancelling
    the parent cancels it; a resumed parent reuses a child that completed). Called anywhere
    else it is its plain function.

    ``concurrency="db"`` (or a list of names): every run of the flow holds a slot of each
    named global limit (``meridian limits set db 1``) for its whole duration; a run waits
    PENDING, saying which limit it waits for, until it holds them. A deployment of the flow
    carries them too.
    """
    if fn is not None:
        return Flow(fn, name, seal)

    def decorate(func: Callable[P, R]) -> Flow[P, R]:
        return Flow(func, name, seal, subflow, concurrency)

    return decorate
