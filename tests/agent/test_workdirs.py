"""At start the agent removes the work dirs of attempts it no longer holds, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

from agent.workdirs import remove_stale_work_dirs

HELD = "0f4c2a7e-1b3d-4c5e-8f90-a1b2c3d4e5f6"
LEFT_BY_A_KILL = "9e8d7c6b-5a49-4837-a261-504f3e2d1c0b"


def test_only_the_dirs_of_attempts_not_held_are_removed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for attempt in (HELD, LEFT_BY_A_KILL):
        inputs = work / attempt / "inputs"
        inputs.mkdir(parents=True)
        (inputs / ("c" * 64 + ".part")).write_bytes(b"x" * 1024)
    (work / "runners" / "run-1-1").mkdir(parents=True)  # hosted runners: not attempts
    (work / ".meridian-probe").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    # A link named like an attempt is not followed (nor is one inside a removed dir).
    os.symlink(outside, work / "11111111-2222-4333-8444-555555555555")
    os.symlink(outside, work / LEFT_BY_A_KILL / "link")

    assert remove_stale_work_dirs(work, {HELD}) == 1

    assert sorted(p.name for p in work.iterdir()) == sorted(
        [HELD, "runners", ".meridian-probe", "11111111-2222-4333-8444-555555555555"]
    )
    assert (work / HELD / "inputs").is_dir()
    assert (outside / "keep").read_text() == "precious"


def test_a_missing_work_root_is_nothing_to_do(tmp_path: Path) -> None:
    assert remove_stale_work_dirs(tmp_path / "work", set()) == 0
