"""The hosted runner's settings from its environment (``meridian.flowexec``)."""

from __future__ import annotations

from pathlib import Path

from meridian.flowexec import PREFIX, config_from_env


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    names = {"RUN_ID": "r1", "EPOCH": "2", "ADDRESS": "cp:7001", "CA_FILE": "ca.crt"}
    base = {PREFIX + k: v for k, v in names.items()}
    base |= {PREFIX + "TOKEN": "t", PREFIX + "BUNDLE_DIR": str(tmp_path)}
    return {**base, PREFIX + "ENTRYPOINT": "flows.py:f", **extra}


def test_the_agents_environment_reaches_the_config(tmp_path: Path) -> None:
    config = config_from_env(_env(tmp_path, MERIDIAN_FLOWEXEC_ENVIRONMENT="dc1"))
    assert (config.run_id, config.epoch, config.environment) == ("r1", 2, "dc1")


def test_an_agent_that_does_not_say_leaves_it_none(tmp_path: Path) -> None:
    assert config_from_env(_env(tmp_path)).environment is None
