"""Code bundles: store an uploaded one, tell whether one is present, hand one out.

An agent gets a bundle only while it holds an attempt of a run that uses it, so an agent
cannot read other tenants' code by guessing digests.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.store.models import AttemptRow, BundleRow, FlowRunRow
from control_plane.store.tx import Tx
from meridian.core.errors import NotFound
from meridian.core.states import SLOT_HOLDING, RunState


def store_bundle(tx: Tx, sha256: str, data: bytes) -> None:
    """Keep a verified upload; uploading the same content again changes nothing."""
    if tx.session.get(BundleRow, sha256) is None:
        tx.session.add(BundleRow(sha256=sha256, size=len(data), data=data, created_at=tx.now))


def has_bundle(session: Session, sha256: str) -> bool:
    return session.get(BundleRow, sha256) is not None


def bundle_data(session: Session, sha256: str) -> bytes:
    bundle = session.get(BundleRow, sha256)
    if bundle is None:
        raise NotFound(f"bundle {sha256[:12]} does not exist")
    return bytes(bundle.data)


def bundle_for_agent(session: Session, agent_id: str, sha256: str) -> bytes:
    held = session.scalar(
        select(AttemptRow.id)
        .join(FlowRunRow, FlowRunRow.id == AttemptRow.flow_run_id)
        .where(
            AttemptRow.agent_id == agent_id,
            AttemptRow.state.in_(list(SLOT_HOLDING)),
            FlowRunRow.bundle_sha256 == sha256,
        )
        .limit(1)
    )
    if held is None:
        # A hosted flow runner's agent fetches its run's bundle too (decision 0018).
        held = session.scalar(
            select(FlowRunRow.id)
            .where(
                FlowRunRow.runner_agent_id == agent_id,
                FlowRunRow.wants_runner.is_(False),
                FlowRunRow.bundle_sha256 == sha256,
                FlowRunRow.state.in_([RunState.RUNNING, RunState.PAUSED]),
            )
            .limit(1)
        )
    if held is None:
        raise NotFound(f"bundle {sha256[:12]} is not needed by any attempt this agent holds")
    return bundle_data(session, sha256)
