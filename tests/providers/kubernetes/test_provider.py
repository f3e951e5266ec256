"""The kubernetes provider (contract: the official ``kubernetes`` client against our fake server).

No real API server can run on these machines, so ``k8s_fake_apiserver`` stands in: HTTPS with a
self-signed CA and bearer-token auth, the batch/v1 jobs and v1 pods + pods/log routes the client
uses, realistic JSON and Status errors. Its "kubelet" runs each container's command as a local
subprocess (image ignored), which is what makes the conformance suite meaningful here: Python
steps really run through ``meridian-step --spec-env``, their outcome really travels back in the
pod log, and cancel/timeout really stop a process. Deviations from the suite: a pod log merges
stdout and stderr (as Kubernetes does), so the logs check expects every line on "stdout".
What stays untested: a real cluster's scheduling, image pulls, kubelet and garbage collector,
``in_cluster`` config loading and ``ttlSecondsAfterFinished``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

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

pytest.importorskip("kubernetes", reason="install meridian-orchestrator[kubernetes]")
pytest.importorskip("cryptography", reason="the fake API server's TLS certificate needs it")

from providers.kubernetes import KubernetesProvider
from providers.kubernetes.manifest import job_name, label_value
from tests.providers.k8s_fake_apiserver import FakeKubeApiServer

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

NS = "default"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer(tmp_path_factory.mktemp("fake-kube")) as server:
        yield server


def config(fake: FakeKubeApiServer, **overrides: Any) -> dict[str, Any]:
    return {
        "host": fake.url,
        "ca_cert": fake.ca_file,
        "token": fake.token,
        "namespace": NS,
        "image": "registry.example/steps:1",
        "poll_interval_s": 0.1,
        "kill_grace_s": 1,
        **overrides,
    }


class TestKubernetesConformance(ProviderConformance):
    scenario_timeout_s = 20.0
    returns_result_files = False  # the outcome comes back in the pod's log
    valid_options: ClassVar[Sequence[Mapping[str, Any]]] = (
        {},
        {"cpu": "500m", "memory": "256Mi", "gpu": 1},
        {"cpu": 2, "memory": 1073741824, "image": "python:3.11-slim"},
        {"command": ["echo", "hi"], "env": {"A": "b"}, "code_dir": "/srv/code"},
        {"node_selector": {"pool": "gpu"}, "image_pull_policy": "Always"},
        {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    )
    invalid_options: ClassVar[Sequence[Mapping[str, Any]]] = (
        {"cpu": "lots"},
        {"cpu": True},
        {"memory": -1},
        {"memory": "1.5Gb"},
        {"gpu": 1.5},
        {"gpu": -1},
        {"command": "echo hi"},
        {"command": []},
        {"env": {"A": 1}},
        {"code_dir": "relative/dir"},
        {"tolerations": [{"operator": "Maybe"}]},
        {"tolerations": [{"key": "a", "colour": "red"}]},
        {"image_pull_policy": "Sometimes"},
        {"image": ""},
        {"node_selector": ["a"]},
    )

    @pytest.fixture
    def provider(self, fake: FakeKubeApiServer) -> Provider:
        return KubernetesProvider(config(fake))

    @pytest.fixture(autouse=True)
    def _fake(self, fake: FakeKubeApiServer) -> None:
        self.fake = fake

    def make_spec(
        self,
        bundle: Path,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> ExecutionSpec:
        # The image holds the code at code_dir; the fake's kubelet runs on this machine, so the
        # suite's bundle dir plays that role.
        options = {"code_dir": str(bundle), **(options or {})}
        return super().make_spec(
            bundle, function, args, kwargs, timeout_s=timeout_s, options=options
        )

    async def assert_stopped(self, provider: Provider, handle: Handle) -> None:
        name = handle.data["name"]
        assert self.fake.live_processes(name) == [], "a pod of the Job still runs"
        job = self.fake.jobs.get((NS, name))
        assert job is None or job.obj["status"].get("conditions"), "the Job still runs"

    def test_logs_arrive_in_order(self, provider: Provider, bundle: Path) -> None:
        # Kubernetes pod logs merge stdout and stderr: every line arrives, as "stdout".
        spec = self.make_spec(bundle, "chatter", [5])

        async def scenario(session: Session) -> tuple[Outcome, list[LogRecord]]:
            handle = await session.submit(provider, spec)
            logs = asyncio.create_task(_collect(provider.logs(handle)))
            return await provider.wait(handle), await logs

        outcome, records = self.run(provider, scenario)
        assert outcome.state == "succeeded" and outcome.result_json == "5"
        texts = [r.text for r in records if "conformance-" in r.text]
        assert [t for t in texts if "-out" in t] == [f"conformance-out {i}" for i in range(5)]
        assert [t for t in texts if "-err" in t] == [f"conformance-err {i}" for i in range(5)]
        assert {r.stream for r in records} == {"stdout"} and all(r.at_unix_ms > 0 for r in records)
        assert not any("::meridian-outcome::" in r.text for r in records)


# ---- provider-specific checks ------------------------------------------------------------

STEPS = """\
import os


