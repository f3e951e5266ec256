"""The Meridian site agent: dials out to the control plane and runs steps through providers.

Public surface: ``Agent``, ``AgentConfig``, ``enroll`` and
``EnrollResult``. Everything else in this package is an implementation detail.
"""

from __future__ import annotations

from agent.agent import Agent, AgentConfig
from agent.enroll import EnrollResult, enroll

__all__ = ["Agent", "AgentConfig", "EnrollResult", "enroll"]
