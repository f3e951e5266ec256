"""Helpers shared by the whole test suite, one job per module.

- ``deadlines``: ``TIME_SCALE`` (env ``MERIDIAN_TEST_TIME_SCALE``) and ``DEADLINE_S``, the one
  generous deadline every "wait until X happens" uses; ``deadline()`` for hand-written loops.
- ``polling``: ``poll_until`` / ``apoll_until``, waiting for a condition with that deadline and
  failing with what was awaited and what was last observed.
- ``tls``: throwaway TLS material (``TestPKI``, ``Tls``, ``make_tls``) and ``with_bearer``, a
  gRPC channel that presents an API token.
- ``plane``: ``ThreadedControlPlane``, a real control plane on its own event-loop thread.
- ``databases``: SQLite/PostgreSQL parametrisation (``MERIDIAN_TEST_POSTGRES_URL``) and
  throwaway PostgreSQL databases; the ``db_url`` fixture in ``tests/conftest.py`` uses it.

Helpers that serve one directory stay there (``tests/integration/harness.py``: real processes;
``tests/agent/fakecp.py``: a fake control plane for the agent; ``tests/faults/tcp_proxy.py``).
"""
