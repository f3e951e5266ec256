"""The ``aws-ecs`` provider: each attempt is one Amazon ECS task (Fargate or EC2).

Owns the provider (``provider``), typed config and options (``config``), the RunTask request
built from a task definition (``task``), boto3 clients and CloudWatch Logs reads (``client``) and
how a stopped task maps to an Outcome (``state``). boto3 is imported only on first use.
"""

from __future__ import annotations

from providers.aws_ecs.config import EcsConfig
from providers.aws_ecs.provider import EcsProvider

__all__ = ["EcsConfig", "EcsProvider"]
