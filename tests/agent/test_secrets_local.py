"""env: and file: resolvers for real, and the SecretStore's per-attempt semantics."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import agent.secrets
from agent.secrets import (
    EnvResolver,
    FileResolver,
    SecretConfigError,
    SecretNotFound,
    SecretStore,
    SecretUnavailable,
)


def test_public_surface_is_pinned() -> None:
    assert sorted(agent.secrets.__all__) == [
        "AwsSecretsManagerResolver",
        "AwsSmConfig",
        "AzureKeyVaultResolver",
        "AzureKvConfig",
        "EnvResolver",
        "FileResolver",
        "GcpSecretManagerResolver",
        "GcpSmConfig",
        "Redactor",
        "ResolvedSecrets",
        "SecretConfigError",
        "SecretEnv",
        "SecretError",
        "SecretNotFound",
        "SecretResolver",
        "SecretStore",
        "SecretUnavailable",
        "redact_report",
    ]


# ---- env: ---------------------------------------------------------------------------------


def test_env_reads_the_agents_environment_live(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = EnvResolver()
    monkeypatch.setenv("MERIDIAN_TEST_SECRET_X", "first")
    assert resolver.resolve("MERIDIAN_TEST_SECRET_X") == "first"
    monkeypatch.setenv("MERIDIAN_TEST_SECRET_X", "rotated")
    assert resolver.resolve("MERIDIAN_TEST_SECRET_X") == "rotated"
    monkeypatch.setenv("MERIDIAN_TEST_SECRET_X", "")
    assert resolver.resolve("MERIDIAN_TEST_SECRET_X") == ""  # set but empty is a value


def test_env_missing_is_not_found() -> None:
    with pytest.raises(SecretNotFound, match="no variable 'NOPE'"):
        EnvResolver({}).resolve("NOPE")


# ---- file: --------------------------------------------------------------------------------


def test_file_strips_exactly_one_trailing_newline(tmp_path: Path) -> None:
    resolver = FileResolver()
    cases = {"a\n": "a", "a\r\n": "a", "a\n\n": "a\n", "a": "a", "": "", "x\ny\n": "x\ny"}
    for i, (content, expected) in enumerate(cases.items()):
        path = tmp_path / f"s{i}"
        path.write_bytes(content.encode())
        assert resolver.resolve(str(path)) == expected


def test_file_follows_symlinks_to_regular_files(tmp_path: Path) -> None:
    # Kubernetes mounts secret files through ..data symlinks.
    (tmp_path / "real").write_text("via-link\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert FileResolver().resolve(str(tmp_path / "link")) == "via-link"


def test_file_refusals_are_permanent(tmp_path: Path) -> None:
    resolver = FileResolver(max_bytes=8)
    (tmp_path / "big").write_bytes(b"x" * 9)
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    (tmp_path / "nul").write_bytes(b"a\0b")
    os.mkfifo(tmp_path / "fifo")  # opening it must not hang
    for what, message in [
        (str(tmp_path / "missing"), "no such file"),
        ("relative/path", "absolute path"),
        (str(tmp_path), "not a regular file"),
        (str(tmp_path / "fifo"), "not a regular file"),
        (str(tmp_path / "big"), "larger than 8 bytes"),
        (str(tmp_path / "bin"), "not UTF-8"),
        (str(tmp_path / "nul"), "NUL"),
    ]:
        with pytest.raises(SecretNotFound, match=message):
            resolver.resolve(what)
    assert FileResolver(max_bytes=9).resolve(str(tmp_path / "big")) == "x" * 9


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_permission_denied_is_infrastructure(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(SecretUnavailable, match="not allowed"):
        FileResolver().resolve(str(path))


# ---- the store ------------------------------------------------------------------------------


class CountingResolver:
    """A resolver double that counts calls and returns the current value of each name."""

    scheme = "count"

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def resolve(self, what: str) -> str:
        with self._lock:
            self.calls.append(what)
        if what == "boom":
            raise RuntimeError("leaky message with a value")
        if what == "down":
            raise SecretUnavailable("service down")
        if what not in self.values:
            raise SecretNotFound("unknown")
        return self.values[what]


def test_each_reference_once_per_attempt_and_nothing_cached() -> None:
    counting = CountingResolver({"db": "value-1"})
    store = SecretStore([counting])
    refs = {"A": "count:db", "B": "count:db"}
    first = asyncio.run(store.resolve(refs))
    assert dict(first.env) == {"A": "value-1", "B": "value-1"}
    assert counting.calls == ["db"]  # once for two env vars
    counting.values["db"] = "value-2"  # rotated between attempts
    second = asyncio.run(store.resolve(refs))
    assert dict(second.env) == {"A": "value-2", "B": "value-2"}
    assert counting.calls == ["db", "db"]
    assert second.redactor.scrub("value-1 value-2") == "value-1 ***"


def test_resolved_env_never_prints_values() -> None:
    resolved = asyncio.run(
        SecretStore([CountingResolver({"x": "sekrit-value"})]).resolve({"PW": "count:x"})
    )
    assert "sekrit-value" not in repr(resolved.env) and "sekrit-value" not in str(resolved)
    assert "PW" in repr(resolved.env)


def test_failures_name_env_and_reference_and_permanent_wins() -> None:
    store = SecretStore([CountingResolver({"ok": "fine-value"})])
    with pytest.raises(SecretNotFound) as info:
        asyncio.run(store.resolve({"A_DOWN": "count:down", "B_MISSING": "count:nope"}))
    assert str(info.value) == "secret B_MISSING (count:nope): unknown"
    with pytest.raises(SecretUnavailable, match=r"^secret A \(count:down\): service down$"):
        asyncio.run(store.resolve({"A": "count:down", "B": "count:ok"}))


def test_unexpected_resolver_errors_are_infrastructure_without_their_message() -> None:
    store = SecretStore([CountingResolver({})])
    with pytest.raises(SecretUnavailable) as info:
        asyncio.run(store.resolve({"X": "count:boom"}))
    assert "builtins.RuntimeError" in str(info.value) and "leaky" not in str(info.value)


def test_unknown_scheme_is_permanent() -> None:
    with pytest.raises(SecretNotFound, match="cannot resolve 'vault' secrets"):
        asyncio.run(SecretStore([EnvResolver()]).resolve({"X": "vault:kv/x"}))


def test_default_store_knows_every_scheme_of_the_sdk() -> None:
    from meridian.core.secrets import SCHEMES

    store = SecretStore.from_config({})
    assert sorted(store._resolvers) == sorted(SCHEMES)


def test_config_is_checked_at_start() -> None:
    bad: dict[str, Any]
    for bad in (
        {"vault": {}},
        {"aws-sm": {"regoin": "x"}},
        {"aws-sm": {"timeout_s": -1}},
        {"gcp-sm": {"credentials": "a string"}},
        {"azure-kv": {"vault_url": "https://fixed.example"}},
        {"file": {"max_bytes": 0}},
    ):
        with pytest.raises(SecretConfigError):
            SecretStore.from_config(bad)


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setitem(sys.modules, "azure.core", None)
    monkeypatch.setitem(sys.modules, "google.auth.transport.requests", None)
    store = SecretStore.from_config({"aws-sm": {"region": "us-east-1"}})
    for ref, extra in [
        ("aws-sm:db", "[aws]"),
        ("azure-kv:vault1/db", "[azure]"),
        ("gcp-sm:projects/p/secrets/s", "[gcp]"),
    ]:
        with pytest.raises(
            SecretUnavailable, match=f"install meridian-orchestrator\\{extra[:-1]}\\]"
        ):
            asyncio.run(store.resolve({"X": ref}))
