"""How long an agent may take to come back after the control plane restarts.

An agent that lost its stream reconnects after a backoff with full jitter, capped at
``AGENT_MAX_RECONNECT_DELAY_S`` (its default ``reconnect_max_backoff_s``). After a control-plane
restart every agent is in that backoff, so the control plane counts an agent's silence from
``RESTART_RECONNECT_ALLOWANCE`` after its own start: a short ``lost_after`` must not declare
agents lost that are merely waiting for their next try.
"""

from __future__ import annotations

import datetime as dt

AGENT_MAX_RECONNECT_DELAY_S = 10.0
# The longest wait plus a try that is refused while the server is still starting.
RESTART_RECONNECT_ALLOWANCE = dt.timedelta(seconds=2 * AGENT_MAX_RECONNECT_DELAY_S)
