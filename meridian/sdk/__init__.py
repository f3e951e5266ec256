"""The flow-authoring SDK: ``@flow``, ``@step``, step futures, ``approve``, and the flow runner.

Implementation lives in the modules of this package; this file re-exports the public names.
``run_flow`` is imported from ``meridian.sdk.runner`` directly (it pulls in the bundle packer).
"""

from __future__ import annotations

from meridian.sdk.approval import Approval, approve
from meridian.sdk.flow import Flow, flow
from meridian.sdk.futures import StepFuture, wait
from meridian.sdk.step import Step, step

__all__ = ["Approval", "Flow", "Step", "StepFuture", "approve", "flow", "step", "wait"]