def env(*names):
    return {name: os.environ.get(name) for name in names}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "k8s_steps.py").write_text(STEPS, encoding="utf-8")
    return tmp_path / "bundle"


def make_spec(
    bundle: Path,
    function: str = "env",
    args: Sequence[Any] = (),
    *,
    attempt_id: str | None = None,
    timeout_s: float | None = None,
    **options: Any,
) -> ExecutionSpec:
    attempt_id = attempt_id or uuid.uuid4().hex
    return ExecutionSpec(
        attempt_id=attempt_id,
        flow_run_id="flow-run-1",
        step_run_id="step-run-1",
        step_key="train#1",
        step_name="train",
        attempt_number=1,
        module="k8s_steps",
        function=function,
        inputs_json=json.dumps({"args": list(args), "kwargs": {}}),
        bundle_dir=bundle,
        work_dir=bundle.parent / "work" / attempt_id,
        timeout_s=timeout_s,
        options={"code_dir": str(bundle), **options},
        env={"FROM_SPEC": "1"},
    )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _collect(records: AsyncIterator[LogRecord]) -> list[LogRecord]:
    return [r async for r in records]


async def submit_wait(provider: KubernetesProvider, spec: ExecutionSpec) -> tuple[Handle, Outcome]:
    try:
        handle = await provider.submit(spec)
        return handle, await provider.wait(handle)
    finally:
        await provider.close()


def created_job(fake: FakeKubeApiServer, name: str) -> dict[str, Any]:
    bodies = [r.body for r in fake.calls("POST", "/jobs") if r.body["metadata"]["name"] == name]
    assert len(bodies) == 1
    return bodies[0]


