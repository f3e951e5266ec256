"""The hosted flow runner (decision 0018): ``python -m meridian.flowexec``, started by an agent
that offers runner slots, runs one stored run's flow body by the stored-run path of the SDK
runner (``meridian.sdk.runner._execute_stored``) — the same replay as ``meridian runs resume``:
completed steps answer from the store, approvals keep their decisions.

Everything comes from the environment, never the command line (``ps`` shows that):
``MERIDIAN_FLOWEXEC_RUN_ID``, ``_EPOCH``, ``_ADDRESS`` (the client listener), ``_CA_FILE``,
``_TOKEN`` (the run-scoped runner token, bound to the epoch), ``_BUNDLE_DIR`` (the run's
bundle, unpacked by the agent) and ``_ENTRYPOINT``; optionally ``_ENVIRONMENT``, the agent's
environment, which the body sees as ``meridian.context().environment``. The runner renews
its run's lease itself (30 s, every 7.5 s, unless ``MERIDIAN_RUNNER_LEASE_S`` says otherwise).

Two ways in, one entry point (``main``): ``python -m meridian.flowexec`` (a fresh process), or a
child forked by the agent's fork server (``meridian.flowzygote``), which imported all this
once and sets up the child's environment, files and session as a fresh process would have.

Exit status: 0 once the body's end was reported (whatever the run's state), 1 otherwise —
including when a newer runner epoch took the run over: such a runner stops at once, without
touching the run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("meridian.flowexec")

HOSTED_LEASE_S = "30"
PREFIX = "MERIDIAN_FLOWEXEC_"
# Events after which a runner's watch starts: the hand-over's own record (a lost runner's,
# or the PENDING a person's resume reopened the run with; a new run's first event).
_HANDOVER_KINDS = ("run.runner_lost", "run.pending")


@dataclass(frozen=True)
class FlowExecConfig:
    run_id: str
    epoch: int
    address: str
    ca_file: Path
    token: str
    bundle_dir: Path
    entrypoint: str
    environment: str | None = None  # the agent's; None when the agent does not say

    def __repr__(self) -> str:  # never the token
        return f"FlowExecConfig(run_id={self.run_id!r}, epoch={self.epoch})"


def config_from_env(env: Mapping[str, str]) -> FlowExecConfig:
    """Read and check the runner's settings; raises ValueError naming what is missing."""
    names = ("RUN_ID", "EPOCH", "ADDRESS", "CA_FILE", "TOKEN", "BUNDLE_DIR", "ENTRYPOINT")
    missing = [PREFIX + n for n in names if not env.get(PREFIX + n)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (meridian.flowexec is started by an agent)")
    try:
        epoch = int(env[PREFIX + "EPOCH"])
    except ValueError:
        raise ValueError(f"{PREFIX}EPOCH must be an integer") from None
    bundle_dir = Path(env[PREFIX + "BUNDLE_DIR"])
    if not bundle_dir.is_dir():
        raise ValueError(f"{PREFIX}BUNDLE_DIR {bundle_dir} is not a directory")
    return FlowExecConfig(
        run_id=env[PREFIX + "RUN_ID"],
        epoch=epoch,
        address=env[PREFIX + "ADDRESS"],
        ca_file=Path(env[PREFIX + "CA_FILE"]),
        token=env[PREFIX + "TOKEN"],  # popped by main: the body need not see it
        bundle_dir=bundle_dir,
        entrypoint=env[PREFIX + "ENTRYPOINT"],
        environment=env.get(PREFIX + "ENVIRONMENT") or None,
    )


def _superseded(message: str) -> None:
    """A newer runner took the run: stop now, touching nothing (no FinishRun, no cleanup)."""
    log.error("this runner was replaced (%s); exiting", message)
    sys.stderr.flush()
    os._exit(1)


def run(config: FlowExecConfig) -> int:
    # Imported here: the lease default must be set before the runner module reads it.
    from meridian import models
    from meridian.client import ControlClient
    from meridian.sdk.runner import _execute_stored, is_superseded_error

    with ControlClient(config.address, config.ca_file, token=config.token) as client:
        try:
            detail = client.get_run(config.run_id)
            watermark = max(
                (e.event_id for e in detail.events if e.kind in _HANDOVER_KINDS), default=0
            )
            target = models.RunToExecute(
                flow_run_id=detail.flow_run_id,
                flow_name=detail.flow_name,
                entrypoint=config.entrypoint,
                parameters_json=detail.parameters_json,
                bundle_sha256=detail.bundle_sha256,
                state=detail.state,
                watch_after_event_id=watermark,
                runner_token=config.token,
            )
            log.info(
                "running the body of run %s (epoch %d, watching after event %d)",
                config.run_id,
                config.epoch,
                watermark,
            )
            outcome = _execute_stored(
                client,
                target,
                None,
                None,
                watermark,
                bundle_root=config.bundle_dir,
                on_superseded=_superseded,
                environment=config.environment,
            )
        except Exception as exc:
            if is_superseded_error(exc):
                _superseded(str(exc))
            log.exception("the flow runner of run %s failed", config.run_id)
            return 1
    log.info("run %s ended %s", config.run_id, outcome.state)
    return 0


def apply_defaults(environ: MutableMapping[str, str]) -> None:
    """The hosted runner's defaults, set before ``meridian.sdk.runner`` is imported (it reads
    them at import): the fork server sets them in itself before it imports the runner."""
    environ.setdefault("MERIDIAN_RUNNER_LEASE_S", HOSTED_LEASE_S)


def main() -> int:
    """The runner's one entry point, with its settings in ``os.environ``: called by
    ``python -m meridian.flowexec`` and in each child of the fork server
    (``meridian.flowzygote``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_env(os.environ)
    except ValueError as exc:
        print(f"meridian.flowexec: {exc}", file=sys.stderr)
        return 2
    os.environ.pop(PREFIX + "TOKEN", None)
    apply_defaults(os.environ)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
