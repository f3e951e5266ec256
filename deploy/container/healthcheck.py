#!/usr/bin/env python3
"""Container health check, installed in the image as ``meridian-healthcheck``.

One image runs every role, so the check first finds the ``meridian`` process in the container
(in ``/proc``) and parses its command line with Meridian's own CLI parser:

* ``meridian server start``: calls the standard gRPC health service on the ``--listen`` port
  and is healthy only on SERVING (the server answers NOT_SERVING while it shuts down). The
  ports are TLS-only, which is why Docker and Kubernetes cannot do this natively (Kubernetes'
  ``grpc:`` probe speaks plaintext). The check trusts ``<data dir>/tls/ca.crt`` and verifies the
  name ``localhost``, which the server certificate always carries.
* any other ``meridian`` command (``agent start`` listens on nothing; it only dials out): the
  process being there is all that can be checked.

Exit status 0 means healthy, 1 unhealthy. ``MERIDIAN_HEALTHCHECK_PROC`` replaces ``/proc``
(tests use it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TIMEOUT_S = 5.0
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def meridian_commands(proc: Path) -> list[list[str]]:
    """The arguments after ``meridian`` of every meridian process, lowest pid first.

    The console script runs as ``python /path/bin/meridian ARGS`` and an init process may run
    ``docker-init -- meridian ARGS``: both contain an element whose basename is ``meridian``.
    """
    found = []
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        for index, arg in enumerate(argv):
            if os.path.basename(arg) == "meridian":
                found.append(argv[index + 1 :])
                break
    return found


def parse(args: list[str]) -> argparse.Namespace | None:
    from meridian.cli.common import CliError
    from meridian.cli.main import build_parser

    try:
        return build_parser().parse_args(args)
    except (CliError, SystemExit):
        return None


def check_server(listen: str, data_dir: str) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, _, port = listen.rpartition(":")
    if host.strip("[]") in WILDCARD_HOSTS:  # listening everywhere: loopback is one of them
        host = "127.0.0.1"
    target = f"{host}:{port}"
    ca_file = Path(data_dir).expanduser() / "tls" / "ca.crt"
    try:
        ca_pem = ca_file.read_bytes()
    except OSError as exc:
        return False, f"cannot read {ca_file}: {exc.strerror or exc}"
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
            )
        except grpc.RpcError as exc:
            return False, f"health check on {target} failed: {exc.code().name} {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"server on {target}: {status}"


def main() -> int:
    proc = Path(os.environ.get("MERIDIAN_HEALTHCHECK_PROC", "/proc"))
    commands = [c for c in map(parse, meridian_commands(proc)) if c is not None]
    servers = [c for c in commands if (c.command, getattr(c, "action", "")) == ("server", "start")]
    if servers:
        healthy, message = check_server(servers[0].listen, servers[0].data_dir)
    elif commands:
        healthy, message = True, f"meridian {commands[0].command} is running"
    else:
        healthy, message = False, "no meridian process in this container"
    print(("healthy: " if healthy else "unhealthy: ") + message)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
