"""Downloading an input result from a presigned URL (decision 0020, "Presigned URLs").

A producing site whose store has ``presign_transfers = true`` may answer a transfer with a
short-lived, read-only URL of the object instead of relaying its bytes through the control
plane. ``download`` fetches it with ``Range: bytes=OFFSET-`` (a cut transfer resumes where its
``.part`` file ends) and hands each read, at most 1 MiB, to the caller, which writes and
hashes it. ``download_into`` runs it off the event loop into a transfer's ``.part``
(``agent.partfile``) and checks the digest of the whole: a wrong object restarts the part.

The URL is a bearer credential: this module never puts it in an error or a log line
(``PresignedDownloadFailed`` names the scheme and host at most). Redirects are never followed
(a redirect could send the request, and the URL, somewhere else), plain ``http`` only when the
agent's config allows it (emulators), and a URL longer than ``MAX_URL_LENGTH`` is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from agent.partfile import Progress
from meridian.core.resultref import ResultRef

log = logging.getLogger("meridian.agent.transfers")

MAX_URL_LENGTH = 8 * 1024
READ_BYTES = 1024 * 1024
# Connecting, and each read: a download that stalls this long is given up (the relay takes over).
TIMEOUT_S = 60.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class PresignedDownloadFailed(Exception):
    """The URL could not be used (refused, unreachable, an HTTP error, a wrong answer): the
    consumer falls back to the relay. The message never contains the URL."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


async def download_into(progress: Progress, url: str, ref: ResultRef, *, allow_http: bool) -> bool:
    """Download the rest of ``ref``'s object from ``url`` into the part. False (after logging
    why, never the URL) when that failed and the relay should take over; what was written
    stays in the part (marked unchecked), except wrong bytes, which restart it."""
    stop = threading.Event()

    def fetch() -> None:
        with open(progress.part, "ab") as out:
            progress.unchecked = True  # whatever lands here, the relay never checked
            try:
                download(
                    url,
                    progress.received,
                    ref.size,
                    lambda data: progress.append(out, data),
                    allow_http=allow_http,
                    stop=stop,
                )
            finally:
                out.flush()

    try:
        await asyncio.to_thread(fetch)
    except PresignedDownloadFailed as exc:
        log.warning("%s: the presigned download failed (%s); using the relay", ref.uri, exc)
        return False
    finally:
        stop.set()  # a cancelled fetch stops the thread at its next read
    if progress.received != ref.size or progress.digest.hexdigest() != ref.sha256:
        log.warning("%s: the presigned URL served other bytes; using the relay", ref.uri)
        await asyncio.to_thread(progress.restart)
        return False
    return True


def where(url: str) -> str:
    """``scheme://host`` of ``url``: enough to say where a download went, never the secret."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


def check_url(url: str, *, allow_http: bool) -> None:
    """Raise ``PresignedDownloadFailed`` unless this agent may follow ``url``."""
    if len(url) > MAX_URL_LENGTH:
        raise PresignedDownloadFailed(
            f"the presigned URL is {len(url)} characters long (at most {MAX_URL_LENGTH})"
        )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise PresignedDownloadFailed("the presigned URL is not a valid URL") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        hint = "" if allow_http else " (set [transfers] allow_http_presigned_urls for emulators)"
        raise PresignedDownloadFailed(
            f"a presigned URL with scheme {parts.scheme!r} is refused: this agent follows "
            f"{' and '.join(allowed)} URLs only{hint}"
        )


def download(
    url: str,
    offset: int,
    size: int,
    write: Callable[[bytes], None],
    *,
    allow_http: bool = False,
    stop: threading.Event | None = None,
    timeout_s: float = TIMEOUT_S,
) -> None:
    """(blocking) Pass the object's bytes from ``offset`` to its ``size`` to ``write``, in
    reads of at most ``READ_BYTES``. The caller checks the digest of the whole.

    Raises:
        PresignedDownloadFailed: the URL was refused, failed or answered something else than
            those bytes; what ``write`` got so far is a correct-length prefix, not checked.
    """
    check_url(url, allow_http=allow_http)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            _check_answer(response, offset, size)
            _copy(response, size - offset, write, stop)
    except PresignedDownloadFailed:
        raise
    except urllib.error.HTTPError as exc:
        raise PresignedDownloadFailed(
            f"{where(url)} answered HTTP {exc.code} {_clean(str(exc.reason), url)}"
        ) from None
    except urllib.error.URLError as exc:
        raise PresignedDownloadFailed(
            f"{where(url)} could not be reached: {_clean(str(exc.reason), url)}"
        ) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed answers
        raise PresignedDownloadFailed(
            f"the download from {where(url)} failed: {type(exc).__name__}: {_clean(str(exc), url)}"
        ) from None


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
                f"the answer covers {response.headers.get('Content-Range', 'nothing')!r}, not "
                f"bytes {offset}-{size - 1} of an object of {size}"
            )
        return
    if status == 200 and offset == 0:
        length = response.headers.get("Content-Length")
        if length is not None and length.strip() != str(size):
            raise PresignedDownloadFailed(
                f"the answer has {length.strip()} bytes, not the object's {size}"
            )
        return
    raise PresignedDownloadFailed(f"the answer was HTTP {status}, not the bytes from {offset}")


def _copy(
    response: Any, remaining: int, write: Callable[[bytes], None], stop: threading.Event | None
) -> None:
    while remaining > 0:
        if stop is not None and stop.is_set():
            raise PresignedDownloadFailed("the download was stopped")
        data = response.read(min(READ_BYTES, remaining))
        if not data:
            raise PresignedDownloadFailed(f"the answer ended {remaining} bytes short")
        write(data)
        remaining -= len(data)


def _clean(text: str, url: str) -> str:
    """``text`` without ``url`` or its query (the signature), should a library quote them."""
    query = urllib.parse.urlsplit(url).query
    text = text.replace(url, "<presigned URL>")
    return text.replace(query, "<signature>") if query else text
