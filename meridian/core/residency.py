"""Data residency: may a step in one environment read a result produced in another?

An environment may declare a residency rule, a label selector in the syntax of
``meridian.core.selectors`` (``region in (eu-west-1,europe-west1)``, ``site=dc1``). Results
produced there may only be read by steps in environments whose labels match it. The consumer's
labels always include ``environment=<its name>``, so a rule can also name environments.

A rule may count only the labels agents' join tokens pinned (``pinned_labels_only``): an agent
can claim any label its token did not fix, so a rule that must hold against a compromised
site judges only what the operator fixed (plus the environment's name, which the agent's
certificate fixes).

A read in the producing environment itself is always allowed: the bytes do not move. This
module is pure; the control plane calls it at submission, at assignment and for transfers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meridian.core.errors import PermissionDenied, ValidationError
from meridian.core.selectors import ENVIRONMENT_LABEL, Selector, parse_selector, validate_value


class ResidencyRefused(PermissionDenied):
    """Reading a result from the consumer's environment would break the producer's rule."""


@dataclass(frozen=True)
class ResidencyRule:
    """The rule of ``environment``; ``selector`` is what a consumer's labels must match
    (only the labels pinned on its join token when ``pinned_labels_only``)."""

    environment: str
    selector: Selector
    pinned_labels_only: bool = False

    def __str__(self) -> str:
        return str(self.selector)

    @property
    def described(self) -> str:
        """The selector, and which labels count when that is not all of them."""
        return f"{self.selector} (pinned labels only)" if self.pinned_labels_only else str(self)

    def labels_judged(
        self, labels: Mapping[str, str], pinned: Mapping[str, str] | None
    ) -> Mapping[str, str]:
        """The labels of a reader this rule counts: all of them, or only the pinned ones."""
        return (pinned or {}) if self.pinned_labels_only else labels


@dataclass(frozen=True)
class ResidencyDecision:
    """``allowed``, or a refusal whose ``message`` names the producer, the rule and the reader."""

    allowed: bool
    message: str = ""

    def raise_if_refused(self) -> None:
        if not self.allowed:
            raise ResidencyRefused(self.message)


def parse_rule(
    environment: str, text: str, *, pinned_labels_only: bool = False
) -> ResidencyRule | None:
    """Parse ``environment``'s residency rule; ``None`` for an empty rule (no restriction).

    Raises:
        ValidationError: the environment name or the selector is invalid (the message says why).
    """
    _check_environment(environment)
    try:
        selector = parse_selector(text)
    except ValidationError as exc:
        raise ValidationError(f"residency rule of environment {environment!r}: {exc}") from None
    if selector.is_empty:
        return None
    return ResidencyRule(environment, selector, pinned_labels_only)


def consumer_labels(environment: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a rule is matched against: the environment's labels plus its name."""
    merged = dict(labels)
    merged[ENVIRONMENT_LABEL] = environment
    return merged


def may_read(
    rule: ResidencyRule | None,
    producer_environment: str,
    consumer_environment: str,
    consumer_env_labels: Mapping[str, str],
    consumer_pinned_labels: Mapping[str, str] | None = None,
) -> ResidencyDecision:
    """Decide whether a step in ``consumer_environment`` may read a result of the producer;
    ``consumer_pinned_labels`` are those of its labels a join token fixed (what a rule with
    ``pinned_labels_only`` counts)."""
    _check_environment(producer_environment)
    _check_environment(consumer_environment)
    if rule is not None and rule.environment != producer_environment:
        raise ValidationError(
            f"residency rule of environment {rule.environment!r} applied to a result of "
            f"{producer_environment!r}"
        )
    if rule is None or consumer_environment == producer_environment:
        return ResidencyDecision(True)
    judged = rule.labels_judged(consumer_env_labels, consumer_pinned_labels)
    labels = consumer_labels(consumer_environment, judged)
    if rule.selector.matches(labels):
        return ResidencyDecision(True)
    failed = [str(r) for r in rule.selector.requirements if not r.matches(labels)]
    which = " with the labels its join tokens pinned" if rule.pinned_labels_only else ""
    return ResidencyDecision(
        False,
        f"data residency: results of environment {producer_environment!r} may only be read "
        f"in environments matching {rule.described!r}; environment {consumer_environment!r} "
        f"does not satisfy {', '.join(repr(f) for f in failed)}{which}",
    )


def _check_environment(name: str) -> None:
    if not isinstance(name, str) or validate_value(name) is not None:
        raise ValidationError(f"{name!r} is not a valid environment name")
