"""deploy/compose/compose.yaml: the services agree with each other and with the CLI they run."""

from __future__ import annotations

import argparse
import re
from functools import cache
from typing import Any

from tests.deploy.artefacts import (
    COMPOSE_FILE,
    DOCKERFILE,
    REPO,
    SCRIPT_VARIABLES,
    compose_commands,
    compose_services,
    load_documents,
)

SERVICES = compose_services()
(DOCUMENT,) = load_documents(COMPOSE_FILE)


@cache
def parsed(service: str, command: str, action: str) -> argparse.Namespace:
    """The service's ``meridian COMMAND ACTION`` (each service runs each at most once)."""
    lines = [line.parse() for line in compose_commands(service, SCRIPT_VARIABLES)]
    (found,) = [ns for ns in lines if (ns.command, ns.action) == (command, action)]
    return found


def server_start() -> argparse.Namespace:
    return parsed("control-plane", "server", "start")


def token_create() -> argparse.Namespace:
    return parsed("enroll-agent", "tokens", "create")


def agent_enroll() -> argparse.Namespace:
    return parsed("enroll-agent", "agent", "enroll")


def agent_start() -> argparse.Namespace:
    return parsed("agent", "agent", "start")


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> named volume (bind mounts left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"use plain seconds, e.g. 30s, not {duration!r}"
    return int(match.group(1))


def test_every_service_runs_the_image_built_from_the_dockerfile() -> None:
    images = {service["image"] for service in SERVICES.values()}
    assert len(images) == 1, "one image for every role"
    for name, service in SERVICES.items():
        context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
        assert context == REPO, f"{name}: build context must be the repository root"
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE


def test_services_share_one_declared_network() -> None:
    declared = set(DOCUMENT["networks"])
    for name, service in SERVICES.items():
        assert set(service["networks"]) == declared == {"meridian"}, name


def test_volumes_are_declared_used_and_hold_the_data_dirs() -> None:
    used = {v for s in SERVICES.values() for v in named_volumes(s).values()}
    assert used == set(DOCUMENT["volumes"])
    server_volumes = named_volumes(SERVICES["control-plane"])
    agent_volumes = named_volumes(SERVICES["agent"])
    enroll_volumes = named_volumes(SERVICES["enroll-agent"])
    server_dir, agent_dir = server_start().data_dir, agent_start().data_dir
    assert server_dir in server_volumes, "the server's data dir must be a volume (the CA)"
    assert agent_dir in agent_volumes, "the agent's data dir must be a volume (its identity)"
    # The one-shot service must write where the other two read: same volume, same path.
    assert enroll_volumes[token_create().data_dir] == server_volumes[server_dir]
    assert enroll_volumes[agent_enroll().data_dir] == agent_volumes[agent_dir]
    assert agent_enroll().ca_file == f"{server_dir}/tls/ca.crt"


def test_the_agent_dials_a_name_the_server_certificate_covers() -> None:
    host, _, port = agent_enroll().control_plane.rpartition(":")
    assert host in SERVICES, "the agent dials the control plane by its service name"
    assert host in server_start().server_name, "--server-name must cover the name agents dial"
    assert port == server_start().listen.rpartition(":")[2]
    assert agent_start().control_plane is None, "agent start takes the address from its enrollment"


def test_the_token_and_the_agent_agree_on_environment_and_labels() -> None:
    assert token_create().environment == agent_start().environment
    pinned = dict(label.split("=", 1) for label in token_create().label)
    claimed = dict(label.split("=", 1) for label in agent_start().label)
    assert claimed.items() <= pinned.items(), "an agent may claim only its token's pinned labels"


def test_start_order_is_server_then_enrollment_then_agent() -> None:
    assert SERVICES["enroll-agent"]["depends_on"] == {
        "control-plane": {"condition": "service_healthy"}
    }
    assert SERVICES["agent"]["depends_on"] == {
        "enroll-agent": {"condition": "service_completed_successfully"}
    }
    assert SERVICES["control-plane"]["healthcheck"]["test"] == ["CMD", "meridian-healthcheck"]
    assert SERVICES["enroll-agent"]["restart"] == "no"


def test_only_the_client_port_is_published_and_only_on_loopback() -> None:
    client_port = server_start().listen.rpartition(":")[2]
    assert SERVICES["control-plane"]["ports"] == [f"127.0.0.1:{client_port}:{client_port}"]
    for name in ("enroll-agent", "agent"):
        assert "ports" not in SERVICES[name], f"{name}: agents need no inbound port"


def test_services_are_locked_down() -> None:
    for name, service in SERVICES.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert "user" not in service, f"{name}: keep the image's non-root user"
        assert not service.get("privileged"), name


def test_the_agent_may_drain_before_it_is_killed() -> None:
    agent = SERVICES["agent"]
    assert seconds(agent["stop_grace_period"]) > agent_start().drain_grace
    assert agent["init"] is True, "an init process reaps orphaned step processes"
