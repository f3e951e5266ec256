"""Helpers of tests/integration/test_hybrid_estate.py.

* ``ProviderEstate``: an ``Estate`` whose agents start with ``--provider TYPE --config FILE``
  (the way a real agent gets its provider's endpoint and credentials) and, optionally, extra
  environment variables; ``write_agent_config`` writes those config files.
* ``FakeCloudLogging``: what the Cloud Run agent needs to read execution output the production
  way (``CloudLoggingSource``: application default credentials + Cloud Logging's REST method
  ``entries:list``) without Google: an HTTP server answering ``/v2/entries:list`` with the lines
  ``FakeCloudRun`` holds for each execution, and an ``authorized_user`` credentials file for
  ``GOOGLE_APPLICATION_CREDENTIALS`` carrying an access token valid until 2099, so google-auth
  never refreshes it (it would call Google's token endpoint, which the file cannot change).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.harness import Estate, child_env, meridian_cmd
from tests.providers.gcp_run_fake import FakeCloudRun
from tests.support.polling import poll_until


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
        self._agent_env: dict[str, dict[str, str]] = {}

    def add_provider_agent(
        self,
        environment: str,
        labels: Mapping[str, str],
        provider: str,
        config_file: Path,
        *,
        capacity: int = 4,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Enroll and start an agent with ``--provider provider --config config_file``."""
        name = f"{environment}-agent"
        self._agent_providers[name] = (provider, config_file)
        self._agent_env[f"agent-{name}"] = dict(env or {})
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

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        extra = self._agent_env.get(name)
        if not extra:
            return super()._spawn(name, args)
        log = self.root / f"{name}.log"
        if log not in self._logs:
            self._logs.append(log)
        with open(log, "ab") as out:
            return subprocess.Popen(
                meridian_cmd(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(extra),
                start_new_session=True,
            )


TOKEN = "meridian-test-access-token"
_EXECUTION = re.compile(r'labels\."run\.googleapis\.com/execution_name"="([^"]+)"')
_JOB = re.compile(r'resource\.labels\.job_name="([^"]+)"')


class FakeCloudLogging:
    """Cloud Logging ``entries:list`` over the fake's execution output, for one bearer token."""

    def __init__(self, cloud_run: FakeCloudRun) -> None:
        self.cloud_run = cloud_run
        self.list_requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v2/entries:list":
                    self.send_error(404)
                    return
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_error(401, "not the token of the credentials file")
                    return
                reply = fake._entries(json.loads(body))
                raw = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeCloudLogging:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def write_credentials(self, path: Path) -> Path:
        """An ``authorized_user`` ADC file whose access token this server accepts."""
        doc = {
            "type": "authorized_user",
            "client_id": "meridian-test",
            "client_secret": "not-a-secret",
            "refresh_token": "never-used",
            "token": TOKEN,
            "expiry": "2099-01-01T00:00:00Z",
        }
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path

    def _entries(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every line of the execution the filter names (the reader skips what it has seen)."""
        self.list_requests.append(body)
        execution, job = _EXECUTION.search(body["filter"]), _JOB.search(body["filter"])
        project = body["resourceNames"][0].removeprefix("projects/")
        if execution is None or job is None:
            return {"entries": []}
        name = (
            f"projects/{project}/locations/{self.cloud_run.region}/jobs/{job[1]}"
            f"/executions/{execution[1]}"
        )
        with self.cloud_run._lock:
            found = self.cloud_run.executions.get(name)
            lines = list(found.logs) if found is not None else []
        entries = []
        for index, (stream, text, at) in enumerate(lines):
            stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            entries.append(
                {
                    "logName": f"projects/{project}/logs/run.googleapis.com%2F{stream}",
                    "textPayload": text,
                    "insertId": f"{index:08d}",
                    "timestamp": stamp,
                }
            )
        return {"entries": entries}


def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (cleanup in a backend is asynchronous) until it holds or fail."""
    poll_until(check, interval=0.1, message=what)


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
