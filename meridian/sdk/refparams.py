"""Flow parameters that are stored results of earlier runs (docs/user-guide.md, "Passing a
stored result as a parameter").

``meridian run FILE:FLOW -p data=@result:RUN/STEP`` sends the parameter as the stored result's
marker (``{"$meridian_ref": ...}``) in the run's parameters, not its bytes. Binding checks the
marker and that the parameter may hold a reference (:func:`stored_param`); the flow body then
receives a :class:`meridian.ResultRef` (:func:`with_result_refs`). Passing it to a step goes
through the control plane's usual check: the reference must be one it recorded, in a run the
caller may read.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from meridian.core import resultref
from meridian.core.errors import ValidationError
from meridian.sdk.results import ResultRef


def stored_param(name: str, value: Any, annotation: Any) -> dict[str, Any]:
    """``value`` (a stored result's marker) for the parameter ``name`` annotated
    ``annotation``: checked, returned as it is (the run's parameters stay JSON).

    Raises:
        ValidationError: ``value`` is not a valid marker, or the annotation cannot hold a
            ``ResultRef`` (``count: int`` given ``@result:...``).
    """
    try:
        ref = resultref.marker_ref(value)
    except ValidationError as exc:
        raise ValidationError(f"parameter {name!r}: {exc}") from None
    if ref is None:
        raise ValidationError(
            f"parameter {name!r}: expected text or a stored result's marker, "
            f"got {type(value).__name__}"
        )
    if not _holds_a_ref(annotation):
        raise ValidationError(
            f"parameter {name!r} is annotated {_name_of(annotation)}, but a stored result "
            "arrives as meridian.ResultRef: annotate it ResultRef (or not at all)"
        )
    return resultref.ref_marker(ref)


def with_result_refs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The flow body's arguments: each marker in ``params`` (at any depth) replaced by a
    ``ResultRef``. It names no producing step of this run, so it is passed to steps rather
    than downloaded here (``ResultRef.load`` says so).

    Raises:
        ValidationError: a malformed marker (a dict with ``$meridian_ref`` and other keys).
    """
    return {
        name: resultref.replace_ref_markers(value, lambda ref: ResultRef.of(ref, "", ""))
        for name, value in params.items()
    }


def _holds_a_ref(annotation: Any) -> bool:
    if annotation in (inspect.Parameter.empty, Any, object) or isinstance(annotation, str):
        return True  # unannotated, or a name only imported under TYPE_CHECKING
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_holds_a_ref(member) for member in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, resultref.ResultRef)


def _name_of(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)
