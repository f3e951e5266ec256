"""Whole-file replacement: concurrent writers of one file never break each other."""

from __future__ import annotations

import threading
from pathlib import Path

from meridian.core.durable import replace_file


def test_concurrent_writers_each_land_whole_and_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "state" / "runners.json"
    writes = {f"writer-{i}".encode() * 1000 for i in range(8)}
    start = threading.Barrier(len(writes))
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        start.wait()
        try:
            for _ in range(20):
                replace_file(target, data)
        except BaseException as exc:  # collected: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(data,)) for data in writes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in writes
    assert [p.name for p in target.parent.iterdir()] == ["runners.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    replace_file(target, b"old")
    try:
        replace_file(target, "not bytes")  # type: ignore[arg-type]
    except TypeError:
        pass
    else:
        raise AssertionError("writing a str must fail")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
