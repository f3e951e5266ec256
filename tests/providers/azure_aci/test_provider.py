"""The azure-aci provider (contract: the real Azure SDK clients against our fake ARM endpoint).

What is real: ``azure-mgmt-containerinstance``'s async client (request building, ARM error
parsing, the ``Azure-AsyncOperation`` long-running-operation poller), azure-core's HTTPS
transport (TLS verified against the fake's self-signed CA via ``connection_verify``) and
``azure-identity``'s ``ClientSecretCredential`` fetching a bearer token from the fake's token
endpoint. What is fake: Azure itself (``azure_arm_fake.py``).

The conformance suite runs with the fake in ``run_commands`` mode: each container group's
command (``meridian-step --spec-env MERIDIAN_STEP_SPEC``) runs as a local subprocess with the
container's environment, with ``code_dir`` pointing at the suite's bundle, so real step code,
exit codes and output travel back through the ACI API. Not applicable: the conformance check
that stdout and stderr arrive as separate streams — ACI's log API returns one merged text, so
every line is reported as ``stdout`` (``test_logs_arrive_in_order`` is replaced by a check of
the merged order). Not covered here: real image pulls, scheduling delays, VNet injection and
managed identity (the default ``DefaultAzureCredential`` path), which need a real subscription.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from providers.azure_aci import AciProvider
from providers.azure_aci.config import group_name
from providers.base import (
    ExecutionSpec,
    Handle,
    LogRecord,
    Outcome,
    Provider,
    ProviderError,
    ProviderOptionsError,
)
from providers.testing import ProviderConformance, Session
from tests.providers.azure_arm_fake import AzureArmFake, Script

pytestmark = pytest.mark.contract

MARKER = "::meridian-outcome::"
OK_LOGS = f'starting\nworking\n{MARKER}{{"state": "succeeded", "result_json": "42"}}\n'


def provider_config(fake: AzureArmFake, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "subscription_id": fake.subscription_id,
        "resource_group": "rg-meridian",
        "location": "westeurope",
        "image": "example.azurecr.io/flows:1",
        "base_url": fake.base_url,
        "authority": fake.authority,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "connection_verify": str(fake.ca_path),
        "poll_interval_s": 0.05,
        "kill_grace_s": 5.0,
    }
    config.update(overrides)
    return config


def make_spec(tmp_path: Path, **kw: Any) -> ExecutionSpec:
    attempt_id = kw.pop("attempt_id", uuid.uuid4().hex)
    fields: dict[str, Any] = {
        "attempt_id": attempt_id,
        "flow_run_id": "run-1",
        "step_run_id": "steprun-1",
        "step_key": "train#1",
        "step_name": "train",
        "attempt_number": 1,
        "module": "flows.train",
        "function": "train",
        "inputs_json": json.dumps({"args": [1], "kwargs": {"lr": 0.1}}),
        "bundle_dir": None,
        "work_dir": tmp_path / "work" / attempt_id,
    }
    fields.update(kw)
    return ExecutionSpec(**fields)


def run(coro: Any, timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[AzureArmFake]:
    with AzureArmFake(tmp_path) as arm:
        yield arm


async def _submit_wait(provider: Provider, spec: ExecutionSpec) -> tuple[Handle, Outcome]:
    try:
        handle = await provider.submit(spec)
        return handle, await provider.wait(handle)
    finally:
        await provider.close()


# ---- the conformance suite, with container commands run locally by the fake -----------------


class TestAciConformance(ProviderConformance):
    shares_filesystem = True  # the fake runs each container's command on this machine
    returns_result_files = False  # the outcome comes back in the container's logs
    valid_options = (
        {},
        {"cpu": 2, "memory_gb": 3.5, "gpu": 1, "gpu_sku": "K80", "image": "img:2"},
        {"command": ["python", "-V"], "env": {"A": "b"}, "secure_env": {"TOKEN": "x"}},
        {"code_dir": "/srv/app"},
    )
    invalid_options = (
        {"cpu": 0},
        {"cpu": "2"},
        {"cpu": True},
        {"memory_gb": -1},
        {"gpu": 1.5},
        {"gpu": 0},
        {"gpu_sku": "A100"},
        {"command": "echo hi"},
        {"command": []},
        {"command": ["ok", 3]},
        {"env": {"A": 1}},
        {"env": {"1BAD": "x"}},
        {"secure_env": ["x"]},
        {"code_dir": "relative/dir"},
        {"image": ""},
    )

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[Provider]:
        with AzureArmFake(tmp_path, run_commands=True) as arm:
            yield AciProvider(provider_config(arm))

    def make_spec(
        self,
        bundle: Path,
        function: str,
        args: Any = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> ExecutionSpec:
        # The "image" holds its code at code_dir; here the container runs locally, so that
        # is the suite's bundle.
        merged = {"code_dir": str(bundle), **(options or {})}
        return super().make_spec(
            bundle, function, args, kwargs, timeout_s=timeout_s, options=merged
        )

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        assert isinstance(provider, AciProvider)
        client = await provider._groups_client()
        with pytest.raises(ResourceNotFoundError):
            await client.container_groups.get(handle.data["resource_group"], handle.data["group"])

    def test_logs_arrive_in_order(self, provider: Provider, bundle: Path) -> None:
        """ACI merges stdout and stderr: both sequences arrive in order, as ``stdout``."""
        spec = self.make_spec(bundle, "chatter", [5])

        async def scenario(session: Session) -> tuple[Outcome, list[LogRecord]]:
            handle = await session.submit(provider, spec)
            logs = asyncio.create_task(_collect(provider.logs(handle)))
            outcome = await provider.wait(handle)
            return outcome, await logs

        outcome, records = self.run(provider, scenario)
        assert outcome.state == "succeeded" and outcome.result_json == "5"
        texts = [r.text for r in records if "conformance-" in r.text]
        assert [t for t in texts if "-out" in t] == [f"conformance-out {i}" for i in range(5)]
        assert [t for t in texts if "-err" in t] == [f"conformance-err {i}" for i in range(5)]
        assert {r.stream for r in records} == {"stdout"}
        assert all(r.at_unix_ms > 0 for r in records)


async def _collect(records: Any) -> list[LogRecord]:
    return [r async for r in records]


# ---- the API calls, state mapping and errors, with scripted container groups ----------------


def test_put_body_restart_policy_command_env_resources_tags(
    fake: AzureArmFake, tmp_path: Path
) -> None:
    fake.script = Script(exit_code=0, logs=OK_LOGS, duration_s=0.1)
    config = provider_config(
        fake,
        registry_credentials=[{"server": "example.azurecr.io", "username": "u", "password": "pw"}],
        subnet_ids=[
            "/subscriptions/s/resourceGroups/n/providers/Microsoft.Network/virtualNetworks/v/subnets/a"
        ],
    )
    options = {
        "cpu": 2,
        "memory_gb": 3.5,
        "gpu": 1,
        "gpu_sku": "P100",
        "env": {"PLAIN": "visible"},
        "secure_env": {"API_KEY": "hunter2"},
        "code_dir": "/srv/app",
        "image": "example.azurecr.io/train:7",
    }
    spec = make_spec(tmp_path, options=options, env={"AGENT_TOKEN": "t0k"}, timeout_s=600)
    handle, outcome = run(_submit_wait(AciProvider(config), spec))
    assert outcome.state == "succeeded" and outcome.result_json == "42"

    [body] = fake.bodies("PUT")
    props = body["properties"]
    assert body["location"] == "westeurope"
    assert props["restartPolicy"] == "Never" and props["osType"] == "Linux"
    assert props["imageRegistryCredentials"] == [
        {"server": "example.azurecr.io", "username": "u", "password": "pw"}
    ]
    assert props["subnetIds"] == [{"id": config["subnet_ids"][0]}]
    [container] = props["containers"]
    c = container["properties"]
    assert container["name"] == "step" and c["image"] == "example.azurecr.io/train:7"
    assert c["command"] == ["meridian-step", "--spec-env", "MERIDIAN_STEP_SPEC"]
    assert c["resources"] == {
        "requests": {"memoryInGB": 3.5, "cpu": 2.0, "gpu": {"count": 1, "sku": "P100"}}
    }
    env = {v["name"]: v for v in c["environmentVariables"]}
    assert env["PLAIN"] == {"name": "PLAIN", "value": "visible"}
    assert env["MERIDIAN_ATTEMPT_ID"] == {"name": "MERIDIAN_ATTEMPT_ID", "value": spec.attempt_id}
    assert env["MERIDIAN_FLOW_RUN_ID"]["value"] == "run-1"
    assert env["MERIDIAN_STEP_KEY"]["value"] == "train#1"
    # Sensitive values travel as secureValue only.
    for name in ("API_KEY", "AGENT_TOKEN", "MERIDIAN_STEP_SPEC"):
        assert set(env[name]) == {"name", "secureValue"}, env[name]
    assert json.loads(env["MERIDIAN_STEP_SPEC"]["secureValue"]) == {
        "module": "flows.train",
        "function": "train",
        "inputs_json": spec.inputs_json,
        "bundle_dir": "/srv/app",
        "step_key": "train#1",
    }
    assert body["tags"] == {
        "managed-by": "meridian",
        "meridian-flow-run-id": "run-1",
        "meridian-step-run-id": "steprun-1",
        "meridian-attempt-id": spec.attempt_id,
        "meridian-step-key": "train#1",
    }
    name = handle.data["group"]
    assert handle.resource_id == (
        f"/subscriptions/{fake.subscription_id}/resourceGroups/rg-meridian"
        f"/providers/Microsoft.ContainerInstance/containerGroups/{name}"
    )
    assert Handle.from_json(handle.to_json()) == handle
    # The create went through the Azure-AsyncOperation LRO; the group was deleted afterwards.
    assert len(fake.calls("GET", "/operations/")) >= 2
    assert fake.deleted == [name]


def test_success_result_and_logs_from_list_logs(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(exit_code=0, logs=OK_LOGS, duration_s=0.3)

    async def scenario() -> tuple[Outcome, list[LogRecord], list[LogRecord]]:
        provider = AciProvider(provider_config(fake))
        try:
            handle = await provider.submit(make_spec(tmp_path))
            live = asyncio.create_task(_collect(provider.logs(handle)))
            outcome = await provider.wait(handle)
            # Read again after the group is gone: the final log was kept in the work dir.
            return outcome, await live, await _collect(provider.logs(handle))
        finally:
            await provider.close()

    outcome, live, after = run(scenario())
    assert outcome == Outcome(state="succeeded", exit_code=0, result_json="42")
    expected = ["starting", "working", f'{MARKER}{{"state": "succeeded", "result_json": "42"}}']
    assert [r.text for r in live] == expected
    assert [r.text for r in after] == expected
    assert fake.calls("GET", "/containers/step/logs")


def test_nonzero_exit_without_outcome_is_transient(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(exit_code=3, logs="Traceback: disk full\n", duration_s=0.1)
    _, outcome = run(_submit_wait(AciProvider(provider_config(fake)), make_spec(tmp_path)))
    assert outcome.state == "failed" and outcome.exit_code == 3
    assert outcome.error is not None and outcome.error.error_class == "transient"
    assert "exit code 3" in outcome.error.message and "disk full" in outcome.error.message


def test_step_failure_keeps_its_class(fake: AzureArmFake, tmp_path: Path) -> None:
    error = {"error_class": "permanent", "type": "builtins.ValueError", "message": "bad input"}
    fake.script = Script(
        exit_code=1, logs=f"{MARKER}{json.dumps({'state': 'failed', 'error': error})}\n"
    )
    _, outcome = run(_submit_wait(AciProvider(provider_config(fake)), make_spec(tmp_path)))
    assert outcome.state == "failed" and outcome.exit_code == 1
    assert outcome.error is not None and outcome.error.error_class == "permanent"
    assert outcome.error.message == "bad input"


def test_plain_command_outcome_from_exit_code(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(exit_code=0, logs="done\n")
    spec = make_spec(tmp_path, options={"command": ["/bin/sh", "-c", "echo done"]})
    _, outcome = run(_submit_wait(AciProvider(provider_config(fake)), spec))
    assert outcome == Outcome(state="succeeded", exit_code=0, result_json="null")
    c = fake.bodies("PUT")[0]["properties"]["containers"][0]["properties"]
    assert c["command"] == ["/bin/sh", "-c", "echo done"]
    assert "MERIDIAN_STEP_SPEC" not in {v["name"] for v in c["environmentVariables"]}


def test_cancel_deletes_the_group_and_is_idempotent(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(duration_s=60)

    async def scenario() -> tuple[Outcome, Outcome]:
        provider = AciProvider(provider_config(fake))
        try:
            handle = await provider.submit(make_spec(tmp_path))
            waiter = asyncio.create_task(provider.wait(handle))
            await asyncio.sleep(0.2)
            await provider.cancel(handle, 1.0)
            first = await waiter
            await provider.cancel(handle, 1.0)  # the group is gone: no error
            return first, await provider.wait(handle)
        finally:
            await provider.close()

    first, second = run(scenario())
    assert first.state == "cancelled" and second.state == "cancelled"
    assert first.error is not None and first.error.error_class == "cancelled"
    assert len(fake.calls("DELETE")) >= 1 and len(fake.deleted) == 1
    assert not fake.groups


def test_timeout_deletes_the_group(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(duration_s=60)
    started = time.monotonic()
    _, outcome = run(
        _submit_wait(AciProvider(provider_config(fake)), make_spec(tmp_path, timeout_s=0.5))
    )
    assert time.monotonic() - started >= 0.5  # never early; how late depends on load
    assert outcome.state == "timed_out"
    assert outcome.error is not None and outcome.error.error_class == "timeout"
    assert "0.5 s" in outcome.error.message
    assert fake.calls("DELETE") and not fake.groups


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, "ResourceGroupNotFound", "Resource group 'rg-missing' could not be found."),
        (
            409,
            "ContainerGroupQuotaReached",
            "Resource type 'Microsoft.ContainerInstance/containerGroups' container group quota "
            "'StandardCores' exceeded in region 'westeurope'. Limit: '10', Usage: '10'.",
        ),
    ],
)
def test_arm_error_on_create_is_a_provider_error_with_azures_message(
    fake: AzureArmFake, tmp_path: Path, status: int, code: str, message: str
) -> None:
    if code == "ResourceGroupNotFound":
        config = provider_config(fake, resource_group="rg-missing")  # the fake's own 404
    else:
        config = provider_config(fake)
        fake.fail_next("PUT", status, code, message)
    with pytest.raises(ProviderError) as info:
        run(_submit_wait(AciProvider(config), make_spec(tmp_path)))
    assert f"{code}: {message}" in str(info.value)


def test_arm_error_while_waiting_is_infrastructure(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(duration_s=60)
    message = "The client does not have authorization to perform action 'read'."

    async def scenario() -> Outcome:
        provider = AciProvider(provider_config(fake))
        try:
            handle = await provider.submit(make_spec(tmp_path))
            fake.fail_next("GET", 403, "AuthorizationFailed", message, "/containerGroups/")
            return await provider.wait(handle)
        finally:
            await provider.close()

    outcome = run(scenario())
    assert outcome.state == "failed"
    assert outcome.error is not None and outcome.error.error_class == "infrastructure"
    assert f"AuthorizationFailed: {message}" in outcome.error.message


def test_recover_with_a_new_instance(fake: AzureArmFake, tmp_path: Path) -> None:
    fake.script = Script(exit_code=0, logs=OK_LOGS, duration_s=0.5)
    config = provider_config(fake)

    async def scenario() -> tuple[bool, Outcome, bool, Outcome, bool]:
        first = AciProvider(config)
        saved = (await first.submit(make_spec(tmp_path))).to_json()
        await first.close()
        second = AciProvider(config)  # the agent restarted: only the handle JSON survived
        try:
            handle = Handle.from_json(saved)
            running = await second.recover(handle)
            outcome = await second.wait(handle)
        finally:
            await second.close()
        third = AciProvider(config)  # after the group is deleted: the recorded outcome
        try:
            gone = Handle(
                "azure-aci",
                "/x",
                {**handle.data, "group": "meridian-never-existed", "work_dir": str(tmp_path / "n")},
            )
            return (
                running,
                outcome,
                await third.recover(handle),
                await third.wait(handle),
                (await third.recover(gone)),
            )
        finally:
            await third.close()

    running, outcome, ended, again, unknown = run(scenario())
    assert running and ended and not unknown
    assert outcome.result_json == "42" and again == outcome


def test_bearer_token_from_client_secret_credential_over_https(
    fake: AzureArmFake, tmp_path: Path
) -> None:
    fake.script = Script(exit_code=0, logs=OK_LOGS, duration_s=0.1)
    run(_submit_wait(AciProvider(provider_config(fake)), make_spec(tmp_path)))
    [token_call] = fake.calls("POST", f"/{fake.tenant_id}/oauth2/v2.0/token")
    assert "grant_type=client_credentials" in token_call.body
    assert f"client_secret={fake.client_secret}" in token_call.body
    arm_calls = [r for r in fake.requests if r.path.startswith("/subscriptions/")]
    assert arm_calls and all(r.token == fake.tokens_issued[0] for r in arm_calls)
    assert fake.base_url.startswith("https://")


def test_bad_credentials_are_reported_with_azures_message(
    fake: AzureArmFake, tmp_path: Path
) -> None:
    config = provider_config(fake, client_secret="wrong")
    with pytest.raises(ProviderError, match="AADSTS7000215"):
        run(_submit_wait(AciProvider(config), make_spec(tmp_path)))


def test_injected_credential_is_used(fake: AzureArmFake, tmp_path: Path) -> None:
    from azure.core.credentials import AccessToken

    class StaticCredential:
        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.scopes = scopes
            return AccessToken("not-issued-by-the-fake", int(time.time()) + 3600)

        async def close(self) -> None:
            pass

    credential = StaticCredential()
    config = provider_config(fake, credential=credential)
    for key in ("tenant_id", "client_id", "client_secret"):
        del config[key]
    with pytest.raises(ProviderError, match="AuthenticationFailed"):
        run(_submit_wait(AciProvider(config), make_spec(tmp_path)))
    assert credential.scopes == (f"{fake.base_url}/.default",)
    assert fake.requests[0].token == "not-issued-by-the-fake"


# ---- config, names, lazy import (no fake needed) ---------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"subscription_id": None}, "subscription_id"),
        ({"nope": 1}, "nope"),
        ({"client_secret": None}, "go together"),
        ({"cpu": 0}, "cpu"),
        ({"os_type": "Plan9"}, "os_type"),
        ({"registry_credentials": [{"server": "x"}]}, "registry_credentials"),
        ({"subnet_ids": "not-a-list"}, "subnet_ids"),
    ],
)
def test_bad_config_rejected(change: dict[str, Any], match: str) -> None:
    config: dict[str, Any] = {
        "subscription_id": "s",
        "resource_group": "rg",
        "location": "westeurope",
        "image": "img",
        "tenant_id": "t",
        "client_id": "c",
        "client_secret": "x",
    }
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ProviderError, match=match):
        AciProvider(config)


@pytest.mark.parametrize(
    "attempt_id",
    [uuid.uuid4().hex, "Attempt_With.UPPER--and__symbols", "x" * 200, "---", "a1"],
    ids=["uuid", "mixed-case", "too-long", "dashes", "short"],  # stable across xdist workers
)
def test_group_names_follow_arm_rules(attempt_id: str) -> None:
    name = group_name(attempt_id)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
    assert group_name(attempt_id) == name
    assert group_name(attempt_id + "x") != name


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "azure.mgmt.containerinstance", None)
    provider = AciProvider(
        {"subscription_id": "s", "resource_group": "rg", "location": "l", "image": "i"}
    )
    with pytest.raises(ProviderError, match=r"install meridian-orchestrator\[azure\]"):
        run(provider.submit(make_spec(tmp_path)))


def test_invalid_options_rejected_before_any_call(fake: AzureArmFake, tmp_path: Path) -> None:
    provider = AciProvider(provider_config(fake))
    with pytest.raises(ProviderOptionsError, match="gpu_sku"):
        run(provider.submit(make_spec(tmp_path, options={"gpu": 1, "gpu_sku": "H100"})))
    assert not fake.requests
