"""Downloading an input result from a presigned URL (decision 0020, "Presigned URLs").

A producing site whose store has ``presign_transfers = true`` may answer a transfer with a
short-lived, read-only URL of the object instead of relaying its bytes through the control
plane. ``download`` fetches it with ``Range: bytes=OFFSET-`` (a cut transfer resumes where its
``.part`` file ends) and hands each read, at most 1 MiB, to the caller, which writes and
hashes it. ``download_into`` runs it into a transfer's ``.part`` (``agent.partfile``) on this
module's own threads (at most ``MAX_DOWNLOADS``, never the event loop's shared executor) and
checks the digest of the whole: a wrong object restarts the part.

The URL comes from the producing site, so the consumer judges it before any connection: an
https URL (plain ``http`` only when the agent's config allows it, for emulators) of printable
ASCII, at most ``MAX_URL_LENGTH`` long, without user info, whose host is one of the agent's
``[transfers] presigned_url_hosts`` (by default the clouds' storage endpoints): a site cannot
point consumers at other hosts. Redirects are never followed (a redirect could send the
request, and the URL, somewhere else).

A download must make progress: at least ``PROGRESS_BYTES`` every ``STALL_S`` seconds,
connecting and the answer's head included. Reads return whatever arrived (``read1``), so a
trickle never holds a thread past that; a watchdog on the event loop aborts a download that
falls behind (it shuts its socket down, which ends a blocked read), and so does cancelling.

Every failure (refused, unreachable, an HTTP or protocol error, a stall, a wrong answer) is a
``PresignedDownloadFailed`` and the relay takes over; only the local disk's errors (writing
the part) propagate. The URL is a bearer credential: no error or log line of this module
contains it or its query (``PresignedDownloadFailed`` names the scheme and host at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.partfile import Progress
from agent.results.config import S3_HOSTS
from meridian.core.resultref import ResultRef

log = logging.getLogger("meridian.agent.transfers")
# Amazon S3 endpoint names ([transfers] presigned_url_hosts entry "@s3").
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d"
_S3_HOST = re.compile(
    r"^(?:[a-z0-9][a-z0-9.-]*\.)?"  # a bucket's virtual host
    rf"(?:s3|s3-fips|s3-accelerate|s3-external-1|s3-{_REGION})"
    rf"(?:\.dualstack)?(?:\.{_REGION})?\.amazonaws\.com(?:\.cn)?$"
)

MAX_URL_LENGTH = 8 * 1024
READ_BYTES = 1024 * 1024
# A download must receive PROGRESS_BYTES every STALL_S seconds (the first ones counting from
# the start: connecting, TLS and the answer's head included), or it is given up and the relay
# takes over: about 8.5 KiB/s at the least. Also each socket operation's timeout.
STALL_S = 30.0
PROGRESS_BYTES = 256 * 1024
# Downloads at once (ResultFetcher runs at most MAX_FETCHING = 4 fetches); more wait.
MAX_DOWNLOADS = 4
# After an abort (a stall, a cancel), how long the loop waits for the download's thread to end.
ABORT_WAIT_S = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
# Printable ASCII, no space: anything else in a URL is refused before it reaches http.client
# (which would quote it, signature and all, in an InvalidURL).
_URL_CHARS = re.compile(r"^[!-~]+$")

_POOL = ThreadPoolExecutor(max_workers=MAX_DOWNLOADS, thread_name_prefix="meridian-presigned")


class PresignedDownloadFailed(Exception):
    """The URL could not be used (refused, unreachable, an HTTP error, a stall, a wrong
    answer): the consumer falls back to the relay. The message never contains the URL."""


class _WriteFailed(Exception):
    """The caller's ``write`` failed (the local disk): not the URL's fault, passed on as is."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__()
        self.cause = cause


