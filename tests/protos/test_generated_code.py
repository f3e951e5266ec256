"""The committed generated code must be exactly what `python -m protos.generate` produces."""

from __future__ import annotations

from pathlib import Path

from protos import generate


def test_committed_code_matches_generator(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    produced = sorted((tmp_path / "protos" / "meridian" / "v1").glob("*_pb2*.py*"))
    assert produced, "the generator produced nothing"
    for fresh in produced:
        committed = generate.PROTO_DIR / fresh.name
        assert committed.exists(), f"{fresh.name} is generated but not committed"
        assert committed.read_text() == fresh.read_text(), (
            f"{fresh.name} differs from the generator's output; run `python -m protos.generate`"
        )
    committed_names = {p.name for p in generate.PROTO_DIR.glob("*_pb2*.py*")}
    assert committed_names == {p.name for p in produced}, "stale generated files are committed"
