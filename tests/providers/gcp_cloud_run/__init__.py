"""Tests of the ``gcp_cloud_run`` provider package."""
