"""Third-party storage emulators as real subprocesses on free 127.0.0.1 ports.

- S3: moto in server mode (``moto_server``, from the dev extra ``moto[server]``);
- GCS: ``gcp-storage-emulator`` (dev extra); it serves the official client's resumable
  uploads, ranged reads and (unverified) signed URLs, but ignores ``ifGenerationMatch``;
- Azure Blob: Azurite's ``azurite-blob`` from ``.ci/azurite`` (installed by
  ``.ci/azurite-setup.sh``), with its well-known development account key.

Each runs in its own process, so memory measured in the test process is the client's alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.polling import poll_until

REPO = Path(__file__).resolve().parents[3]
AZURITE_BIN = REPO / ".ci" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented development key (public, emulator only).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Emulator:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def azurite_missing_reason() -> str | None:
    """Why the Azure tests cannot run here: only a missing Node.js is a reason to skip.

    With node and npm present, a missing Azurite is installed by ``.ci/azurite-setup.sh``
    (what ``.ci/run`` does); if that fails, the tests fail rather than skip.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed: install Node.js, then run .ci/azurite-setup.sh"
    if not AZURITE_BIN.exists():
        subprocess.run([str(REPO / ".ci" / "azurite-setup.sh")], check=True, timeout=600)
    return None


def azurite_connection_string(url: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={url}/{AZURITE_ACCOUNT};"
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is listening
    except OSError:
        return False


@contextlib.contextmanager
def _run(argv: list[str], url: str, workdir: Path, env: dict[str, str]) -> Iterator[Emulator]:
    log = workdir / "emulator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **env}
        )
    try:
        poll_until(
            lambda: process.poll() is not None or _answers(url),
            message=lambda: f"{argv[0]} to listen on {url}: {log.read_text()[-2000:]}",
        )
        if process.poll() is not None:
            raise RuntimeError(f"{argv} exited: {log.read_text()[-2000:]}")
        yield Emulator(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def moto_s3(workdir: Path) -> Iterator[Emulator]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with _run(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        workdir,
        {},
    ) as emulator:
        yield Emulator(f"http://127.0.0.1:{port}", emulator.process, emulator.log)


@contextlib.contextmanager
def gcs_emulator(workdir: Path, bucket: str) -> Iterator[Emulator]:
    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1"]
    argv += ["--port", str(port), "--default-bucket", bucket, "-q"]
    with _run(argv, f"http://127.0.0.1:{port}/", workdir, {"STORAGE_BASE": str(workdir)}) as e:
        yield e


@contextlib.contextmanager
def azurite(workdir: Path) -> Iterator[Emulator]:
    port = free_port()
    argv = [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    argv += ["--location", str(workdir), "--silent", "--skipApiVersionCheck", "--loose"]
    with _run(argv, f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list", workdir, {}) as e:
        yield Emulator(f"http://127.0.0.1:{port}", e.process, e.log)
