"""Pure orchestration: the state machines, the rules that judge agents' reports, what a
failed attempt means for its step, retry policy, matching a step to agents, the scheduler's
plan and environment scopes. Facts in, decisions out: no SQLAlchemy, no store, no I/O (the
import contracts in ``pyproject.toml`` enforce it), so each rule is tested with plain values.
"""