def test_job_manifest_and_result_from_pod_log(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(
        config(fake, service_account="meridian-steps", image_pull_secrets=["regcred"])
    )
    spec = make_spec(
        bundle,
        "env",
        ["MERIDIAN_ATTEMPT_ID", "MERIDIAN_FLOW_RUN_ID", "MERIDIAN_STEP_KEY", "FROM_SPEC", "OPT"],
        timeout_s=90.5,
        cpu="250m",
        memory="128Mi",
        gpu=1,
        env={"OPT": "x"},
        node_selector={"pool": "batch"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    handle, outcome = run(submit_wait(provider, spec))
    assert outcome.state == "succeeded" and outcome.exit_code == 0, outcome
    assert json.loads(outcome.result_json or "") == {
        "MERIDIAN_ATTEMPT_ID": spec.attempt_id,
        "MERIDIAN_FLOW_RUN_ID": "flow-run-1",
        "MERIDIAN_STEP_KEY": "train#1",
        "FROM_SPEC": "1",
        "OPT": "x",
    }
    name = job_name(spec.attempt_id)
    assert handle.resource_id == f"k8s:{NS}/{name}"
    job = created_job(fake, name)
    assert handle.data["uid"] == job["metadata"]["uid"]
    labels = job["metadata"]["labels"]
    assert labels["meridian.io/flow-run"] == "flow-run-1"
    assert labels["meridian.io/step-run"] == "step-run-1"
    assert labels["meridian.io/attempt"] == spec.attempt_id
    assert job["metadata"]["annotations"]["meridian.io/step-key"] == "train#1"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 91
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "meridian-steps"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["terminationGracePeriodSeconds"] == 1
    assert job["spec"]["template"]["metadata"]["labels"]["meridian.io/attempt"] == spec.attempt_id
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/steps:1"
    assert container["command"] == ["meridian-step", "--spec-env", "MERIDIAN_STEP_SPEC"]
    amounts = {"cpu": "250m", "memory": "128Mi", "nvidia.com/gpu": "1"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["MERIDIAN_STEP_SPEC"]) == {
        "module": "k8s_steps",
        "function": "env",
        "inputs_json": spec.inputs_json,
        "bundle_dir": str(bundle),
        "step_key": "train#1",
    }
    # The result came from the pod log, read raw with timestamps.
    assert any(r.query.get("timestamps") == ["true"] for r in fake.calls("GET", "/log"))


def test_names_and_labels_are_kubernetes_safe(fake: FakeKubeApiServer, bundle: Path) -> None:
    odd = "Attempt_ID/with:odd chars__" + "x" * 80
    name = job_name(odd)
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
    assert job_name(odd) != job_name(odd + "y"), "lossy names stay distinct"
    assert job_name("0f3a") == "meridian-0f3a"
    value = label_value(odd)
    assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum()
    provider = KubernetesProvider(config(fake))
    # The fake validates names and label values like the API server (422 otherwise).
    _, outcome = run(submit_wait(provider, make_spec(bundle, "env", attempt_id=odd)))
    assert outcome.state == "succeeded"
    assert created_job(fake, name)["metadata"]["annotations"]["meridian.io/attempt-id"] == odd


@pytest.mark.parametrize(
    ("script", "state", "exit_code", "error_class"),
    [
        ("echo hello", "succeeded", 0, None),
        ("echo broken >&2; exit 3", "failed", 3, "transient"),
    ],
    ids=["exit-0", "exit-3"],
)
def test_command_step_outcome_from_exit_code(
    fake: FakeKubeApiServer,
    bundle: Path,
    script: str,
    state: str,
    exit_code: int,
    error_class: str | None,
) -> None:
    provider = KubernetesProvider(config(fake))
    spec = make_spec(bundle, command=["sh", "-c", script])
    _, outcome = run(submit_wait(provider, spec))
    assert (outcome.state, outcome.exit_code) == (state, exit_code), outcome
    if error_class is None:
        assert outcome.result_json == "null"
    else:
        assert outcome.error is not None and outcome.error.error_class == error_class
        assert "exited with code 3" in outcome.error.message
        assert "broken" in outcome.error.message, "the log tail says why"


def test_oom_killed_is_named(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake))
    spec = make_spec(bundle, command=["sh", "-c", "kill -9 $$"], memory="64Mi")
    _, outcome = run(submit_wait(provider, spec))
    assert outcome.state == "failed" and outcome.exit_code == 137
    assert outcome.error is not None and outcome.error.error_class == "transient"
    assert outcome.error.type == "builtins.MemoryError"
    assert "OOMKilled" in outcome.error.message and "memory" in outcome.error.message


@pytest.mark.parametrize("policy", ["Foreground", "Background"])
def test_cancel_deletes_job_with_propagation(
    fake: FakeKubeApiServer, bundle: Path, policy: str
) -> None:
    provider = KubernetesProvider(config(fake, propagation_policy=policy))
    spec = make_spec(bundle, command=["sleep", "60"])
    name = job_name(spec.attempt_id)

    async def scenario() -> Outcome:
        handle = await provider.submit(spec)
        while not fake.live_processes(name):
            await asyncio.sleep(0.05)
        await provider.cancel(handle, 0.5)
        await provider.cancel(handle, 0.5)  # idempotent
        outcome = await provider.wait(handle)
        await provider.close()
        return outcome

    outcome = run(scenario())
    assert outcome.state == "cancelled"
    assert outcome.error is not None and outcome.error.error_class == "cancelled"
    deletes = fake.calls("DELETE", f"/jobs/{name}")
    assert deletes and deletes[0].query["propagationPolicy"] == [policy]
    deadline = time.monotonic() + 3
    while fake.live_processes(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.live_processes(name) == [], "the pod's process was stopped"
    assert (NS, name) not in fake.jobs


def test_server_side_deadline_is_timed_out(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake))
    spec = make_spec(bundle, command=["sleep", "60"], timeout_s=1)

    async def scenario() -> Outcome:
        handle = await provider.submit(spec)
        # Only the Job's activeDeadlineSeconds acts: the client-side deadline is switched off.
        only_server = Handle(handle.provider, handle.resource_id, {**handle.data, "timeout_s": 1e6})
        outcome = await provider.wait(only_server)
        await provider.close()
        return outcome

    outcome = run(scenario())
    assert outcome.state == "timed_out"
    assert outcome.error is not None and outcome.error.error_class == "timeout"
    assert "activeDeadlineSeconds" in outcome.error.message
    assert fake.live_processes(job_name(spec.attempt_id)) == []


FORBIDDEN = (
    'jobs.batch is forbidden: User "system:serviceaccount:ci:meridian" cannot create '
    'resource "jobs" in API group "batch" in the namespace "default"'
)


@pytest.mark.parametrize(
    ("code", "reason", "message"),
    [
        (403, "Forbidden", FORBIDDEN),
        (404, "NotFound", 'namespaces "default" not found'),
        (422, "Invalid", 'Job.batch "x" is invalid: spec.template.spec.containers[0].image'),
    ],
)
def test_submit_api_errors_carry_the_api_message(
    fake: FakeKubeApiServer, bundle: Path, code: int, reason: str, message: str
) -> None:
    fake.fail_next("POST", r"/jobs$", code, reason, message)
    provider = KubernetesProvider(config(fake))
    with pytest.raises(ProviderError) as info:
        run(submit_wait(provider, make_spec(bundle)))
    assert f"HTTP {code}" in str(info.value) and message in str(info.value)


def test_wrong_token_is_unauthorized(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake, token="stolen"))
    with pytest.raises(ProviderError, match="HTTP 401: Unauthorized"):
        run(submit_wait(provider, make_spec(bundle)))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (403, 'jobs.batch "j" is forbidden: User "u" cannot get resource "jobs"'),
        (404, 'jobs.batch "j" not found'),
    ],
)
def test_wait_api_errors_are_infrastructure(
    fake: FakeKubeApiServer, bundle: Path, code: int, message: str
) -> None:
    provider = KubernetesProvider(config(fake))
    spec = make_spec(bundle, command=["sleep", "60"])
    name = job_name(spec.attempt_id)

    async def scenario() -> Outcome:
        handle = await provider.submit(spec)
        fake.fail_next("GET", rf"/jobs/{name}$", code, "x", message)
        outcome = await provider.wait(handle)
        await provider.close()
        return outcome

    outcome = run(scenario())
    assert outcome.state == "failed"
    assert outcome.error is not None and outcome.error.error_class == "infrastructure"
    assert message in outcome.error.message
    assert fake.calls("DELETE", f"/jobs/{name}"), "a Job Meridian gave up on is deleted"


