"""``meridian.core.errorinfo.ErrorInfo``: its JSON form, and classes this version does not know."""

from __future__ import annotations

from meridian.core.errorinfo import ErrorClass, ErrorInfo

FULL = ErrorInfo(
    error_class=ErrorClass.TIMEOUT,
    type="builtins.TimeoutError",
    message="ran past 30 s",
    traceback="Traceback (most recent call last): ...",
    type_mro=("builtins.TimeoutError", "builtins.OSError", "builtins.Exception"),
)


def test_json_round_trip() -> None:
    assert ErrorInfo.from_json(FULL.to_json()) == FULL
    assert FULL.to_json()["type_mro"] == list(FULL.type_mro)


def test_an_error_class_this_version_does_not_know_is_kept() -> None:
    # A newer control plane may store a class this version lacks; it must load, unchanged.
    data = {**FULL.to_json(), "error_class": "quota_exhausted"}
    loaded = ErrorInfo.from_json(data)
    assert loaded.error_class == "quota_exhausted"
    assert loaded.to_json() == data


def test_missing_fields_load_as_empty() -> None:
    assert ErrorInfo.from_json({}) == ErrorInfo("", "", "")


def test_describe_is_class_type_message() -> None:
    assert FULL.describe() == "timeout: builtins.TimeoutError: ran past 30 s"