class Transfer:
    """One download's progress clock and abort switch, shared by its thread and the loop."""

    def __init__(self, stall_s: float = STALL_S, progress_bytes: int = PROGRESS_BYTES) -> None:
        self.stall_s, self.progress_bytes = stall_s, progress_bytes
        self.deadline = time.monotonic() + stall_s
        self.stopped = ""  # why it was aborted; "" while it may go on
        self._since = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def received(self, count: int) -> None:
        """(the thread) ``count`` more bytes arrived: each PROGRESS_BYTES restart the clock."""
        self._since += count
        if self._since >= self.progress_bytes:
            self._since = 0
            self.deadline = time.monotonic() + self.stall_s

    def overdue(self) -> bool:
        return time.monotonic() >= self.deadline

    def stalled(self) -> str:
        return (
            f"the download made too little progress (less than {self.progress_bytes} bytes in "
            f"{self.stall_s:g} s)"
        )

    def check(self) -> None:
        """(the thread) Raise if aborted or behind (between reads)."""
        if not self.stopped and self.overdue():
            self.abort(self.stalled())
        if self.stopped:
            raise PresignedDownloadFailed(self.stopped)

    def connected(self, sock: socket.socket) -> None:
        """(the thread) A connection was made: an abort now or later shuts it down."""
        with self._lock:
            self._socks.append(sock)
            stopped = self.stopped
        if stopped:
            _shut(sock)
            raise PresignedDownloadFailed(stopped)

    def abort(self, why: str) -> None:
        """(any thread) Stop the download: a blocked read ends, the thread gives up."""
        with self._lock:
            if not self.stopped:
                self.stopped = why
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also under TLS: it wakes a read blocked in another thread.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _ReportsSocket(http.client.HTTPConnection):
    """A connection that tells its transfer the socket it opened (to shut it on a stall)."""

    def __init__(self, *args: Any, transfer: Transfer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transfer = transfer

    def connect(self) -> None:
        super().connect()
        self._transfer.connected(self.sock)


class _HTTPConnection(_ReportsSocket):
    pass


class _HTTPSConnection(_ReportsSocket, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, transfer: Transfer) -> None:
        super().__init__()
        self._transfer = transfer

    def http_open(self, req: Any) -> Any:
        return self.do_open(_HTTPConnection, req, transfer=self._transfer)  # type: ignore[arg-type]


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, transfer: Transfer) -> None:
        super().__init__(context=_tls_context())
        self._transfer = transfer

    def https_open(self, req: Any) -> Any:
        return self.do_open(
            _HTTPSConnection,  # type: ignore[arg-type]
            req,
            context=self._context,  # type: ignore[attr-defined]
            transfer=self._transfer,
        )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _opener(transfer: Transfer) -> urllib.request.OpenerDirector:
    """An opener whose connections report their sockets to ``transfer`` and that never
    follows a redirect (proxies from the environment still apply)."""
    return urllib.request.build_opener(
        _NoRedirects, _HTTPHandler(transfer), _HTTPSHandler(transfer)
    )


async def download_into(
    progress: Progress, url: str, ref: ResultRef, *, hosts: Sequence[str], allow_http: bool
) -> bool:
    """Download the rest of ``ref``'s object from ``url`` into the part. False (after logging
    why, never the URL) when that failed and the relay should take over; what was written
    stays in the part (marked unchecked), except wrong bytes, which restart it.

    Raises:
        OSError: writing the part failed (the local disk).
    """
    transfer = Transfer(STALL_S, PROGRESS_BYTES)

    def fetch() -> None:
        with open(progress.part, "ab") as out:
            progress.unchecked = True  # whatever lands here, the relay never checked
            try:
                download(
                    url,
                    progress.received,
                    ref.size,
                    lambda data: progress.append(out, data),
                    hosts=hosts,
                    allow_http=allow_http,
                    transfer=transfer,
                )
            finally:
                out.flush()

    work = asyncio.get_running_loop().run_in_executor(_POOL, fetch)
    try:
        await _watch(work, transfer)
    except PresignedDownloadFailed as exc:
        log.warning("%s: the presigned download failed (%s); using the relay", ref.uri, exc)
        return False
    if progress.received != ref.size or progress.digest.hexdigest() != ref.sha256:
        log.warning("%s: the presigned URL served other bytes; using the relay", ref.uri)
        await asyncio.to_thread(progress.restart)
        return False
    return True


