"""Row identifiers: random version-4 UUIDs, one at a time or in bulk."""

from __future__ import annotations

import uuid

from control_plane.store.ids import new_id, new_ids


def test_ids_in_bulk_are_distinct_version_4_uuids_in_canonical_form() -> None:
    ids = new_ids(5000)
    assert len(set(ids)) == 5000
    for text in [*ids, new_id()]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
    assert new_ids(0) == []
