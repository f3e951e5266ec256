"""Tests of the ``ray`` provider package."""
