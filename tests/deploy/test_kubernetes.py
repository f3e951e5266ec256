"""deploy/kubernetes/: kustomize layout, names, ports, volumes, security and RBAC agree.

No cluster here: the manifests are read as YAML and their command lines parsed with the CLI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meridian.cli.agent_config import load_agent_config_file
from providers.registry import load_provider
from tests.deploy.artefacts import (
    DOCKERFILE,
    KUBERNETES,
    KUBERNETES_VARIABLES,
    REPO,
    Container,
    dockerfile_instructions,
    kubernetes_containers,
    kubernetes_objects,
    load_documents,
    relative,
    yaml_files,
)

KUSTOMIZATIONS = sorted(KUBERNETES.rglob("kustomization.yaml"))
OBJECTS = kubernetes_objects()
CONTAINERS = kubernetes_containers()
HEALTHCHECK_COMMAND = "meridian-healthcheck"


def kustomization(directory: Path) -> dict[str, Any]:
    (document,) = load_documents(directory / "kustomization.yaml")
    return document


def objects_in(directory: str, kind: str) -> list[dict[str, Any]]:
    base = KUBERNETES / directory
    return [doc for path, doc in OBJECTS if path.parent == base and doc["kind"] == kind]


def one(directory: str, kind: str) -> dict[str, Any]:
    (found,) = objects_in(directory, kind)
    return found


def container(name: str) -> Container:
    (found,) = [c for c in CONTAINERS if c.spec["name"] == name]
    return found


def command(name: str, action: str) -> tuple[Container, argparse.Namespace]:
    """The container running ``meridian agent|server ACTION`` and the parsed command line."""
    for candidate in CONTAINERS:
        for line in candidate.commands(KUBERNETES_VARIABLES):
            if line.argv[:2] == (name, action):
                return candidate, line.parse()
    raise AssertionError(f"no container runs meridian {name} {action}")


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---- files and kustomize ----------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=relative)
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    assert load_documents(path), f"{relative(path)} is empty"


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=relative)
def test_kustomizations_list_every_manifest_and_nothing_else(path: Path) -> None:
    directory = path.parent
    resources = kustomization(directory)["resources"]
    for resource in resources:
        target = directory / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), resource
    manifests = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests == {r for r in resources if r.endswith(".yaml")}, "unlisted manifests"


def test_each_part_has_its_namespace_and_sets_the_image() -> None:
    assert kustomization(KUBERNETES)["resources"] == ["control-plane", "agent"]
    images = {c.spec["image"] for c in CONTAINERS}
    for part in ("control-plane", "agent"):
        settings = kustomization(KUBERNETES / part)
        assert one(part, "Namespace")["metadata"]["name"] == settings["namespace"]
        assert {image["name"] for image in settings["images"]} == images
    for path, doc in OBJECTS:
        # kustomize sets namespaces; a hard-coded one would escape it.
        assert "namespace" not in doc["metadata"], f"{relative(path)}: {doc['metadata']['name']}"


def unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Keys the Kubernetes API does not define, found by walking the official client's models
    (``openapi_types`` / ``attribute_map``): catches a misspelt field that kubectl would reject
    or, worse, silently drop."""
    import kubernetes.client.models as models

    if match := re.fullmatch(r"(?:List|list)\[(.+)\]", type_name):
        return [f for i, v in enumerate(value) for f in unknown_fields(v, match[1], f"{path}[{i}]")]
    if match := re.fullmatch(r"(?:Dict|dict)\[str, (.+)\]", type_name):
        return [f for k, v in value.items() for f in unknown_fields(v, match[1], f"{path}.{k}")]
    model = getattr(models, type_name, None)
    if model is None:  # str, int, bool, object (int-or-string, quantities)
        return []
    attributes = {json_key: name for name, json_key in model.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in attributes:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(item, model.openapi_types[attributes[key]], f"{path}.{key}")
    return found


@pytest.mark.parametrize(
    ("path", "doc"), OBJECTS, ids=[f"{relative(p)}:{d['kind']}" for p, d in OBJECTS]
)
def test_manifests_use_only_fields_the_kubernetes_api_defines(
    path: Path, doc: dict[str, Any]
) -> None:
    pytest.importorskip("kubernetes")
    version = doc["apiVersion"].rpartition("/")[2]
    model = f"V{version[1:]}{doc['kind']}"
    assert unknown_fields(doc, model, doc["kind"]) == []


# ---- workloads, services, volumes -------------------------------------------------------------


def test_services_select_their_workload_and_target_its_ports() -> None:
    service = one("control-plane", "Service")
    workload = one("control-plane", "StatefulSet")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["serviceName"] == service["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in container("control-plane").spec["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    for port in service["spec"]["ports"]:
        assert port["port"] == ports[port["targetPort"]], "keep service and container ports equal"


def test_container_ports_are_the_ports_the_server_listens_on() -> None:
    server, parsed = command("server", "start")
    ports = {p["name"]: p["containerPort"] for p in server.spec["ports"]}
    assert ports == {"client": port_of(parsed.listen), "agent": port_of(parsed.agent_listen)}
    assert parsed.listen.startswith("0.0.0.0:") and parsed.agent_listen.startswith("0.0.0.0:")


def test_workload_selectors_match_their_pod_labels() -> None:
    for path, doc in OBJECTS:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), relative(path)


def named(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in OBJECTS if doc["kind"] == kind}


def test_volume_mounts_refer_to_volumes_that_exist() -> None:
    claims, config_maps = named("PersistentVolumeClaim"), named("ConfigMap")
    for item in CONTAINERS:
        for mount in item.spec.get("volumeMounts", []):
            name = mount["name"]
            assert name in item.volumes or name in item.claim_templates, f"{item.source}: {name}"
            volume = item.volumes.get(name, {})
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                data = config_maps[volume["configMap"]["name"]]["data"]
                assert mount.get("subPath", next(iter(data))) in data
        siblings = [c for c in CONTAINERS if c.pod is item.pod]
        mounted = {m["name"] for c in siblings for m in c.spec["volumeMounts"]}
        assert set(item.volumes) <= mounted, f"{item.source}: unused volumes"


def persistent_mounts(item: Container) -> list[str]:
    return [
        m["mountPath"]
        for m in item.spec["volumeMounts"]
        if m["name"] in item.claim_templates
        or "persistentVolumeClaim" in item.volumes.get(m["name"], {})
    ]


@pytest.mark.parametrize(
    ("name", "action"), [("server", "start"), ("agent", "enroll"), ("agent", "start")]
)
def test_data_dirs_live_below_a_persistent_volume(name: str, action: str) -> None:
    item, parsed = command(name, action)
    # Strictly below the mount point: meridian makes its data dir 0700, which it cannot do to
    # a volume's root (owned by root under fsGroup).
    assert any(
        parsed.data_dir.startswith(mount.rstrip("/") + "/") for mount in persistent_mounts(item)
    ), f"{item.source}: --data-dir {parsed.data_dir} is not below a persistent volume"


# ---- security ---------------------------------------------------------------------------------


def image_uid() -> int:
    user = [rest for name, rest in dockerfile_instructions(DOCKERFILE) if name == "USER"][-1]
    return int(user.partition(":")[0])


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c.source)
def test_containers_run_as_the_image_user_without_privileges(item: Container) -> None:
    pod = item.pod["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == image_uid()
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    context = item.spec["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert not context.get("privileged")
    # A read-only root needs a writable /tmp.
    tmp = [m for m in item.spec["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and {"name": tmp[0]["name"], "emptyDir": {}} in item.pod["volumes"]


@pytest.mark.parametrize("item", CONTAINERS, ids=lambda c: c.source)
def test_containers_request_resources(item: Container) -> None:
    resources = item.spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_namespaces_enforce_pod_security_standards() -> None:
    control_plane = one("control-plane", "Namespace")["metadata"]["labels"]
    assert control_plane["pod-security.kubernetes.io/enforce"] == "restricted"
    # Step pods are the provider's (no securityContext yet): baseline, warning on restricted.
    agent = one("agent", "Namespace")["metadata"]["labels"]
    assert agent["pod-security.kubernetes.io/enforce"] == "baseline"
    assert agent["pod-security.kubernetes.io/warn"] == "restricted"


def test_the_control_plane_has_no_kubernetes_api_token() -> None:
    pod = one("control-plane", "StatefulSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


# ---- the control plane ------------------------------------------------------------------------


def test_control_plane_is_a_single_replica_on_sqlite() -> None:
    _, parsed = command("server", "start")
    workload = one("control-plane", "StatefulSet")
    assert parsed.db is None and workload["spec"]["replicas"] == 1


def test_probes_use_tcp_and_the_tls_health_check() -> None:
    server = container("control-plane").spec
    ports = {p["name"] for p in server["ports"]}
    for kind in ("startupProbe", "livenessProbe"):
        # grpc probes speak plaintext and the ports are TLS-only; a TCP connect is what works.
        assert server[kind]["tcpSocket"]["port"] in ports, kind
    readiness = server["readinessProbe"]
    assert readiness["exec"]["command"] == [HEALTHCHECK_COMMAND]
    assert readiness["timeoutSeconds"] > 5, "the check's own gRPC deadline is 5 s"
    installed = [rest for name, rest in dockerfile_instructions() if name == "COPY"]
    assert any(rest.endswith(f"/usr/local/bin/{HEALTHCHECK_COMMAND}") for rest in installed)


def test_agents_dial_a_name_the_server_certificate_covers() -> None:
    _, server = command("server", "start")
    _, enroll = command("agent", "enroll")
    service = one("control-plane", "Service")
    namespace = kustomization(KUBERNETES / "control-plane")["namespace"]
    host, _, port = enroll.control_plane.rpartition(":")
    assert host in server.server_name, "--server-name must cover the address agents dial"
    assert host.split(".")[:2] == [service["metadata"]["name"], namespace]
    client = [p for p in service["spec"]["ports"] if p["name"] == "client"]
    assert int(port) == client[0]["port"] == port_of(server.listen)
    for name in server.server_name:
        assert name.startswith(service["metadata"]["name"]), f"{name}: not the Service's name"
        assert name.count(".") == 0 or name.split(".")[1] == namespace, name


# ---- the agent --------------------------------------------------------------------------------


def test_enrollment_and_agent_share_the_data_volume() -> None:
    enroller, enroll = command("agent", "enroll")
    runner, start = command("agent", "start")
    assert enroller.init and not runner.init and enroller.pod is runner.pod
    assert enroll.data_dir == start.data_dir
    assert persistent_mounts(enroller) == persistent_mounts(runner)
    assert enroll.ca_file.startswith("/etc/meridian/bootstrap/")


def test_the_bootstrap_secret_is_optional_and_documented() -> None:
    enroller, enroll = command("agent", "enroll")
    (token,) = [e for e in enroller.spec["env"] if e["name"] == "MERIDIAN_JOIN_TOKEN"]
    reference = token["valueFrom"]["secretKeyRef"]
    (volume,) = [v for v in enroller.pod["volumes"] if "secret" in v]
    # Optional: once enrolled, the spent token's Secret may be deleted.
    assert reference["optional"] is True and volume["secret"]["optional"] is True
    assert reference["name"] == volume["secret"]["secretName"]
    ca_key = Path(enroll.ca_file).name
    create = f"create secret generic {reference['name']} --from-literal={reference['key']}="
    for notes in (KUBERNETES / "agent" / "kustomization.yaml", REPO / "docs" / "deployment.md"):
        # Comments and continued lines joined: what an operator would type.
        typed = re.sub(r"[\s\\#]+", " ", notes.read_text())
        assert create in typed and f"--from-file={ca_key}=" in typed, relative(notes)


def test_enroll_script_is_valid_posix_shell() -> None:
    enroller, _ = command("agent", "enroll")
    assert enroller.spec["command"] == ["/bin/sh", "-c"]
    result = subprocess.run(["sh", "-n"], input=enroller.spec["args"][0], text=True, check=False)
    assert result.returncode == 0


def test_agent_is_one_replica_that_may_drain() -> None:
    deployment = one("agent", "Deployment")
    _, start = command("agent", "start")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > start.drain_grace


def provider_doc_role() -> dict[str, Any]:
    text = (REPO / "docs" / "providers" / "kubernetes.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") == "Role":
                return doc
    raise AssertionError("docs/providers/kubernetes.md has no Role")


def permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_agent_role_is_exactly_what_the_kubernetes_provider_documents() -> None:
    assert permissions(one("agent", "Role")) == permissions(provider_doc_role())


def test_the_agent_runs_as_the_bound_service_account() -> None:
    namespace = kustomization(KUBERNETES / "agent")["namespace"]
    accounts = {doc["metadata"]["name"] for doc in objects_in("agent", "ServiceAccount")}
    binding = one("agent", "RoleBinding")
    pod = one("agent", "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] in accounts
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": namespace}
    ]
    assert binding["roleRef"]["name"] == one("agent", "Role")["metadata"]["name"]


def test_agent_config_is_valid_and_matches_the_namespace(tmp_path: Path) -> None:
    runner, start = command("agent", "start")
    (mount,) = [m for m in runner.spec["volumeMounts"] if m["mountPath"] == start.config]
    config_map = one("agent", "ConfigMap")
    path = tmp_path / mount["subPath"]
    path.write_text(config_map["data"][mount["subPath"]])
    config = load_agent_config_file(path)
    assert set(config.providers) == {"kubernetes"}
    settings = config.providers["kubernetes"]
    load_provider("kubernetes", settings)  # the provider's own validation
    assert settings["in_cluster"] is True
    assert settings["namespace"] == kustomization(KUBERNETES / "agent")["namespace"]
    accounts = {doc["metadata"]["name"] for doc in objects_in("agent", "ServiceAccount")}
    assert settings["service_account"] in accounts - {runner.pod["serviceAccountName"]}
