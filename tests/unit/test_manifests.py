"""Manifest parsing: what is referenced, what is refused."""

from __future__ import annotations

import json

import pytest

from artifactstore import mediatypes as mt
from artifactstore.errors import Reason, RegistryError
from artifactstore.manifests import parse

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def desc(media_type: str, digest: str, size: int = 10, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def body(**fields: object) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


def test_oci_image_manifest_references_config_and_layers() -> None:
    parsed = parse(
        body(
            mediaType=mt.OCI_MANIFEST,
            config=desc(mt.OCI_IMAGE_CONFIG, D1),
            layers=[desc("application/vnd.oci.image.layer.v1.tar+gzip", D2)],
        ),
        mt.OCI_MANIFEST,
    )
    assert parsed.media_type == mt.OCI_MANIFEST
    assert [str(b.digest) for b in parsed.required_blobs()] == [D1, D2]
    assert parsed.subject is None
    assert parsed.artifact_type == ""


def test_artifact_type_defaults_to_config_media_type() -> None:
    parsed = parse(
        body(
            mediaType=mt.OCI_MANIFEST,
            config=desc("application/vnd.example.sbom", D1),
            layers=[],
            subject=desc(mt.OCI_MANIFEST, D3),
        )
    )
    assert parsed.artifact_type == "application/vnd.example.sbom"
    assert parsed.subject is not None and str(parsed.subject.digest) == D3


def test_explicit_artifact_type_wins() -> None:
    parsed = parse(
        body(
            mediaType=mt.OCI_MANIFEST,
            artifactType="application/vnd.example.sig",
            config=desc(mt.OCI_EMPTY, D1, 2),
            layers=[desc("application/octet-stream", D2)],
        )
    )
    assert parsed.artifact_type == "application/vnd.example.sig"


def test_index_references_child_manifests() -> None:
    parsed = parse(
        body(
            mediaType=mt.OCI_INDEX, manifests=[desc(mt.OCI_MANIFEST, D1), desc(mt.OCI_MANIFEST, D2)]
        )
    )
    assert [str(m.digest) for m in parsed.manifests] == [D1, D2]
    assert parsed.blobs == ()


def test_docker_manifest_list_from_content_type() -> None:
    parsed = parse(body(manifests=[desc(mt.DOCKER_MANIFEST, D1)]), mt.DOCKER_MANIFEST_LIST)
    assert parsed.media_type == mt.DOCKER_MANIFEST_LIST


def test_foreign_layers_with_urls_are_not_required() -> None:
    foreign = desc(next(iter(mt.FOREIGN_LAYERS)), D2, urls=["https://example.com/layer"])
    parsed = parse(
        body(mediaType=mt.DOCKER_MANIFEST, config=desc(mt.OCI_IMAGE_CONFIG, D1), layers=[foreign])
    )
    assert [str(b.digest) for b in parsed.required_blobs()] == [D1]


@pytest.mark.parametrize(
    ("content", "content_type", "reason"),
    [
        (b"not json", mt.OCI_MANIFEST, Reason.MANIFEST_INVALID),
        (b"[]", mt.OCI_MANIFEST, Reason.MANIFEST_INVALID),
        (body(), mt.OCI_MANIFEST, Reason.MANIFEST_INVALID),
        (
            json.dumps({"schemaVersion": 1}).encode(),
            mt.DOCKER_SCHEMA1_SIGNED,
            Reason.MANIFEST_INVALID,
        ),
        (body(mediaType=mt.OCI_INDEX, manifests=[]), mt.OCI_MANIFEST, Reason.MANIFEST_INVALID),
        (
            body(
                mediaType=mt.OCI_MANIFEST, config=desc(mt.OCI_IMAGE_CONFIG, "sha256:xyz"), layers=[]
            ),
            "",
            Reason.MANIFEST_INVALID,
        ),
        (
            body(mediaType=mt.OCI_MANIFEST, config={"digest": D1, "size": 1}, layers=[]),
            "",
            Reason.MANIFEST_INVALID,
        ),
        (
            body(mediaType=mt.OCI_MANIFEST, config=desc(mt.OCI_IMAGE_CONFIG, D1, -1), layers=[]),
            "",
            Reason.MANIFEST_INVALID,
        ),
        (
            body(mediaType="application/x-unknown", config=desc(mt.OCI_IMAGE_CONFIG, D1)),
            "",
            Reason.MANIFEST_INVALID,
        ),
        (b" " * (mt.MAX_MANIFEST_BYTES + 1), mt.OCI_MANIFEST, Reason.MANIFEST_TOO_LARGE),
    ],
)
def test_refused(content: bytes, content_type: str, reason: Reason) -> None:
    with pytest.raises(RegistryError) as caught:
        parse(content, content_type)
    assert caught.value.reason == reason
