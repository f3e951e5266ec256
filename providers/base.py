"""The provider contract: how an agent runs one attempt of a step on local infrastructure.

A provider is a small async class found by its ``type`` string through the entry-point group
``meridian.providers``. The agent owns the lifecycle of each attempt; the provider only knows how
to start, watch, stream logs of, cancel and re-attach to one unit of infrastructure (a process, a
Slurm job, an ECS task, ...). Handles are opaque to everyone but the provider, versioned, and
JSON-serializable so the agent can persist them and ``recover`` after its own restart.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from meridian.core.errorinfo import ErrorInfo
from meridian.core.runcontext import RunContext
from meridian.core.stepfiles import InputFile as InputFile
from meridian.core.stepfiles import ResultFile as ResultFile
from meridian.core.stepfiles import ResultPolicy as ResultPolicy
from meridian.core.stepfiles import spec_fields

OutcomeState = Literal["succeeded", "failed", "timed_out", "cancelled"]


class ProviderError(Exception):
    """The provider could not do what was asked; the message says what to fix."""


class ProviderOptionsError(ProviderError):
    """Per-step options are unknown or invalid for this provider."""


@dataclass(frozen=True)
class ExecutionSpec:
    """Everything a provider needs to run one attempt.

    ``inputs_json`` is ``{"args": [...], "kwargs": {...}}``. ``bundle_dir`` is the unpacked code
    bundle (put it on the import path); ``work_dir`` is a fresh directory owned by this attempt
    where the provider may keep output files that must survive an agent restart.
    ``isolation`` is the step's ``StepSpec.isolation``: ``"warm"`` lets a provider that keeps
    warm interpreters (the process provider) reuse one, ``"process"`` asks for a fresh one;
    providers that always start fresh infrastructure ignore it.
    ``context`` is what ``meridian.context()`` returns in the step: a provider that writes a
    step spec for ``meridian.stepexec`` merges ``context_fields()`` into it.
    ``result_policy`` says when the step's result goes to ``work_dir/result.bin`` instead of
    inline (None: inline JSON only, as before results could stay at their site);
    ``input_files`` maps the sha256 of each result the inputs reference to the local file
    holding it. A provider that writes a step spec merges ``result_fields()`` into it too.
    """

    attempt_id: str
    flow_run_id: str
    step_run_id: str
    step_key: str
    step_name: str
    attempt_number: int
    module: str
    function: str
    inputs_json: str
    bundle_dir: Path | None
    work_dir: Path
    timeout_s: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    isolation: str = "warm"
    context: RunContext | None = None
    result_policy: ResultPolicy | None = None
    input_files: Mapping[str, InputFile] = field(default_factory=dict)

    def context_fields(self) -> dict[str, Any]:
        """``{"context": {...}}`` to merge into a step spec for ``meridian.stepexec``, or {}."""
        return {} if self.context is None else {"context": self.context.to_dict()}

    def result_fields(self) -> dict[str, Any]:
        """``{"result": {...}, "input_files": {...}}`` (each when set) to merge into a step
        spec for ``meridian.stepexec``."""
        return spec_fields(self.result_policy, self.input_files)


@dataclass(frozen=True)
class Handle:
    """An opaque, versioned reference to running infrastructure."""

    provider: str
    resource_id: str
    data: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "provider": self.provider,
                "version": self.version,
                "resource_id": self.resource_id,
                "data": dict(self.data),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Handle:
        raw = json.loads(text)
        return cls(
            provider=str(raw["provider"]),
            resource_id=str(raw["resource_id"]),
            data=dict(raw.get("data") or {}),
            version=int(raw.get("version", 1)),
        )


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. When ``state == "succeeded"``, either ``result_json`` is set or
    ``result_file`` (the result the step wrote to a file; see ``result_path``).

    ``result_dir`` is the directory the outcome was read from, when a provider's step writes
    elsewhere than the attempt's ``work_dir`` (e.g. a Slurm shared directory).
    """

    state: OutcomeState
    exit_code: int | None = None
    result_json: str | None = None
    error: ErrorInfo | None = None
    result_file: ResultFile | None = None
    result_dir: Path | None = None

    def result_path(self, work_dir: Path) -> Path | None:
        """Where ``result_file`` is: in ``result_dir`` if set, else in ``work_dir``."""
        if self.result_file is None:
            return None
        return (self.result_dir or work_dir) / self.result_file.path


@dataclass(frozen=True)
class LogRecord:
    """One line of output, without its newline."""

    stream: Literal["stdout", "stderr"]
    text: str
    at_unix_ms: int


@dataclass(frozen=True)
class Capabilities:
    """What a provider can do beyond submit/wait; the agent advertises these."""

    cancel: bool = True
    recover: bool = False
    streaming_logs: bool = True
    python_steps: bool = True


class Provider(abc.ABC):
    """Base class of every provider.

    Subclasses set ``type``, ``capabilities`` and ``options_schema`` (a JSON schema of the
    per-step options, advertised by the agent when it connects), and implement the verbs.
    """

    type: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    options_schema: ClassVar[Mapping[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: Mapping[str, Any] = dict(config or {})

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Raise ProviderOptionsError when per-step options are unknown or invalid."""
        known = set(self.options_schema.get("properties", {}))
        unknown = sorted(set(options) - known)
        if unknown:
            raise ProviderOptionsError(
                f"provider {self.type!r} does not accept option(s) {', '.join(unknown)}; "
                f"known options: {', '.join(sorted(known)) or 'none'}"
            )

    @abc.abstractmethod
    async def submit(self, spec: ExecutionSpec) -> Handle:
        """Start the attempt's infrastructure and return a handle to it."""

    @abc.abstractmethod
    async def wait(self, handle: Handle) -> Outcome:
        """Wait until the attempt ends (enforcing its timeout) and say how it ended."""

    @abc.abstractmethod
    def logs(self, handle: Handle) -> AsyncIterator[LogRecord]:
        """Yield output lines from the start until the attempt ends."""

    @abc.abstractmethod
    async def cancel(self, handle: Handle, grace_s: float) -> None:
        """Terminate the attempt; kill it if it is still alive after ``grace_s`` seconds."""

    async def poll(self, handle: Handle) -> Outcome | None:
        """Say how the attempt ended, or None while it still runs."""
        raise NotImplementedError(f"provider {self.type!r} does not support poll; use wait")

    async def recover(self, handle: Handle) -> bool:
        """Re-attach to an attempt after an agent restart; False when it is gone."""
        raise NotImplementedError(
            f"provider {self.type!r} cannot re-attach after an agent restart; "
            "its attempts are reported lost instead"
        )

    async def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release clients and connections held by the provider."""
