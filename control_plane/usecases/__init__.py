"""Use cases: every change of runs, steps, attempts, agents, approvals and bundles.

Each is ``fn(tx, ...)``: it runs inside the caller's transaction (``store.tx.Tx``), changes
state only through ``store.tx`` (so every change writes its event), asks
``control_plane.orchestration`` for every decision, and leaves what must happen after the
commit in ``tx.effects``. ``Store.transact`` commits, then applies those effects.
"""
