from __future__ import annotations

import pytest

from control_plane.auth.join_tokens import (
    hash_secret,
    new_join_token,
    parse_join_token,
    verify_secret,
)
from meridian.core.errors import ValidationError


def test_new_token_parses_back_and_verifies() -> None:
    token_id, plaintext, stored = new_join_token()
    assert plaintext.startswith(f"mjt_{token_id}.")
    parsed_id, secret = parse_join_token(plaintext)
    assert parsed_id == token_id
    assert stored == hash_secret(secret)
    assert verify_secret(secret, stored)
    assert secret not in stored


def test_tokens_are_unique() -> None:
    tokens = {new_join_token()[1] for _ in range(50)}
    assert len(tokens) == 50


def test_surrounding_whitespace_is_tolerated() -> None:
    _, plaintext, _ = new_join_token()
    assert parse_join_token(f"  {plaintext}\n") == parse_join_token(plaintext)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "mjt_",
        "abc.def",
        "mjt_0123456789abcdef",
        "mjt_0123456789abcdef.short",
        "mjt_0123456789ABCDEF." + "a" * 43,
        "xyz_0123456789abcdef." + "a" * 43,
        "mjt_0123456789abcdef." + "a" * 42 + "=",
        "mjt_0123456789abcdef." + "a" * 44,
    ],
)
def test_malformed_tokens_are_rejected_without_echoing_them(text: str) -> None:
    with pytest.raises(ValidationError, match="malformed join token") as info:
        parse_join_token(text)
    if len(text) > 10:
        assert text not in str(info.value)


def test_wrong_secret_or_bad_hash_does_not_verify() -> None:
    _, plaintext, stored = new_join_token()
    _, secret = parse_join_token(plaintext)
    _, other_plaintext, _ = new_join_token()
    assert not verify_secret(parse_join_token(other_plaintext)[1], stored)
    assert not verify_secret(secret, "")
    assert not verify_secret(secret, stored.upper())
    assert not verify_secret(secret, stored[:-1])
