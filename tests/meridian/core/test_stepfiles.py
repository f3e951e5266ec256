"""spec.json's "result" and "input_files" and outcome.json's "result_file": strict values."""

from __future__ import annotations

from typing import Any

import pytest

from meridian.core.resultref import INLINE_THRESHOLD_BYTES, MAX_INLINE_THRESHOLD_BYTES
from meridian.core.stepfiles import (
    InputFile,
    ResultFile,
    ResultPolicy,
    StepFileError,
    input_files_from_value,
    spec_fields,
)

DIGEST = "cd" * 32


def test_a_step_policy_comes_from_its_spec_fields() -> None:
    default = ResultPolicy.for_step(result_store="", inline_threshold_bytes=0, serializer="")
    assert default == ResultPolicy(INLINE_THRESHOLD_BYTES, False, "", False)
    stored = ResultPolicy.for_step(
        result_store="scratch", inline_threshold_bytes=1024, serializer="pickle"
    )
    assert stored == ResultPolicy(1024, True, "pickle", True)
    assert ResultPolicy.from_value(stored.to_value()) == stored


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"inline_threshold": 1}, "keys"),
        ([], "keys"),
        ({**ResultPolicy().to_value(), "inline_threshold": True}, "inline_threshold"),
        ({**ResultPolicy().to_value(), "inline_threshold": -1}, "inline_threshold"),
        (
            {**ResultPolicy().to_value(), "inline_threshold": MAX_INLINE_THRESHOLD_BYTES + 1},
            "inline_threshold",
        ),
        ({**ResultPolicy().to_value(), "by_reference": 1}, "booleans"),
        ({**ResultPolicy().to_value(), "serializer": "yaml"}, "serializer"),
        ({**ResultPolicy().to_value(), "serializer": 3}, "string"),
        ({**ResultPolicy().to_value(), "serializer": "pickle"}, "allow_pickle"),
    ],
)
def test_malformed_policies_are_refused(raw: Any, match: str) -> None:
    with pytest.raises(StepFileError, match=match):
        ResultPolicy.from_value(raw)


def _input(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"path": "/in/x", "serializer": "json", "size": 3, "sha256": DIGEST}
    value.update(changes)
    return value


def test_input_files_are_keyed_by_their_own_digest() -> None:
    files = input_files_from_value({DIGEST: _input()})
    assert files == {DIGEST: InputFile("/in/x", "json", 3, DIGEST)}
    with pytest.raises(StepFileError, match="names another sha256"):
        input_files_from_value({"ef" * 32: _input()})


@pytest.mark.parametrize(
    "bad",
    [
        _input(path="relative/x"),
        _input(path="/in/\0x"),
        _input(serializer="yaml"),
        _input(size=True),
        _input(size=-1),
        _input(sha256=DIGEST.upper()),
        {"path": "/in/x"},
    ],
)
def test_malformed_input_files_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(StepFileError):
        input_files_from_value({DIGEST: bad})


def test_result_file_paths_are_plain_names_inside_the_work_dir() -> None:
    good = ResultFile("result.bin", 10, DIGEST, "parquet")
    assert ResultFile.from_value(good.to_value()) == good
    for path in ("../result.bin", "sub/result.bin", "/tmp/result.bin", ".hidden", "..", ""):
        with pytest.raises(StepFileError, match="plain file name"):
            ResultFile(path, 10, DIGEST, "json")
    with pytest.raises(StepFileError, match="size"):
        ResultFile("result.bin", False, DIGEST, "json")
    with pytest.raises(StepFileError, match="keys"):
        ResultFile.from_value({**good.to_value(), "extra": 1})


def test_spec_fields_carry_only_what_is_set() -> None:
    assert spec_fields(None, {}) == {}
    files = {DIGEST: InputFile("/in/x", "json", 3, DIGEST)}
    fields = spec_fields(ResultPolicy(), files)
    assert fields["result"] == ResultPolicy().to_value()
    assert input_files_from_value(fields["input_files"]) == files
