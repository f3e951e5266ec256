"""Label selectors in Kubernetes syntax: how a step says where it may run.

Grammar (whitespace allowed around every token)::

    selector    := "" | requirement ("," requirement)*
    requirement := key ("=" | "==" | "!=") value
                 | key ("in" | "notin") "(" value ("," value)* ")"
                 | key          (the label exists)
                 | "!" key      (the label does not exist)

Requirements are ANDed; the empty selector matches everything. Keys are ``[prefix/]name`` with a
DNS-subdomain prefix of up to 253 characters and a name of up to 63; values are up to 63
characters. Both use letters, digits, ``-``, ``_`` and ``.`` and start and end alphanumeric,
like Kubernetes labels, so selectors written for Kubernetes mean the same here.

This module is pure and shared by the SDK (early validation) and the control plane (matching).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NoReturn

from meridian.core.errors import SelectorError

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

# Every agent carries this label, set from its certificate: targets can name an environment.
ENVIRONMENT_LABEL = "environment"
MAX_SELECTOR_LENGTH = 4096
MAX_NAME_LENGTH = 63
MAX_PREFIX_LENGTH = 253
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
# Characters that may appear in a key or value token; validation of the shape comes after, so
# the error can say "invalid key" rather than "unexpected character".
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")
_WHITESPACE = " \t"
_QUOTE_LIMIT = 120


@dataclass(frozen=True)
class Requirement:
    """One clause of a selector. ``values`` is sorted and de-duplicated; empty for exists/!."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.operator == "exists":
            return value is not None
        if self.operator == "!":
            return value is None
        if self.operator in ("=", "in"):
            return value is not None and value in self.values
        # "!=" and "notin" match when the label is absent, as in Kubernetes.
        return value is None or value not in self.values

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return f"!{self.key}"
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """A parsed selector: the AND of its requirements, kept sorted by key for a canonical form."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def is_empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """Parse ``text`` into a :class:`Selector`.

    Raises:
        SelectorError: with the selector quoted and the position (0-based) of the problem.
    """
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(
            f"invalid target selector {_quote(text)}: longer than {MAX_SELECTOR_LENGTH} characters"
        )
    requirements = _Parser(text).parse()
    ordered = sorted(set(requirements), key=lambda r: (r.key, r.operator, r.values))
    return Selector(tuple(ordered))


def reserved_label_problem(key: str) -> str | None:
    """Why an agent or a join token may not set label ``key`` (None: it may).

    ``environment`` is set by the control plane from the agent's certificate; one claimed
    next to it would only mislead whoever reads ``agents list``."""
    if key == ENVIRONMENT_LABEL:
        return (
            f"label {ENVIRONMENT_LABEL!r} is reserved: the control plane sets it from the "
            "environment the agent was enrolled in"
        )
    return None


def validate_key(key: str) -> str | None:
    """Return why ``key`` is not a valid label key, or ``None`` if it is."""
    prefix, slash, name = key.rpartition("/")
    bad_prefix = not prefix or len(prefix) > MAX_PREFIX_LENGTH or not _PREFIX_RE.match(prefix)
    if slash and bad_prefix:
        return (
            f"key prefix {prefix!r} must be a lowercase DNS subdomain of at most "
            f"{MAX_PREFIX_LENGTH} characters"
        )
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        return (
            f"key name {name!r} must be 1-{MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def validate_value(value: str) -> str | None:
    """Return why ``value`` is not a valid label value, or ``None`` if it is."""
    if not value or len(value) > MAX_NAME_LENGTH or not _NAME_RE.match(value):
        return (
            f"value {value!r} must be 1-{MAX_NAME_LENGTH} letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _quote(text: str) -> str:
    shown = text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."
    # Escape control characters so the message stays on one line and cannot forge output.
    escaped = shown.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)
    return f'"{escaped}"'


class _Parser:
    """A recursive-descent parser over the selector text that remembers its position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, problem: str, pos: int | None = None) -> NoReturn:
        at = self.pos if pos is None else pos
        raise SelectorError(
            f"invalid target selector {_quote(self.text)}: {problem} at position {at}"
        )

    def found(self) -> str:
        return repr(self.text[self.pos]) if self.pos < len(self.text) else "end of selector"

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def word(self) -> tuple[str, int]:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _WORD_CHARS:
            self.pos += 1
        return self.text[start : self.pos], start

    def parse(self) -> list[Requirement]:
        self.skip_ws()
        if self.pos == len(self.text):
            return []
        requirements = [self.requirement()]
        while self.pos < len(self.text):
            # requirement() stops only at "," or the end.
            self.pos += 1
            requirements.append(self.requirement())
        return requirements

    def requirement(self) -> Requirement:
        self.skip_ws()
        if self.peek() in ("", ","):
            self.fail("empty requirement")
        if self.peek() == "!":
            self.pos += 1
            self.skip_ws()
            result = Requirement(self.key(), "!")
        else:
            result = self.after_key(self.key())
        self.skip_ws()
        if self.peek() not in ("", ","):
            self.fail(f"expected ',' or end of selector, found {self.found()}")
        return result

    def key(self) -> str:
        key, start = self.word()
        if not key:
            self.fail(f"expected a label key, found {self.found()}")
        problem = validate_key(key)
        if problem is not None:
            self.fail(problem, start)
        return key

    def after_key(self, key: str) -> Requirement:
        self.skip_ws()
        rest = self.text[self.pos :]
        operators: tuple[tuple[str, Operator], ...] = (("==", "="), ("!=", "!="), ("=", "="))
        for token, equality in operators:
            if rest.startswith(token):
                self.pos += len(token)
                return Requirement(key, equality, (self.value(),))
        if self.peek() in ("", ","):
            return Requirement(key, "exists")
        word, start = self.word()
        if word in ("in", "notin"):
            membership: Operator = "in" if word == "in" else "notin"
            return Requirement(key, membership, self.value_set())
        found = repr(word) if word else self.found()
        expected = "expected '=', '==', '!=', 'in', 'notin', ',' or end of selector"
        self.fail(f"{expected} after key {key!r}, found {found}", start)

    def value(self) -> str:
        self.skip_ws()
        value, start = self.word()
        if not value:
            self.fail(f"expected a value, found {self.found()}")
        problem = validate_value(value)
        if problem is not None:
            self.fail(problem, start)
        return value

    def value_set(self) -> tuple[str, ...]:
        self.skip_ws()
        if self.peek() != "(":
            self.fail(f"expected '(' to start the value list, found {self.found()}")
        self.pos += 1
        values = {self.value()}
        while True:
            self.skip_ws()
            if self.peek() == ")":
                self.pos += 1
                return tuple(sorted(values))
            if self.peek() != ",":
                self.fail(f"expected ',' or ')' in the value list, found {self.found()}")
            self.pos += 1
            values.add(self.value())
