"""Providers: how an agent runs one attempt of a step on a kind of infrastructure.

``base`` is the contract every provider implements, ``registry`` finds providers by their
``type`` through the ``meridian.providers`` entry points, and ``testing`` is the conformance
suite a provider must pass. Each built-in provider is a package of its own (``process``,
``slurm``, ``ray``, ``kubernetes``, ``aws_ecs``, ``gcp_cloud_run``, ``azure_aci``); what more than
one of them uses lives in ``shared``. See docs/providers/README.md for adding a provider.
"""
