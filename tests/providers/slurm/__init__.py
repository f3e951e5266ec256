"""Tests of the ``slurm`` provider package."""