def test_transient_api_error_is_retried(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake))
    fake.fail_next("GET", r"/jobs/meridian-", 503, "ServiceUnavailable", "etcd leader changed")
    _, outcome = run(submit_wait(provider, make_spec(bundle, command=["true"])))
    assert outcome.state == "succeeded"


def test_unpullable_image_is_infrastructure(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake, image_pull_timeout_s=0.5))
    spec = make_spec(bundle, image="unpullable/nope:1")
    _, outcome = run(submit_wait(provider, spec))
    assert outcome.state == "failed"
    assert outcome.error is not None and outcome.error.error_class == "infrastructure"
    assert "ImagePullBackOff" in outcome.error.message or "ErrImagePull" in outcome.error.message
    assert "pull" in outcome.error.message
    assert (NS, job_name(spec.attempt_id)) not in fake.jobs


def test_recover_with_a_new_instance(fake: FakeKubeApiServer, bundle: Path) -> None:
    cfg = config(fake, delete_after_completion=True)
    spec = make_spec(bundle, command=["sh", "-c", "echo one; sleep 0.5; echo two"])

    async def scenario() -> tuple[Outcome, list[str], bool, bool, bool]:
        first = KubernetesProvider(cfg)
        saved = (await first.submit(spec)).to_json()
        await first.close()
        fresh = KubernetesProvider(cfg)
        handle = Handle.from_json(saved)
        assert await fresh.recover(handle)
        outcome = await fresh.wait(handle)
        # delete_after_completion removed the Job: the recorded outcome and log still answer.
        later = KubernetesProvider(cfg)
        recovered = await later.recover(handle)
        lines = [r.text for r in await _collect(later.logs(handle))]
        unknown = Handle(
            handle.provider,
            "k8s:default/x",
            {**handle.data, "name": "nope", "work_dir": str(bundle / "none")},
        )
        replaced = Handle(
            handle.provider,
            handle.resource_id,
            {**handle.data, "uid": "other", "work_dir": str(bundle / "none")},
        )
        gone = await later.recover(unknown)
        other = await later.recover(replaced)
        for p in (fresh, later):
            await p.close()
        return outcome, lines, recovered, gone, other

    outcome, lines, recovered, gone, other = run(scenario())
    assert outcome.state == "succeeded"
    assert (NS, job_name(spec.attempt_id)) not in fake.jobs
    assert recovered and lines == ["one", "two"]
    assert not gone and not other


