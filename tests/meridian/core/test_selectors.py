from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.core.errors import SelectorError
from meridian.core.selectors import Requirement, Selector, parse_selector

LABELS = {"cloud": "aws", "region": "eu-west-1", "gpu": "true", "example.com/tier": "gold"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   ", True),
        ("cloud=aws", True),
        ("cloud==aws", True),
        ("cloud = aws", True),
        ("cloud=gcp", False),
        ("cloud!=gcp", True),
        ("cloud!=aws", False),
        ("zone!=a", True),  # absent label satisfies !=
        ("region in (eu-west-1, us-east-1)", True),
        ("region in (us-east-1)", False),
        ("region notin (us-east-1)", True),
        ("region notin (eu-west-1)", False),
        ("zone notin (a)", True),
        ("gpu", True),
        ("zone", False),
        ("!zone", True),
        ("!gpu", False),
        ("example.com/tier=gold", True),
        ("cloud=aws,region=eu-west-1,gpu", True),
        ("cloud=aws,region=us-east-1", False),
    ],
)
def test_matching(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


def test_canonical_form_sorts_and_normalises() -> None:
    selector = parse_selector(" region in (b, a, b) , cloud==aws,!gpu , cloud==aws")
    assert str(selector) == "cloud=aws,!gpu,region in (a,b)"
    assert selector.requirements == tuple(sorted(selector.requirements, key=lambda r: r.key))
    assert Requirement("region", "in", ("a", "b")) in selector.requirements
    assert len(selector.requirements) == 3
    assert parse_selector(str(selector)) == selector


def test_empty_selector() -> None:
    assert parse_selector("") == Selector(())
    assert parse_selector("").is_empty
    assert str(parse_selector("")) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "cloud=aws,,region",
            'invalid target selector "cloud=aws,,region": empty requirement at position 10',
        ),
        ("cloud=aws,", "empty requirement at position 10"),
        (",", "empty requirement at position 0"),
        ("cloud=", "expected a value, found end of selector at position 6"),
        ("cloud in ()", "expected a value, found ')' at position 10"),
        (
            "cloud in (a",
            "expected ',' or ')' in the value list, found end of selector at position 11",
        ),
        ("cloud in a", "expected '(' to start the value list, found 'a' at position 9"),
        (
            "cloud ~ aws",
            "expected '=', '==', '!=', 'in', 'notin', ',' or end of selector after key",
        ),
        ("cloud=aws region=x", "expected ',' or end of selector, found 'r' at position 10"),
        ("=aws", "expected a label key, found '=' at position 0"),
        ("!", "expected a label key, found end of selector at position 1"),
        ("cloud=a/b", "value 'a/b' must be 1-63"),
        ("cloud=" + "x" * 64, "value 'xxx"),
        ("-cloud=aws", "key name '-cloud' must be"),
        ("Example.com/x=y", "key prefix 'Example.com' must be a lowercase DNS subdomain"),
        ("/x=y", "key prefix '' must be"),
        ("x" * 5000, "longer than 4096 characters"),
    ],
)
def test_errors_say_where_and_what(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid target selector ")


def test_error_message_escapes_control_characters() -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector("a=b\n,c\x00")
    assert "\n" not in str(info.value)
    assert "\x00" not in str(info.value)


def test_long_keys_with_prefix_are_accepted() -> None:
    key = "a" * 200 + ".example.com/" + "n" * 63
    assert parse_selector(f"{key}=v").matches({key: "v"})


# ---- properties ------------------------------------------------------------------------

_alnum = st.text(alphabet="abcxyzXY019", min_size=1, max_size=4)
_names = st.one_of(
    _alnum, st.builds(lambda a, mid, b: a + mid + b, _alnum, st.text("ab-_.9", max_size=4), _alnum)
)
_prefixes = st.lists(st.text("abz09", min_size=1, max_size=6), min_size=1, max_size=3).map(".".join)
_keys = st.one_of(_names, st.builds(lambda p, n: f"{p}/{n}", _prefixes, _names))
_ws = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def _requirement_texts(draw: st.DrawFn) -> str:
    key = draw(_keys)
    kind = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    sp = draw(_ws)
    if kind == "exists":
        return key
    if kind == "!":
        return f"!{sp}{key}"
    if kind in ("in", "notin"):
        values = draw(st.lists(_names, min_size=1, max_size=4))
        return f"{key} {kind}{sp}({','.join(values)})"
    return f"{key}{sp}{kind}{sp}{draw(_names)}"


_selector_texts = st.lists(_requirement_texts(), max_size=5).map(",".join)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_selector_texts)
def test_valid_selectors_round_trip_through_canonical_form(text: str) -> None:
    selector = parse_selector(text)
    assert parse_selector(str(selector)) == selector
    assert str(parse_selector(str(selector))) == str(selector)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(_selector_texts, st.dictionaries(_keys, _names, max_size=5))
def test_canonical_form_matches_like_the_original(text: str, labels: dict[str, str]) -> None:
    selector = parse_selector(text)
    assert parse_selector(str(selector)).matches(labels) == selector.matches(labels)


_alphabet = st.sampled_from([*"ab=!,() \t-_./9in\nZ", "in", "notin", "!=", "=="])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=40), st.lists(_alphabet, max_size=20).map("".join)))
def test_random_text_raises_only_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        assert "invalid target selector" in str(exc)
        return
    assert parse_selector(str(selector)) == selector
