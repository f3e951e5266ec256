"""Result transfers between environments (decision 0020): the relay's bounded pipes and
limits (``relay``), what a chunk may be (``chunks``), and the broker that authorizes, records
and relays each transfer, or hands on a presigned URL (``broker``). Between the API layer and
the scheduler in the layers: it asks connected agents (the registry) to serve and records
transfers through ``usecases.transfers``."""

__all__ = ["broker", "chunks", "relay"]
