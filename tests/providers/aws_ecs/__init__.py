"""Tests of the ``aws_ecs`` provider package."""
