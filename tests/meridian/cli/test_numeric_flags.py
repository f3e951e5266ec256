"""Every numeric flag is parsed with its bounds: a clear one-line error, never an exception
from the protocol (a uint32 field cannot take -1) or from datetime arithmetic."""

from __future__ import annotations

import pytest

ENTRY = "flows.py:etl"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deploy", ENTRY, "--name", "d", "--concurrency", "-1"], "from 0 to 10000"),
        (["deploy", ENTRY, "--name", "d", "--concurrency", "99999999999999999999"], "0 to 10000"),
        (["deploy", ENTRY, "--name", "d", "--max-runner-resumes", "-5"], "from 0 to 100"),
        (["limits", "set", "neg", "-1"], "from 0 to 10000"),
        (["limits", "set", "huge", "99999999999999"], "from 0 to 10000"),
        (["deployments", "show", "x", "--version", "-1"], "from 0 to 4294967295"),
        (["runs", "list", "--limit", "99999999999"], "<= 4294967295"),
        (["runs", "list", "--limit", "0"], ">= 1"),
        (["tokens", "create", "--environment", "e", "--ttl", "99999999999999"], "at most"),
        (["tokens", "create", "--environment", "e", "--ttl", "nan"], "at most"),
    ],
)
def test_out_of_range_numbers_are_refused_clearly(cli, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli(*argv)
    assert result.code != 0
    assert message in result.err and "unexpected" not in result.err, result.err


def test_an_api_token_ttl_beyond_ten_years_is_refused(cli, tmp_path) -> None:
    result = cli(
        "api-tokens", "create", "--data-dir", str(tmp_path), "--role", "admin",
        "--ttl", "99999999999999",
    )  # fmt: skip
    assert result.code == 2 and "expected at most" in result.err
    assert "unexpected" not in result.err
