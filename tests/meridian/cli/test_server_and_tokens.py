"""``server start`` (as a real subprocess, stopped with SIGINT) and ``tokens create``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from meridian.cli import server
from tests.support.deadlines import DEADLINE_S, deadline

REPO = Path(__file__).resolve().parents[3]


def test_banner_tells_what_to_type_next(tmp_path: Path) -> None:
    lines = server.usage_banner("127.0.0.1:7443", "127.0.0.1:7444", tmp_path / "ca.crt", tmp_path)
    text = "\n".join(lines)
    assert "MERIDIAN_CONTROL_PLANE=127.0.0.1:7443" in text
    assert f"MERIDIAN_CA_FILE={tmp_path / 'ca.crt'}" in text
    assert f"meridian api-tokens create --data-dir {tmp_path} --role admin" in text
    assert f"meridian login --control-plane 127.0.0.1:7443 --ca-file {tmp_path / 'ca.crt'}" in text
    assert f"meridian tokens create --data-dir {tmp_path} --environment NAME" in text


def test_banner_on_every_interface_names_no_unreachable_address(tmp_path: Path) -> None:
    text = "\n".join(server.usage_banner("0.0.0.0:7443", "0.0.0.0:7444", tmp_path / "ca", tmp_path))
    assert "listening on 0.0.0.0:7443" in text
    assert "--control-plane HOST:7443" in text and "--control-plane 0.0.0.0" not in text


def test_tokens_create_prints_only_the_token_on_stdout(cli, tmp_path) -> None:
    result = cli(
        "tokens", "create", "--data-dir", str(tmp_path), "--environment", "aws", "--ttl", "60"
    )
    assert result.code == 0, result.err
    assert re.fullmatch(r"mjt_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\n", result.out)
    assert "valid 60s" in result.err and "meridian agent enroll" in result.err


def test_tokens_can_pin_labels_and_list_them(cli, tmp_path) -> None:
    created = cli(
        "tokens", "create", "--data-dir", str(tmp_path), "--environment", "lab",
        "--label", "site=edge", "--label", "zone=a",
    )  # fmt: skip
    assert created.code == 0, created.err
    assert "with labels site=edge,zone=a pinned" in created.err
    listed = json.loads(cli("tokens", "list", "--data-dir", str(tmp_path), "--json").out)
    assert [(t["environment"], t["labels"], t["state"]) for t in listed] == [
        ("lab", {"site": "edge", "zone": "a"}, "unused")
    ]
    table = cli("tokens", "list", "--data-dir", str(tmp_path)).out
    assert "PINNED LABELS" in table and "site=edge,zone=a" in table
    bad = cli(
        "tokens", "create", "--data-dir", str(tmp_path), "--environment", "lab",
        "--label", "Bad Key=x",
    )  # fmt: skip
    assert bad.code != 0 and "invalid label" in bad.err
    reserved = cli(
        "tokens", "create", "--data-dir", str(tmp_path), "--environment", "lab",
        "--label", "environment=prod",
    )  # fmt: skip
    assert reserved.code != 0 and "'environment' is reserved" in reserved.err


def test_server_start_serves_until_sigint(cli, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "meridian",
        "server",
        "start",
        "--data-dir",
        str(tmp_path),
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    try:
        banner = []
        # readline blocks: the deadline only bounds how many banner lines are read.
        end = deadline()
        assert process.stdout is not None
        while time.monotonic() < end:
            line = process.stdout.readline()
            banner.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        text = "".join(banner)
        address = re.search(r"MERIDIAN_CONTROL_PLANE=(\S+)", text)
        ca_file = re.search(r"MERIDIAN_CA_FILE=(\S+)", text)
        assert address and ca_file, text
        client = ["--control-plane", address[1], "--ca-file", ca_file[1]]
        refused = cli("agents", "list", *client)
        assert refused.code == 1 and "needs an API token" in refused.err
        token = cli("api-tokens", "create", "--data-dir", str(tmp_path), "--role", "viewer")
        assert token.code == 0, token.err
        listed = cli("agents", "list", *client, "--token", token.out.strip())
        assert listed.code == 0 and "no agents" in listed.out
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, err
    assert "Shutting down" in out
    assert "Traceback" not in err
