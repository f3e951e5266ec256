"""Tests of ``providers.shared``."""
