"""The import rules of docs/architecture.md ("Layers") hold, and breaking one fails the check.

``.ci/run`` runs ``lint-imports`` with the contracts in ``pyproject.toml``. These tests run the
same command on the repository (it must pass) and on a copy of the sources with one
deliberate violation each (it must fail, naming the broken contract), so a contract that
silently stopped checking anything would be noticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deadlines import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("control_plane", "agent", "providers", "meridian", "protos")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # The sources under ``root`` come first on the path, ahead of the editable install.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("sources")
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return copy


def test_the_repository_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "control_plane/orchestration/rules.py",
            "import sqlalchemy",
            "Orchestration is pure",
        ),
        ("agent/journal.py", "import control_plane.store.db", "never import each other"),
        ("control_plane/api/views.py", "import control_plane.store.models", "no ORM model"),
        ("control_plane/store/db.py", "import control_plane.usecases.runs", "The store imports no"),
        ("meridian/core/spec.py", "import meridian.sdk.step", "never load the SDK"),
        ("control_plane/usecases/runs.py", "import control_plane.api.views", "layers"),
    ],
)
def test_a_deliberate_violation_fails_the_check(
    sources: Path, module: str, line: str, contract: str
) -> None:
    path = sources / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # deliberate violation\n")
    try:
        result = lint_imports(sources)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
