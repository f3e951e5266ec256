"""The ``slurm`` provider: each attempt is one Slurm batch job on a shared filesystem.

Owns the provider (``provider``), typed config and options (``config``), the batch script and
``scontrol`` parsing (``job``), the attempt's handle and how a finished job maps to an Outcome
(``state``) and following the output files Slurm writes (``tail``).
"""

from __future__ import annotations

from providers.slurm.provider import SlurmProvider

__all__ = ["SlurmProvider"]
