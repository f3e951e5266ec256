"""Tests of the ``azure_aci`` provider package."""
