"""Every key shape of metadata_svc/keys.py packs and unpacks to the same tuple, stays in
its own area, and sorts as the listings rely on."""

from __future__ import annotations

import inspect

import pytest
from fdb.subspace_impl import Subspace

from metadata_svc.keys import (
    EVERYTHING,
    REPOSITORY_CONTENT,
    Area,
    IamArea,
    IamKeyspace,
    Keyspace,
    decode_int,
    encode_int,
    manifest_read_scope,
    repository_content,
)
from metadata_svc.kv.base import strinc

SPACE = Keyspace(Subspace(("registry",)))
IAM = IamKeyspace(Subspace(("topaz",)))
ARGS = {
    "repo": "proj/app",
    "digest": "sha256:" + "a" * 64,
    "part": 3,
    "tag": "v1.0",
    "manifest": "sha256:" + "b" * 64,
    "blob": "sha256:" + "c" * 64,
    "child": "sha256:" + "d" * 64,
    "subject": "sha256:" + "e" * 64,
    "referrer": "sha256:" + "f" * 64,
    "upload_id": "0123abcd",
    "issued": 1_800_000_000,
    "parent": "sha256:" + "9" * 64,
    "org": "acme",
    "project": "proj",
    "user": "alice",
    "email": "ci@proj.iam.artifact-store",
    "key_id": "k1",
    "kind": "project",
    "name": "proj",
    "principal": "user:alice",
    "at_ns": 1_700_000_000_000_000_000,
    "nonce": "ab12",
    "queue": "arts-scan",
    "available_us": 1_700_000_000_000_000,
    "task": "t1",
    "dedup_key": "repo@sha256:x",
    "counter": "pending",
    "job": "rescan",
}
SHAPES = [
    (space, name)
    for space in (SPACE, IAM)
    for name, _ in inspect.getmembers(type(space), inspect.isfunction)
    if not name.startswith("_")
]


@pytest.mark.parametrize(
    ("space", "shape"), SHAPES, ids=[f"{type(s).__name__}.{n}" for s, n in SHAPES]
)
def test_every_shape_round_trips(space: Keyspace | IamKeyspace, shape: str) -> None:
    method = getattr(space, shape)
    params = list(inspect.signature(method).parameters)
    values = tuple(ARGS[p] for p in params)
    built = method(*values)
    key = built.key() if isinstance(built, Subspace) else built
    unpacked = space.root.unpack(key)
    assert unpacked[1:] == values
    assert space.root.contains(key)


@pytest.mark.parametrize("areas", [Area, IamArea])
def test_areas_are_distinct_small_integers(areas: type[Area] | type[IamArea]) -> None:
    numbers = [a.value for a in areas]
    assert len(numbers) == len(set(numbers)) == len(areas.__members__)
    assert all(0 < n < 256 for n in numbers)


def test_tags_sort_lexically() -> None:
    tags = ["b", "a", "a-1", "A", "a.0", "1"]
    packed = sorted(SPACE.tag("r", t) for t in tags)
    assert [SPACE.tags("r").unpack(k)[0] for k in packed] == sorted(tags)


def test_manifest_parts_sort_numerically() -> None:
    packed = sorted(SPACE.manifest_part("r", "d", i) for i in (10, 2, 1, 0))
    assert [SPACE.manifest_parts("r", "d").unpack(k)[0] for k in packed] == [0, 1, 2, 10]


def test_one_repository_is_not_a_prefix_of_another() -> None:
    inner = SPACE.tags("app")
    assert not inner.contains(SPACE.tag("app2", "x"))
    assert inner.contains(SPACE.tag("app", "x"))


def test_int_encoding_is_little_endian_int64() -> None:
    assert encode_int(1) == b"\x01" + b"\x00" * 7
    assert decode_int(encode_int(-5)) == -5
    assert decode_int(None) == 0


def test_repository_content_is_that_repository_alone() -> None:
    spaces = repository_content(SPACE, "app")
    assert [SPACE.root.unpack(s.key()) for s in spaces] == [(a, "app") for a in REPOSITORY_CONTENT]
    digest = "sha256:" + "a" * 64
    inside = [
        SPACE.tag("app", "x"),
        SPACE.manifest("app", digest),
        SPACE.gc_link_mark("app", digest),
    ]
    assert all(any(s.contains(k) for s in spaces) for k in inside)
    outside = [
        SPACE.tag("app2", "x"),
        SPACE.tag("app/x", "x"),
        SPACE.repository("app"),
        # Links count in global reference counts: a repository delete removes them one by one.
        SPACE.blob_link("app", digest),
    ]
    assert not any(s.contains(k) for s in spaces for k in outside)


def _point(key: bytes) -> tuple[bytes, bytes]:
    return key, key + b"\x00"


def test_manifest_read_scope_names_what_a_write_changes() -> None:
    def scope(begin: bytes, end: bytes) -> tuple[str, str] | None:
        return manifest_read_scope(SPACE, begin, end)

    repo, digest = str(ARGS["repo"]), str(ARGS["digest"])
    assert scope(*_point(SPACE.tag(repo, "v1"))) == ("repository", repo)
    assert scope(*_point(SPACE.manifest(repo, digest))) == ("repository", repo)
    assert scope(*_point(SPACE.repository(repo))) == ("repository", repo)
    assert scope(*_point(SPACE.scan_summary(repo, digest))) == ("repository", repo)
    assert scope(*_point(SPACE.scan_policy("proj"))) == ("project", "proj")
    # The gateway caches StatBlobLink answers too: a link made or removed changes them.
    assert scope(*_point(SPACE.blob_link(repo, digest))) == ("repository", repo)
    links_of = SPACE.blob_links_of(repo).key()
    assert scope(links_of, strinc(links_of)) == ("repository", repo)
    # A repository's whole subspace, cleared as a range, is still that repository.
    tags = SPACE.tags(repo).key()
    assert scope(tags, strinc(tags)) == ("repository", repo)
    # Writes no cached read depends on.
    assert scope(*_point(SPACE.upload("u1"))) is None
    assert scope(*_point(IAM.user("someone"))) is None
    assert scope(*_point(SPACE.gc_link_mark(repo, digest))) is None
    # Ranges across repositories of a read area, or across areas: everything.
    manifests = SPACE.manifests().key()
    assert scope(manifests, strinc(manifests)) == EVERYTHING
    links = SPACE.blob_links().key()
    assert scope(links, strinc(links)) == EVERYTHING
    assert scope(SPACE.tag("a/x", "t"), SPACE.tag("z/x", "t")) == EVERYTHING
    root = SPACE.root.key()
    assert scope(root, strinc(root)) == EVERYTHING
