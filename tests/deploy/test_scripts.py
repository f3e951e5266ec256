"""Shell scripts under deploy/ are valid bash, and runnable however they are invoked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.artefacts import DEPLOY, relative

SCRIPTS = sorted(DEPLOY.rglob("*.sh"))


def test_there_are_scripts_to_check() -> None:
    assert SCRIPTS, "the glob found nothing: did deploy/ move?"


@pytest.mark.parametrize("script", SCRIPTS, ids=relative)
def test_script_parses_with_bash(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=relative)
def test_script_is_strict_and_executable(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    # Fail on the first error, instead of enrolling with an empty token.
    assert "set -euo pipefail" in lines
    assert os.access(script, os.X_OK), f"chmod +x {relative(script)}"
