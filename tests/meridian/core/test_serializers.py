"""Serializers: JSON by default, parquet for tables, pickle only by explicit trust."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from meridian.core.errors import PermissionDenied
from meridian.core.serializers import SerializerError, UntrustedSerializer, choose, dump, load


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and other.x == self.x

    def __hash__(self) -> int:
        return self.x


def test_json_round_trip(tmp_path: Path) -> None:
    value = {"rows": [1, 2.5, None, True, "é"], "nested": {"a": []}}
    path = tmp_path / "r"
    assert dump(value, path) == "json"
    assert json.loads(path.read_text("utf-8")) == value
    assert load(path, "json") == value


def test_json_refuses_nan_and_objects(tmp_path: Path) -> None:
    with pytest.raises(SerializerError, match="not JSON-serializable"):
        dump(math.nan, tmp_path / "nan")
    with pytest.raises(SerializerError, match="opt in to pickle"):
        dump(_Point(1), tmp_path / "obj")
    (tmp_path / "bad").write_text("[NaN]")
    with pytest.raises(SerializerError, match="not valid JSON"):
        load(tmp_path / "bad", "json")


def test_pickle_needs_opt_in_to_write_and_trust_to_read(tmp_path: Path) -> None:
    path = tmp_path / "p"
    with pytest.raises(SerializerError, match="opt-in"):
        dump(_Point(3), path, "pickle")
    assert dump(_Point(3), path, "pickle", allow_pickle=True) == "pickle"
    with pytest.raises(UntrustedSerializer, match="runs code") as info:
        load(path, "pickle")
    assert isinstance(info.value, PermissionDenied)
    assert load(path, "pickle", trusted={"pickle"}) == _Point(3)
    # Trusting pickle does not imply trusting anything else.
    with pytest.raises(UntrustedSerializer):
        load(path, "json", trusted={"pickle"})


def test_default_choice_never_picks_pickle() -> None:
    assert choose(_Point(1)) == "json"
    assert choose(_Point(1), allow_pickle=True) == "json"
    with pytest.raises(SerializerError, match="unknown serializer"):
        choose(1, "yaml")
    with pytest.raises(SerializerError, match="DataFrames and pyarrow Tables"):
        choose([1], "parquet")


def test_unknown_serializer_on_read(tmp_path: Path) -> None:
    with pytest.raises(SerializerError, match="unknown serializer 'yaml'"):
        load(tmp_path / "x", "yaml", trusted={"yaml"})


def test_dataframe_round_trips_by_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="install meridian-orchestrator[results-arrow]")
    pytest.importorskip("pyarrow", reason="install meridian-orchestrator[results-arrow]")
    frame = pd.DataFrame({"city": ["Paris", "Lyon"], "temp": [11.5, 13.0]}, index=[10, 20])
    path = tmp_path / "df"
    assert dump(frame, path) == "parquet"
    assert path.read_bytes()[:4] == b"PAR1"
    back = load(path, "parquet")
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame)


def test_arrow_table_round_trips_as_a_table(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="install meridian-orchestrator[results-arrow]")
    table = pa.table({"n": list(range(1000)), "s": [str(i) for i in range(1000)]})
    path = tmp_path / "t"
    assert dump(table, path) == "parquet"
    back = load(path, "parquet")
    assert isinstance(back, pa.Table)
    assert back.equals(table)


def test_corrupt_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="install meridian-orchestrator[results-arrow]")
    (tmp_path / "bad").write_bytes(b"not parquet at all")
    with pytest.raises(SerializerError, match="not valid parquet"):
        load(tmp_path / "bad", "parquet")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    # A real interpreter in which importing pyarrow fails, as on a site without the extra.
    (tmp_path / "f").write_bytes(b"PAR1")
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from meridian.core.serializers import load, SerializerError\n"
        "try:\n    load(sys.argv[1], 'parquet')\n"
        "except SerializerError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "needs pyarrow" in out and "results-arrow" in out


@pytest.mark.parametrize("value", [b"\x00\xffraw", bytearray(b"abc"), memoryview(b"xyz" * 3)])
def test_bytes_like_values_are_stored_as_they_are_and_read_back_as_bytes(
    tmp_path: Path, value: bytes | bytearray | memoryview
) -> None:
    path = tmp_path / "result.bin"
    assert dump(value, path) == "bytes"
    assert path.read_bytes() == bytes(value)
    assert load(path, "bytes") == bytes(value)


def test_bytes_larger_than_one_write_piece_round_trip(tmp_path: Path) -> None:
    value = bytes(range(256)) * (5 * 4096 + 7)  # about 5 MiB, not a multiple of a piece
    path = tmp_path / "big.bin"
    assert dump(value, path) == "bytes"
    assert load(path, "bytes") == value


def test_bytes_serializer_refuses_other_values(tmp_path: Path) -> None:
    with pytest.raises(SerializerError, match="bytes serializes bytes"):
        choose({"a": 1}, "bytes")
    assert choose(b"x") == "bytes"
    assert choose("text") == "json"