async def _watch(work: asyncio.Future[None], transfer: Transfer) -> None:
    """Wait for the download's thread, aborting it when it falls behind or on cancel (then
    wait a little for the thread to end, so it no longer writes the part)."""
    try:
        while not work.done():
            wait_s = None if transfer.stopped else max(0.0, transfer.deadline - time.monotonic())
            await asyncio.wait({work}, timeout=wait_s)
            if not work.done() and not transfer.stopped and transfer.overdue():
                transfer.abort(transfer.stalled())
    except asyncio.CancelledError:
        transfer.abort("the download was cancelled")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({work}, timeout=ABORT_WAIT_S)
        if work.done() and not work.cancelled():
            work.exception()  # retrieved: the cancel is what matters now
        raise
    work.result()


def where(url: str) -> str:
    """``scheme://host`` of ``url``: enough to say where a download went, never the secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}"
    except ValueError:
        return "?"


def check_url(url: str, *, allow_http: bool) -> None:
    """Raise ``PresignedDownloadFailed`` unless ``url`` is a well-formed URL this agent may
    follow (scheme, length, characters; the producer checks what it hands out the same way).
    The consumer also checks the host: ``check_host``."""
    if len(url) > MAX_URL_LENGTH:
        raise PresignedDownloadFailed(
            f"the presigned URL is {len(url)} characters long (at most {MAX_URL_LENGTH})"
        )
    if not _URL_CHARS.match(url):
        raise PresignedDownloadFailed(
            "the presigned URL has characters other than printable ASCII (spaces, control "
            "or non-ASCII characters must be percent-encoded)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, _port = parts.hostname, parts.port  # a malformed port raises ValueError
    except ValueError:
        raise PresignedDownloadFailed("the presigned URL is not a valid URL") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed or not hostname:
        hint = "" if allow_http else " (set [transfers] allow_http_presigned_urls for emulators)"
        raise PresignedDownloadFailed(
            f"a presigned URL with scheme {parts.scheme!r} is refused: this agent follows "
            f"{' and '.join(allowed)} URLs only{hint}"
        )
    if "@" in parts.netloc:
        raise PresignedDownloadFailed("a presigned URL with user info is refused")


def check_host(url: str, hosts: Sequence[str]) -> None:
    """Raise ``PresignedDownloadFailed`` unless the host of ``url`` (checked by ``check_url``)
    is allowed by ``hosts`` (see ``host_allowed``)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not host_allowed(host, hosts):
        raise PresignedDownloadFailed(
            f"the presigned URL's host {host!r} is not one of [transfers] presigned_url_hosts "
            "(this agent downloads only from the storage endpoints listed there)"
        )


def host_allowed(host: str, hosts: Sequence[str]) -> bool:
    """Whether ``host`` (lowercase, as ``urlsplit`` gives it) is allowed by ``hosts``: an
    entry is an exact host, or ``.suffix`` for any host ending with it (a subdomain of it).
    An IP literal is allowed only by an entry naming the same address."""
    host = host.lower().removesuffix(".")
    address = _ip(host)
    for entry in hosts:
        entry = entry.lower()
        if entry == S3_HOSTS:
            if address is None and is_s3_host(host):
                return True
        elif address is not None:
            if _ip(entry) == address:
                return True
        elif entry.startswith("."):
            if host.endswith(entry):
                return True
        elif host == entry.removesuffix("."):
            return True
    return False


