"""The ``meridian`` command line: one module per command group, errors reported in one line.

The CLI talks to the control plane only through :mod:`meridian.client` and :mod:`meridian.models`
(never generated protobuf code); it imports ``control_plane`` and ``agent`` only to run them.
"""

from __future__ import annotations

# Nothing is re-exported: ``meridian.cli.main`` must stay the module (the console script's
# target), not be shadowed by its ``main`` function.
__all__: list[str] = []
