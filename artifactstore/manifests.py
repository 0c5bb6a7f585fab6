"""Parsing manifests into what the registry must know about them: the blobs and child
manifests they reference, their subject and artifact type.

Docker schema 2 manifests and manifest lists and OCI image manifests and indexes are
accepted (OCI artifacts are image manifests with an artifactType); Docker schema 1 is
refused, as current registries do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from artifactstore import mediatypes as mt
from artifactstore.digests import Digest
from artifactstore.errors import Reason, RegistryError


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor (OCI image-spec "Descriptors")."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedManifest:
    """What a manifest means to the registry."""

    media_type: str
    blobs: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str
    annotations: dict[str, str]

    def required_blobs(self) -> list[Descriptor]:
        """Blobs the registry must hold for this manifest (foreign layers excepted)."""
        return [b for b in self.blobs if not (b.media_type in mt.FOREIGN_LAYERS and b.urls)]


def _invalid(message: str) -> RegistryError:
    return RegistryError(Reason.MANIFEST_INVALID, message)


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{what} must map strings to strings")
    return value


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{what} has no mediaType")
    if not isinstance(digest, str):
        raise _invalid(f"{what} has no digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{what} has no valid size")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{what} has invalid urls")
    artifact_type = value.get("artifactType", "")
    if not isinstance(artifact_type, str):
        raise _invalid(f"{what} has an invalid artifactType")
    try:
        parsed = Digest.parse(digest)
    except RegistryError as err:
        raise _invalid(f"{what}: {err.message}") from None
    return Descriptor(
        media_type=media_type,
        digest=parsed,
        size=size,
        artifact_type=artifact_type,
        annotations=_string_map(value.get("annotations"), f"{what} annotations"),
        urls=tuple(urls),
    )


def _descriptors(value: Any, what: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid(f"{what} must be a list")
    return tuple(_descriptor(v, f"{what}[{i}]") for i, v in enumerate(value))


def parse(content: bytes, content_type: str = "") -> ParsedManifest:
    """Parse a manifest body sent with `content_type`; raise MANIFEST_INVALID when it is
    not a manifest this registry accepts."""
    if len(content) > mt.MAX_MANIFEST_BYTES:
        raise RegistryError(
            Reason.MANIFEST_TOO_LARGE,
            f"manifest is {len(content)} bytes, over the limit of {mt.MAX_MANIFEST_BYTES}",
        )
    try:
        body = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _invalid(f"manifest is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise _invalid("manifest must be a JSON object")
    content_type = content_type.split(";")[0].strip()
    declared = body.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if content_type in {mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED} or declared in {
        mt.DOCKER_SCHEMA1,
        mt.DOCKER_SCHEMA1_SIGNED,
    }:
        raise RegistryError(Reason.MANIFEST_INVALID, "Docker schema 1 manifests are not supported")
    if body.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    if declared and content_type and content_type in mt.MANIFESTS and declared != content_type:
        raise _invalid(f"mediaType {declared!r} does not match Content-Type {content_type!r}")
    media_type = declared or (content_type if content_type in mt.MANIFESTS else "")
    if not media_type:
        media_type = mt.OCI_INDEX if "manifests" in body else mt.OCI_MANIFEST
    if media_type not in mt.MANIFESTS:
        raise _invalid(f"unsupported manifest media type {media_type!r}")

    artifact_type = body.get("artifactType", "")
    if not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    subject = _descriptor(body["subject"], "subject") if body.get("subject") is not None else None
    annotations = _string_map(body.get("annotations"), "annotations")
    if media_type in mt.INDEXES:
        if "manifests" not in body:
            raise _invalid("an index must have manifests")
        return ParsedManifest(
            media_type=media_type,
            blobs=(),
            manifests=_descriptors(body["manifests"], "manifests"),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )
    if "config" not in body:
        raise _invalid("an image manifest must have a config")
    config = _descriptor(body["config"], "config")
    layers = _descriptors(body.get("layers"), "layers")
    if media_type == mt.DOCKER_MANIFEST and "layers" not in body:
        raise _invalid("a Docker manifest must have layers")
    # Referrers spec: with no artifactType, an artifact is typed by its config.
    if not artifact_type and config.media_type != mt.OCI_IMAGE_CONFIG:
        artifact_type = config.media_type if media_type == mt.OCI_MANIFEST else ""
    return ParsedManifest(
        media_type=media_type,
        blobs=(config, *layers),
        manifests=(),
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )
