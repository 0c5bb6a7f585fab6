"""Upload ids a gateway issues (artifactstore/upload_ids.py), and the sessions metadata_svc
keeps for them on the embedded KV: ended-session keys, activity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from artifactstore.upload_ids import ISSUED_ID_LENGTH, UploadIds, issued_at
from metadata_svc.gc import GcStore
from metadata_svc.kv import Transaction
from metadata_svc.kv.embedded import EmbeddedDatabase
from metadata_svc.store import MetadataStore

DIRECTORY = "registry"


def test_an_issued_id_is_bound_to_its_repository_and_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ids = UploadIds(key)
    upload_id = ids.issue("team/app", now=1_800_000_000)
    assert len(upload_id) == ISSUED_ID_LENGTH and issued_at(upload_id) == 1_800_000_000
    assert ids.vouches(upload_id, "team/app")
    assert UploadIds(key).vouches(upload_id, "team/app"), "another replica with the same key"
    assert not ids.vouches(upload_id, "team/other")
    assert not UploadIds(ec.generate_private_key(ec.SECP256R1())).vouches(upload_id, "team/app")
    tampered = upload_id[:-1] + ("0" if upload_id[-1] != "0" else "1")
    assert not ids.vouches(tampered, "team/app")
    assert ids.issue("team/app") != ids.issue("team/app")
    for other in ("", "f" * 32, upload_id.upper(), upload_id + "0", "g" + upload_id[1:]):
        assert issued_at(other) is None and not ids.vouches(other, "team/app")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[EmbeddedDatabase]:
    database = EmbeddedDatabase(tmp_path / "kv.sqlite3")
    yield database
    database.close()


async def test_ended_sessions_are_kept_only_while_their_ids_could_start(
    db: EmbeddedDatabase,
) -> None:
    store = MetadataStore(db, DIRECTORY, unused_upload_seconds=3.0)
    gc = GcStore(db, store, DIRECTORY)
    ids = UploadIds(ec.generate_private_key(ec.SECP256R1()))

    def ended(tr: Transaction) -> int:
        return len(tr.get_range_startswith(store.keys.uploads_ended().key()))

    recent, older = ids.issue("p/r"), ids.issue("p/r", now=time.time() - 1.5)
    for upload_id in (recent, older):
        await store.get_upload("p/r", upload_id, touch=False, start=True)
        await store.delete_upload("p/r", upload_id)
    # Too old to start: ending it needs no key.
    await store.delete_upload("p/r", ids.issue("p/r", now=time.time() - 5.0))
    assert await db.read(ended) == 2
    await gc.expire_uploads(DIRECTORY, b"", 100, idle=3600, max_age=86400, dry_run=False)
    assert await db.read(ended) == 2, "both ids can still start: their keys stay"

    await asyncio.sleep(2.6)
    await gc.expire_uploads(DIRECTORY, b"", 100, idle=3600, max_age=86400, dry_run=True)
    assert await db.read(ended) == 2, "a dry run removes nothing"
    await gc.expire_uploads(DIRECTORY, b"", 100, idle=3600, max_age=86400, dry_run=False)
    assert await db.read(ended) == 1, "the older id can no longer start: its key goes"


async def test_activity_is_recorded_once_per_sixtieth_of_the_idle_limit(
    db: EmbeddedDatabase,
) -> None:
    store = MetadataStore(db, DIRECTORY, unused_upload_seconds=60.0)
    upload_id = UploadIds(ec.generate_private_key(ec.SECP256R1())).issue("p/r")
    started = await store.get_upload("p/r", upload_id, touch=False, start=True)
    soon = await store.get_upload("p/r", upload_id, touch=True, start=True)
    assert soon.last_activity_at == started.last_activity_at, "touched again within 1 s"
    await asyncio.sleep(1.1)
    later = await store.get_upload("p/r", upload_id, touch=True, start=True)
    assert later.last_activity_at > started.last_activity_at
    stored = await store.get_upload("p/r", upload_id, touch=False)
    assert stored.last_activity_at == later.last_activity_at
