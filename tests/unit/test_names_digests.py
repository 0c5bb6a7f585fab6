"""The spec's grammar for names, tags and digests."""

from __future__ import annotations

import pytest

from artifactstore.digests import Digest, is_digest, sha256_of
from artifactstore.errors import Reason, RegistryError
from artifactstore.names import check_name, check_tag


@pytest.mark.parametrize("name", ["a", "proj/app", "a.b_c__d-e---f/g0", "x/y/z"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "UPPER", "a..b", "a/", "/a", "a//b", "-a", "a-", "a_", "a___b", "a" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as caught:
        check_name(name)
    assert caught.value.reason == Reason.NAME_INVALID


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_x", "A-b.c_d", "a" * 128])
def test_valid_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a/b", "a:b", "a" * 129])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(RegistryError) as caught:
        check_tag(tag)
    assert caught.value.reason == Reason.TAG_INVALID


def test_digest_round_trip() -> None:
    d = sha256_of(b"hello")
    assert Digest.parse(str(d)) == d
    assert is_digest(str(d)) and not is_digest("latest")


@pytest.mark.parametrize(
    "text",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "a" * 32,
        "sha256" + "a" * 64,
        "sha512:" + "a" * 64,
    ],
)
def test_invalid_digests(text: str) -> None:
    with pytest.raises(RegistryError) as caught:
        Digest.parse(text)
    assert caught.value.reason == Reason.DIGEST_INVALID