def is_s3_host(host: str) -> bool:
    """Whether ``host`` is one of Amazon S3's endpoint names (path-style or a bucket's
    virtual host; regional, legacy ``s3-REGION``, dual-stack, FIPS, accelerate; China)."""
    return _S3_HOST.match(host) is not None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def download(
    url: str,
    offset: int,
    size: int,
    write: Callable[[bytes], None],
    *,
    hosts: Sequence[str],
    allow_http: bool = False,
    transfer: Transfer | None = None,
) -> None:
    """(blocking) Pass the object's bytes from ``offset`` to its ``size`` to ``write``, in
    reads of at most ``READ_BYTES``. The caller checks the digest of the whole. ``transfer``
    (a new one by default) keeps the pace and may abort it from another thread.

    Raises:
        PresignedDownloadFailed: the URL was refused, failed, stalled or answered something
            else than those bytes; what ``write`` got so far is a correct-length prefix, not
            checked.
        Exception: whatever ``write`` raised (the local disk), as is.
    """
    transfer = transfer or Transfer()
    check_url(url, allow_http=allow_http)
    check_host(url, hosts)  # before any connection
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"})
    try:
        transfer.check()
        with _opener(transfer).open(request, timeout=transfer.stall_s) as response:
            _check_answer(response, offset, size)
            _copy(response, size - offset, write, transfer)
    except _WriteFailed as exc:
        raise exc.cause from None
    except PresignedDownloadFailed as exc:
        raise PresignedDownloadFailed(transfer.stopped or _clean(str(exc), url)) from None
    except Exception as exc:  # HTTP, TLS, protocol errors, timeouts, resets, aborts
        if transfer.stopped:
            raise PresignedDownloadFailed(transfer.stopped) from None
        raise PresignedDownloadFailed(_why(exc, url)) from None


def _why(exc: Exception, url: str) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"{where(url)} answered HTTP {exc.code} {_clean(str(exc.reason), url)}"
    if isinstance(exc, urllib.error.URLError):
        return f"{where(url)} could not be reached: {_clean(str(exc.reason), url)}"
    return f"the download from {where(url)} failed: {type(exc).__name__}: {_clean(str(exc), url)}"


def _check_answer(response: Any, offset: int, size: int) -> None:
    status = response.status
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "").strip())
        if match is None or (int(match[1]), int(match[2]), int(match[3])) != (
            offset,
            size - 1,
            size,
        ):
            raise PresignedDownloadFailed(
                f"the answer covers {response.headers.get('Content-Range', 'nothing')[:200]!r}, "
                f"not bytes {offset}-{size - 1} of an object of {size}"
            )
        return
    if status == 200 and offset == 0:
        length = response.headers.get("Content-Length")
        if length is not None and length.strip() != str(size):
            raise PresignedDownloadFailed(
                f"the answer has {length.strip()[:40]} bytes, not the object's {size}"
            )
        return
    raise PresignedDownloadFailed(f"the answer was HTTP {status}, not the bytes from {offset}")


def _copy(
    response: Any, remaining: int, write: Callable[[bytes], None], transfer: Transfer
) -> None:
    while remaining > 0:
        transfer.check()
        # Whatever arrived, up to READ_BYTES: one socket read, not until the whole amount.
        data = response.read1(min(READ_BYTES, remaining))
        if transfer.stopped:  # an abort ended the read
            raise PresignedDownloadFailed(transfer.stopped)
        if not data:
            raise PresignedDownloadFailed(f"the answer ended {remaining} bytes short")
        try:
            write(data)
        except Exception as exc:
            raise _WriteFailed(exc) from exc
        remaining -= len(data)
        transfer.received(len(data))


def _clean(text: str, url: str) -> str:
    """``text`` without ``url``, its path and query or any long query value, should a library
    quote them (raw or decoded), in one line."""
    text = text[:1000]
    try:
        parts = urllib.parse.urlsplit(url)
        values = [v for _, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:
        return "(details withheld)"
    secrets = [url, parts.path + "?" + parts.query, parts.query]
    secrets += [urllib.parse.unquote(s) for s in secrets]
    secrets += values + [urllib.parse.quote(v, safe="") for v in values]
    for secret in sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True):
        text = text.replace(secret, "<withheld>")
    # A server's words (a status line, a reason): one printable line in our logs.
    return "".join(c if c.isprintable() else " " for c in text).strip()
