"""Tests of the ``kubernetes`` provider package."""
