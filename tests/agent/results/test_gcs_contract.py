"""GCS puts under a race: the official client against our fake of the JSON API (contract test).

gcp-storage-emulator ignores ``ifGenerationMatch`` (see gcs_contract_fake.py), so the race is
checked here: a writer whose "no object yet" check is stale must be refused by the service's
create-only commit and then find the other writer's object.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.results import GcsConfig, GcsStore, ResultConflict, ResultLocation

pytest.importorskip("google.cloud.storage", reason="install meridian-orchestrator[gcp]")
from tests.agent.results.gcs_contract_fake import fake_gcs

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

CHUNK = 256 * 1024


@pytest.mark.parametrize("size", [100, 3 * CHUNK + 17], ids=["multipart", "resumable"])
def test_stale_writer_is_refused_by_if_generation_match(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake_gcs() as (endpoint, fake):
        config = GcsConfig(
            bucket="b", prefix="p/", endpoint_url=endpoint, anonymous=True, chunk_size=CHUNK
        )
        store = GcsStore("results", config)
        first = os.urandom(size)
        location = store.put("race", [first], size, hashlib.sha256(first).hexdigest())
        generation = fake.resource("b", "p/race")["generation"]
        assert store.stat("race").sha256 == location.sha256

        real = store._exists_same
        calls: list[ResultLocation] = []

        def stale(loc: ResultLocation) -> bool:
            calls.append(loc)
            return False if len(calls) == 1 else real(loc)

        monkeypatch.setattr(store, "_exists_same", stale)
        assert store.put("race", [first], size, location.sha256) == location
        assert len(calls) == 2  # refused with 412, then found the same object: a no-op
        calls.clear()
        other = os.urandom(size)
        with pytest.raises(ResultConflict):
            store.put("race", [other], size, hashlib.sha256(other).hexdigest())
        assert fake.resource("b", "p/race")["generation"] == generation
        assert fake.objects[("b", "p/race")][0] == first
