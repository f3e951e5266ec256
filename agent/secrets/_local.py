"""Resolvers for secrets already on the agent's machine: its environment and its files."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agent.secrets._base import check_text, decode_text
from agent.secrets._errors import SecretNotFound, SecretUnavailable

# Secret files are passwords, tokens and keys; anything larger is almost certainly a wrong path
# (and must not be read whole into an environment variable).
DEFAULT_MAX_FILE_BYTES = 64 * 1024


class EnvResolver:
    """``env:NAME``: a variable of the agent's own environment, read at resolve time."""

    scheme = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        # os.environ is read live (not copied) so a value changed for a running agent is seen.
        self._environ = os.environ if environ is None else environ

    def resolve(self, what: str) -> str:
        value = self._environ.get(what)
        if value is None:
            raise SecretNotFound(f"the agent's environment has no variable {what!r}")
        return check_text(value)


class FileResolver:
    """``file:/abs/path``: a regular file's UTF-8 text, without one trailing newline.

    Symbolic links are followed (Kubernetes mounts secrets through them); what is finally
    opened must be a regular file no larger than ``max_bytes``.
    """

    scheme = "file"

    def __init__(self, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self._max_bytes = max_bytes

    def resolve(self, what: str) -> str:
        if not Path(what).is_absolute():
            raise SecretNotFound("a file secret must name an absolute path")
        data = self._read(what)
        text = decode_text(data)
        if text.endswith("\n"):
            # Files written by editors and `echo` end with a newline that is not part of the
            # secret; exactly one is removed so deliberate trailing blank lines survive.
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        return text

    def _read(self, path: str) -> bytes:
        try:
            # O_NONBLOCK: opening a FIFO must not hang the attempt; fstat below refuses it.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise SecretNotFound("no such file on this agent") from None
        except PermissionError:
            raise SecretUnavailable("the agent is not allowed to read the file") from None
        except OSError as exc:
            raise SecretUnavailable(f"cannot open the file: {exc.strerror}") from None
        # Checked on the open descriptor, not the path, so a swap in between cannot matter.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SecretNotFound("not a regular file")
        with os.fdopen(fd, "rb") as handle:
            try:
                data = handle.read(self._max_bytes + 1)
            except OSError as exc:
                raise SecretUnavailable(f"cannot read the file: {exc.strerror}") from None
        if len(data) > self._max_bytes:
            raise SecretNotFound(f"the file is larger than {self._max_bytes} bytes")
        return data
