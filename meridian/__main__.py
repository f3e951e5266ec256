"""``python -m meridian``: the same as the ``meridian`` command."""

from __future__ import annotations

import sys

from meridian.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
