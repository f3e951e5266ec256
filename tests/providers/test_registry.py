"""providers.registry: the built-in fallback, and entry-point discovery from a real dist-info."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import ProviderError
from providers.process import ProcessProvider
from providers.registry import ENTRY_POINT_GROUP, available_provider_types, load_provider

PLUGIN = """\
from providers.base import Provider


class EchoProvider(Provider):
    type = "echo-test"

    async def submit(self, spec): ...
    async def wait(self, handle): ...
    def logs(self, handle): ...
    async def cancel(self, handle, grace_s): ...


class Misnamed(EchoProvider):
    type = "something-else"


NOT_A_PROVIDER = object()
"""


@pytest.fixture
def plugin_dist(tmp_path: Path) -> Iterator[Path]:
    """An installed third-party distribution, as pip would lay it out, on sys.path."""
    (tmp_path / "echo_plugin_mod.py").write_text(PLUGIN)
    dist = tmp_path / "echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "echo-test = echo_plugin_mod:EchoProvider\n"
        "misnamed = echo_plugin_mod:Misnamed\n"
        "not-a-provider = echo_plugin_mod:NOT_A_PROVIDER\n"
        "needs-extra = echo_plugin_needs_missing_sdk:Provider\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("echo_plugin_mod", None)


def test_builtin_process_provider_without_installation() -> None:
    provider = load_provider("process", {"kill_grace_s": 2})
    assert isinstance(provider, ProcessProvider)
    assert provider.kill_grace_s == 2.0
    assert "process" in available_provider_types()


def test_unknown_type_lists_available_types() -> None:
    with pytest.raises(ProviderError, match=r"unknown provider type 'nope'; available: .*process"):
        load_provider("nope")


def test_config_errors_surface_as_provider_errors() -> None:
    with pytest.raises(ProviderError, match="colour"):
        load_provider("process", {"colour": "blue"})


def test_entry_point_discovery(plugin_dist: Path) -> None:
    types = available_provider_types()
    assert {"echo-test", "process"} <= set(types)
    assert types == sorted(types)
    provider = load_provider("echo-test", {"a": 1})
    assert type(provider).__name__ == "EchoProvider"
    assert provider.config == {"a": 1}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("misnamed", "declares type 'something-else'"),
        ("not-a-provider", "not a Provider subclass"),
        ("needs-extra", "cannot be imported.*extra"),
    ],
)
def test_broken_entry_points_are_explained(plugin_dist: Path, name: str, message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        load_provider(name)


def test_plugin_gone_when_uninstalled() -> None:
    assert "echo-test" not in available_provider_types()
