"""A small fake Kubernetes API server for contract tests of the ``kubernetes`` provider.

It serves the routes the official client uses for Jobs (HTTPS with a self-signed certificate,
bearer-token auth on every request), answers with realistic JSON (metadata, defaults, Status
bodies for errors), records every request, and simulates what the job controller and a kubelet
do: one pod per Job, Pending -> Running -> Succeeded/Failed, the Job's terminal conditions,
``activeDeadlineSeconds`` (condition Failed/DeadlineExceeded) and deletion with
``propagationPolicy`` (Foreground/Background delete the pods; the Job default, Orphan, leaves
them running).

**The "kubelet" really runs the container's command as a local subprocess** (the image is
ignored; ``meridian-step`` resolves to this virtualenv's script), with the container's env only,
stdout and stderr merged into the pod log as a container runtime does. That makes the provider
conformance suite meaningful. Other simulations, stated honestly: an image whose name starts
with ``unpullable/`` stays in ErrImagePull/ImagePullBackOff; a container killed by SIGKILL while
it has a memory limit is reported as ``OOMKilled`` (exit 137). Not simulated: scheduling, node
selectors and tolerations (accepted and stored only), ttlSecondsAfterFinished, watches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

_NS = r"/namespaces/(?P<ns>[^/]+)"
_ROUTES = [
    ("POST", re.compile(rf"^/apis/batch/v1{_NS}/jobs$"), "create_job"),
    ("GET", re.compile(rf"^/apis/batch/v1{_NS}/jobs$"), "list_jobs"),
    ("GET", re.compile(rf"^/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)$"), "get_job"),
    ("DELETE", re.compile(rf"^/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)$"), "delete_job"),
    ("GET", re.compile(rf"^/api/v1{_NS}/pods$"), "list_pods"),
    ("GET", re.compile(rf"^/api/v1{_NS}/pods/(?P<name>[^/]+)$"), "get_pod"),
    ("GET", re.compile(rf"^/api/v1{_NS}/pods/(?P<name>[^/]+)/log$"), "pod_log"),
]
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
UNPULLABLE_PREFIX = "unpullable/"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_nano() -> str:
    ns = time.time_ns()
    stamp = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 10**9:09d}Z"


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, **details)
        self.code = code


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    code: int
    reason: str
    message: str
    remaining: int


@dataclass
class Pod:
    obj: dict[str, Any]
    job: Job
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    phase: str = "Pending"
    log: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    deleted: bool = False

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.obj["spec"]["containers"][0])

    def to_json(self) -> dict[str, Any]:
        c = self.container
        status: dict[str, Any] = {"phase": self.phase, "hostIP": "10.0.0.1", "podIP": "10.1.0.7"}
        status["startTime"] = self.obj["metadata"]["creationTimestamp"]
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "" if "waiting" in self.state else f"docker.io/{c['image']}@sha256:0",
                "ready": "running" in self.state,
                "started": "running" in self.state,
                "restartCount": 0,
                "state": self.state,
            }
        ]
        return {**self.obj, "status": status}


@dataclass
class Job:
    obj: dict[str, Any]
    pods: list[Pod] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple[str, str]:
        return self.obj["metadata"]["namespace"], self.obj["metadata"]["name"]


class FakeKubeApiServer:
    """Start with ``start()`` (or ``with``); point the client at ``url`` with ``ca_file``."""

    def __init__(self, state_dir: Path, *, token: str = "meridian-test-token") -> None:
        self.state_dir = state_dir
        self.token = token
        self.pending_s = 0.05
        self.requests: list[Recorded] = []
        self.jobs: dict[tuple[str, str], Job] = {}
        self.orphans: list[Pod] = []
        self.all_pods: list[Pod] = []
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self.ca_file = str(state_dir / "apiserver.pem")

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FakeKubeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key_file = _self_signed_cert(self.state_dir, self.ca_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="fake-kube").start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            pods = list(self.all_pods)
        for pod in pods:
            self._kill(pod, 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    # ---- test knobs and views ----------------------------------------------------------

    def fail_next(
        self, method: str, path_regex: str, code: int, reason: str, message: str, times: int = 1
    ) -> None:
        """Answer the next ``times`` matching requests with a Status error."""
        with self._lock:
            failure = _Failure(method, re.compile(path_regex), code, reason, message, times)
            self._failures.append(failure)

    def calls(self, method: str, path_part: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def live_processes(self, job_name: str | None = None) -> list[int]:
        """Pids of pod processes still running (of one Job's pods, or of all)."""
        with self._lock:
            pods = [p for p in self.all_pods if job_name in (None, p.job.key[1])]
        return [p.proc.pid for p in pods if p.proc is not None and p.proc.poll() is None]

    # ---- request handling --------------------------------------------------------------

    def handle(self, method: str, url: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        body = json.loads(raw) if raw.strip() else None
        with self._lock:
            self.requests.append(Recorded(method, parts.path, query, body))
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 401, status_body(401, "Unauthorized", "Unauthorized")
            for failure in self._failures:
                if failure.method == method and failure.pattern.search(parts.path):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure.code, status_body(failure.code, failure.reason, failure.message)
        for verb, pattern, action in _ROUTES:
            match = pattern.match(parts.path)
            if verb == method and match:
                try:
                    return 200, getattr(self, f"_{action}")(
                        query=query, body=body, **match.groupdict()
                    )
                except ApiError as exc:
                    return exc.code, exc.body
        return 404, status_body(404, "NotFound", "the server could not find the requested resource")

    def _job(self, ns: str, name: str) -> Job:
        job = self.jobs.get((ns, name))
        if job is None:
            raise ApiError(
                404,
                "NotFound",
                f'jobs.batch "{name}" not found',
                name=name,
                group="batch",
                kind="jobs",
            )
        return job

    def _create_job(self, ns: str, body: Any, query: Any) -> tuple[int, Any]:
        meta = body.get("metadata", {})
        name = meta.get("name", "")
        _validate_job(name, body)
        with self._lock:
            if (ns, name) in self.jobs:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'jobs.batch "{name}" already exists',
                    name=name,
                    group="batch",
                    kind="jobs",
                )
            uid = str(uuid.uuid4())
            meta.update(
                namespace=ns, uid=uid, resourceVersion="1", generation=1, creationTimestamp=_now()
            )
            spec = body["spec"]
            sel = {"batch.kubernetes.io/controller-uid": uid}
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec["selector"] = {"matchLabels": sel}
            template = spec["template"]
            template.setdefault("metadata", {}).setdefault("labels", {}).update(
                {
                    **sel,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }
            )
            pod_spec = template["spec"]
            pod_spec.setdefault("terminationGracePeriodSeconds", 30)
            pod_spec.setdefault("dnsPolicy", "ClusterFirst")
            pod_spec.setdefault("schedulerName", "default-scheduler")
            for c in pod_spec["containers"]:
                c.setdefault("imagePullPolicy", "IfNotPresent")
                c.setdefault("terminationMessagePath", "/dev/termination-log")
            body["status"] = {"startTime": _now(), "active": 1, "ready": 0, "terminating": 0}
            job = Job(body)
            self.jobs[(ns, name)] = job
            pod = self._new_pod(job)
        threading.Thread(target=self._kubelet, args=(pod,), daemon=True).start()
        if spec.get("activeDeadlineSeconds"):
            threading.Thread(target=self._deadline, args=(job,), daemon=True).start()
        return 201, body

    def _new_pod(self, job: Job) -> Pod:
        jmeta, template = job.obj["metadata"], job.obj["spec"]["template"]
        name = f"{jmeta['name'][:57]}-{secrets.token_hex(3)[:5]}"
        obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "generateName": f"{jmeta['name']}-",
                "namespace": jmeta["namespace"],
                "uid": str(uuid.uuid4()),
                "resourceVersion": "1",
                "creationTimestamp": _now(),
                "labels": dict(template["metadata"]["labels"]),
                "annotations": dict(template["metadata"].get("annotations", {})),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": jmeta["name"],
                        "uid": jmeta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**json.loads(json.dumps(template["spec"])), "nodeName": "fake-node"},
        }
        pod = Pod(obj, job)
        job.pods.append(pod)
        self.all_pods.append(pod)
        return pod

    def _get_job(self, ns: str, name: str, **_: Any) -> Any:
        with self._lock:
            return self._job(ns, name).obj

    def _list_jobs(self, ns: str, query: Any, **_: Any) -> Any:
        with self._lock:
            items = [j.obj for (n, _), j in self.jobs.items() if n == ns and _selects(query, j.obj)]
        return {
            "kind": "JobList",
            "apiVersion": "batch/v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _delete_job(self, ns: str, name: str, query: Any, body: Any) -> tuple[int, Any]:
        policy = (query.get("propagationPolicy") or [None])[0] or (body or {}).get(
            "propagationPolicy"
        )
        with self._lock:
            job = self._job(ns, name)
            if policy == "Foreground":
                job.obj["metadata"].update(
                    deletionTimestamp=_now(), finalizers=["foregroundDeletion"]
                )
            else:
                del self.jobs[(ns, name)]
                if policy != "Background":  # batch/v1 Jobs default to orphaning their pods
                    self.orphans.extend(job.pods)
            job.done.set()
        if policy in ("Foreground", "Background"):
            threading.Thread(target=self._collect, args=(job, policy), daemon=True).start()
        if policy == "Foreground":
            return 200, job.obj
        uid = job.obj["metadata"]["uid"]
        return 200, {
            **status_body(200, "", ""),
            "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid},
        }

    def _collect(self, job: Job, policy: str) -> None:
        """The garbage collector: delete the Job's pods, then (Foreground) the Job itself."""
        for pod in list(job.pods):
            self._kill(pod, int(pod.obj["spec"].get("terminationGracePeriodSeconds", 30)))
        with self._lock:
            job.pods.clear()
            if policy == "Foreground" and self.jobs.get(job.key) is job:
                del self.jobs[job.key]

    def _list_pods(self, ns: str, query: Any, **_: Any) -> Any:
        with self._lock:
            pods = [p for j in self.jobs.values() for p in j.pods] + self.orphans
            items = [
                p.to_json()
                for p in pods
                if p.obj["metadata"]["namespace"] == ns and _selects(query, p.obj)
            ]
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _pod(self, ns: str, name: str) -> Pod:
        for pod in [p for j in self.jobs.values() for p in j.pods] + self.orphans:
            if pod.name == name and pod.obj["metadata"]["namespace"] == ns:
                return pod
        raise ApiError(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")

    def _get_pod(self, ns: str, name: str, **_: Any) -> Any:
        with self._lock:
            return self._pod(ns, name).to_json()

    def _pod_log(self, ns: str, name: str, query: Any, **_: Any) -> tuple[int, str]:
        with self._lock:
            pod = self._pod(ns, name)
            container = (query.get("container") or [pod.container["name"]])[0]
            if container != pod.container["name"]:
                raise ApiError(
                    400, "BadRequest", f"container {container} is not valid for pod {name}"
                )
            if "waiting" in pod.state:
                why = pod.state["waiting"]["reason"]
                raise ApiError(
                    400,
                    "BadRequest",
                    f'container "{container}" in pod "{name}" is waiting to start: {why}',
                )
            stamped = (query.get("timestamps") or ["false"])[0] == "true"
            return 200, "".join(line if stamped else line.split(" ", 1)[1] for line in pod.log)

    # ---- the simulated kubelet and job controller --------------------------------------

    def _kubelet(self, pod: Pod) -> None:
        time.sleep(self.pending_s)
        c = pod.container
        if c["image"].startswith(UNPULLABLE_PREFIX):
            with self._lock:
                pod.state = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull image "{c["image"]}": pull access denied',
                    }
                }
            time.sleep(0.2)
            with self._lock:
                pod.state = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{c["image"]}"',
                    }
                }
            return
        env = {"PATH": f"{Path(sys.executable).parent}:{os.defpath}", "HOSTNAME": pod.name}
        env.update({e["name"]: e.get("value", "") for e in c.get("env", [])})
        argv = list(c.get("command", [])) + list(c.get("args", []))
        work = self.state_dir / pod.name
        work.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if pod.deleted:
                return
            try:
                pod.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=c.get("workingDir") or work,
                    start_new_session=True,
                )
            except OSError as exc:
                self._terminated(pod, 128, "StartError", str(exc))
                return
            pod.phase, pod.state = "Running", {"running": {"startedAt": _now()}}
        assert pod.proc.stdout is not None
        for raw in pod.proc.stdout:
            text = raw.decode("utf-8", errors="replace")
            with self._lock:
                pod.log.append(
                    f"{_now_nano()} {text if text.endswith(chr(10)) else text + chr(10)}"
                )
        rc = pod.proc.wait()
        with self._lock:
            if pod.deleted:
                return
            limits = c.get("resources", {}).get("limits", {})
            if rc == -signal.SIGKILL and "memory" in limits:
                self._terminated(pod, 137, "OOMKilled", "")
            else:
                code = rc if rc >= 0 else 128 - rc
                self._terminated(pod, code, "Completed" if code == 0 else "Error", "")

    def _terminated(self, pod: Pod, code: int, reason: str, message: str) -> None:
        created = pod.obj["metadata"]["creationTimestamp"]
        pod.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "message": message,
                "startedAt": created,
                "finishedAt": _now(),
                "containerID": f"containerd://{pod.obj['metadata']['uid']}",
            }
        }
        pod.phase = "Succeeded" if code == 0 else "Failed"
        if code == 0:
            self._finish(
                pod.job,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                succeeded=1,
            )
        else:
            self._finish(
                pod.job,
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                failed=1,
            )

    def _finish(self, job: Job, kind: str, reason: str, message: str, **counts: int) -> None:
        if job.done.is_set():
            return
        now = _now()
        pre = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        conditions = [
            {
                "type": t,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
            for t in (pre, kind)
        ]
        job.obj["status"].update(active=0, conditions=conditions, **counts)
        if kind == "Complete":
            job.obj["status"]["completionTime"] = now
        job.done.set()

    def _deadline(self, job: Job) -> None:
        if job.done.wait(float(job.obj["spec"]["activeDeadlineSeconds"])):
            return
        for pod in list(job.pods):
            self._kill(pod, int(pod.obj["spec"].get("terminationGracePeriodSeconds", 30)))
        with self._lock:
            job.pods.clear()
            self._finish(
                job,
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                failed=1,
            )

    def _kill(self, pod: Pod, grace_s: int) -> None:
        with self._lock:
            pod.deleted = True
            pod.obj["metadata"]["deletionTimestamp"] = _now()
            proc = pod.proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _selects(query: dict[str, list[str]], obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels", {})
    selector = (query.get("labelSelector") or [""])[0]
    terms = [t.split("=", 1) for t in selector.split(",") if t]
    return all(labels.get(k) == v for k, v in terms)


def _validate_job(name: str, body: dict[str, Any]) -> None:
    causes = []
    if not _DNS_LABEL.match(name) or len(name) > 63:
        causes.append(
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must '
            "consist of lower case alphanumeric characters or '-', and must start and end "
            "with an alphanumeric character"
        )
    template = body.get("spec", {}).get("template", {})
    for _key, value in {
        **body["metadata"].get("labels", {}),
        **template.get("metadata", {}).get("labels", {}),
    }.items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                f'metadata.labels: Invalid value: "{value}": must be 63 characters or less'
            )
    pod = template.get("spec", {})
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(
            'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"'
        )
    for i, c in enumerate(pod.get("containers") or [{}]):
        if not c.get("image"):
            causes.append(f"spec.template.spec.containers[{i}].image: Required value")
    if causes:
        raise ApiError(
            422,
            "Invalid",
            f'Job.batch "{name}" is invalid: {"; ".join(causes)}',
            name=name,
            group="batch",
            kind="Job",
        )


def _handler(fake: FakeKubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, payload = fake.handle(self.command, self.path, self.headers, raw)
            if isinstance(payload, tuple):  # handlers that choose their own status code
                code, payload = payload
            text = payload if isinstance(payload, str) else json.dumps(payload)
            data = text.encode("utf-8")
            self.send_response(code)
            kind = "text/plain" if isinstance(payload, str) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _self_signed_cert(directory: Path, cert_file: str) -> str:
    """Write a self-signed certificate for 127.0.0.1 (the CA bundle clients trust) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    Path(cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "apiserver-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(key_file)
