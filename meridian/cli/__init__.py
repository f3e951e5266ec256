"""The ``meridian`` command line: one module per command group, errors reported in one line.

The CLI talks to the control plane only through :mod:`meridian.client` and :mod:`meridian.models`
(never generated protobuf code); it imports ``control_plane`` and ``agent`` only to run them.
"""

from __future__ import annotations

import os
import sys

# gRPC's C core logs handshake failures and the like on stderr, next to our one-line errors;
# keep it to real errors unless the user asked for --debug. Set before grpc is imported.
if "--debug" not in sys.argv:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# Nothing is re-exported: ``meridian.cli.main`` must stay the module (the console script's
# target), not be shadowed by its ``main`` function.
__all__: list[str] = []
