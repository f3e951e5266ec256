"""Helpers of tests/integration/test_hybrid_estate.py: an ``Estate`` whose agents start with
``--provider TYPE --config FILE`` (the way a real agent gets its provider's endpoint and
credentials), and a small writer of those agent config files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.integration.harness import Estate


def write_agent_config(path: Path, provider: str, section: Mapping[str, Any]) -> Path:
    """Write a TOML agent config with one ``[providers.<provider>]`` section.

    The values used here are strings, numbers, booleans and lists of strings, whose JSON
    spelling is also valid TOML.
    """
    lines = [f'[providers."{provider}"]']
    lines += [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ProviderEstate(Estate):
    """An ``Estate`` whose agents each offer one provider configured by a config file."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self._agent_providers: dict[str, tuple[str, Path]] = {}

    def add_provider_agent(
        self,
        environment: str,
        labels: Mapping[str, str],
        provider: str,
        config_file: Path,
        *,
        capacity: int = 4,
    ) -> str:
        """Enroll and start an agent with ``--provider provider --config config_file``."""
        name = f"{environment}-agent"
        self._agent_providers[name] = (provider, config_file)
        return self.add_agent(environment, labels, capacity=capacity, name=name)

    def start_agent(
        self, name: str, environment: str, labels: Mapping[str, str], *, capacity: int = 4
    ) -> None:
        if name not in self._agent_providers:
            super().start_agent(name, environment, labels, capacity=capacity)
            return
        provider, config_file = self._agent_providers[name]
        args = [
            "agent",
            "start",
            "--control-plane",
            self.address,
            "--ca-file",
            str(self.ca_file),
            "--environment",
            environment,
            "--data-dir",
            str(self.root / "agents" / name),
            "--provider",
            provider,
            "--config",
            str(config_file),
            "--capacity",
            str(capacity),
            "--drain-grace",
            "5",
        ]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        self._agent_labels[name] = dict(labels)
        self.agents[name] = self._spawn(f"agent-{name}", args)
        self.wait_until(lambda: self._connected(name), f"agent {name} to connect")


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` (cleanup in a backend is asynchronous) until it holds or fail."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
