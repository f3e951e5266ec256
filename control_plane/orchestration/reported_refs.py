"""Whether an agent may report a result reference: a pure check of the report against the
agent's environment and the result stores it advertised.

A reference tells consumers where to read a result, so an agent may only point at its own
environment's stores: a reference into another environment (or a store the agent never
advertised) could make a consumer read an object its producer never wrote.
"""

from __future__ import annotations

from collections.abc import Collection

from control_plane.orchestration.values import ReportIn
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef
from meridian.core.states import AttemptState


def checked_result_ref(
    report: ReportIn, environment: str, result_stores: Collection[str]
) -> ResultRef:
    """The reference a finish report carries, parsed strictly and checked against its agent:
    a successful outcome without JSON, the agent's own environment, a store it advertised.

    Raises:
        ValidationError: what is wrong with it.
    """
    ref = ResultRef.from_json(report.result_ref_json)
    if report.outcome != AttemptState.SUCCEEDED or report.result_json:
        raise ValidationError(
            "a result reference comes only with a successful outcome and no result_json"
        )
    if ref.environment != environment:
        raise ValidationError(
            f"result reference names environment {ref.environment!r}; the agent is in "
            f"{environment!r}"
        )
    if ref.store not in result_stores:
        advertised = ", ".join(sorted(result_stores)) or "none"
        raise ValidationError(
            f"result reference names store {ref.store!r}, which the agent did not advertise "
            f"(its stores: {advertised})"
        )
    return ref