def test_kubeconfig_is_loaded(fake: FakeKubeApiServer, bundle: Path, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": fake.url, "certificate-authority": fake.ca_file},
                    }
                ],
                "users": [{"name": "u", "user": {"token": fake.token}}],
                "contexts": [{"name": "meridian", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "other",
            }
        ),
        encoding="utf-8",
    )
    cfg = {
        "kubeconfig": str(kubeconfig),
        "context": "meridian",
        "image": "i",
        "poll_interval_s": 0.1,
    }
    _, outcome = run(submit_wait(KubernetesProvider(cfg), make_spec(bundle, command=["true"])))
    assert outcome.state == "succeeded"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"endpoint": "x"}, "endpoint"),
        ({"namespace": "Not_A_Label"}, "namespace"),
        ({"propagation_policy": "Orphan"}, "propagation_policy"),
        ({"in_cluster": True}, "either 'host' or 'in_cluster'"),
        ({"poll_interval_s": "fast"}, "poll_interval_s"),
        ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished"),
        ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ],
)
def test_bad_config_rejected(
    fake: FakeKubeApiServer, overrides: dict[str, Any], match: str
) -> None:
    with pytest.raises(ProviderError, match=match):
        KubernetesProvider(config(fake, **overrides))


def test_missing_image_rejected(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake, image=None))
    with pytest.raises(ProviderOptionsError, match="image"):
        run(submit_wait(provider, make_spec(bundle)))


def test_oversized_inputs_rejected(fake: FakeKubeApiServer, bundle: Path) -> None:
    provider = KubernetesProvider(config(fake))
    with pytest.raises(ProviderError, match="too large"):
        run(submit_wait(provider, make_spec(bundle, "env", ["x" * 200_000])))


def test_import_is_lazy_and_missing_extra_is_explained(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['kubernetes'] = None\n"  # as if the extra were not installed
        "import asyncio, providers.kubernetes as k\n"
        "p = k.KubernetesProvider({'host': 'https://127.0.0.1:1', 'image': 'i'})\n"
        "from providers.base import Handle\n"
        "h = Handle('kubernetes', 'k8s:a/b', {'namespace': 'a', 'name': 'b', 'uid': 'u',"
        f" 'work_dir': {str(tmp_path)!r}, 'started_at_ms': 0}})\n"
        "try:\n"
        "    asyncio.run(p.recover(h))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "ProviderError" in out.stdout and "meridian-orchestrator[kubernetes]" in out.stdout, out
