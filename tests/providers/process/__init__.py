"""Tests of the ``process`` provider package."""
