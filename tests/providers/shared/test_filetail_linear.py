"""FileTail follows floods in linear time and bounded memory."""

from __future__ import annotations

from pathlib import Path

from providers.shared.filetail import MAX_LOG_LINE_BYTES, FileTail


def test_a_large_file_of_short_lines_is_read_in_bounded_chunks(tmp_path: Path) -> None:
    # 48 MB of short lines: the old tail re-sliced its whole buffer once per line (quadratic:
    # about 10^12 bytes copied here); this one cuts lines by offset, a chunk at a time.
    path = tmp_path / "out.log"
    line = b"0123456789" * 4 + b"\n"
    with open(path, "wb") as fh:
        for _ in range(48):
            fh.write(line * (1024 * 1024 // len(line)))
    tail = FileTail("stdout", path, read_chunk_bytes=1024 * 1024)
    total, reads = 0, 0
    while True:
        records = tail.read()
        reads += 1
        total += len(records)
        assert len(tail._buf) <= MAX_LOG_LINE_BYTES  # never more than a partial line kept
        if not tail.more:
            break
    total += len(tail.finish())
    tail.close()
    assert total == 48 * (1024 * 1024 // len(line))
    assert reads >= 48  # one bounded chunk per read


def test_long_lines_are_cut_without_splitting_characters_and_the_rest_is_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.log"
    path.write_bytes("é".encode() * MAX_LOG_LINE_BYTES + b"\nlast without newline")
    tail = FileTail("stderr", path)
    records = tail.read() + tail.finish()
    assert all(len(r.text.encode()) <= MAX_LOG_LINE_BYTES for r in records)
    assert "".join(r.text for r in records[:-1]) == "é" * MAX_LOG_LINE_BYTES
    assert records[-1].text == "last without newline"
    assert all(r.stream == "stderr" for r in records)
