"""skopeo against the registry: images in, images out, byte for byte.

Every copy uses `--preserve-digests`, so skopeo fails rather than silently converting a
manifest; what comes back out must be the very bytes that went in. Each test first signs
in as the registry's administrator the way a user does, `skopeo login` into the test's
auth file, which every command then reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.images import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    build_image,
    build_index,
    read_dir,
    read_layout,
    write_dir,
    write_layout,
)


@pytest.fixture(autouse=True)
def logged_in(registry, skopeo, client_config) -> None:
    """`skopeo login` as the administrator, into this test's auth file."""
    user, password = registry.admin
    out = skopeo.run(
        "login",
        "--tls-verify=false",
        "--authfile",
        str(client_config.auth_file),
        "--username",
        user,
        "--password-stdin",
        registry.host,
        input=password,
    )
    assert "Login Succeeded" in out, out
    auths = json.loads(client_config.auth_file.read_text())["auths"]
    assert registry.host in auths, auths


def _raw(skopeo, client_config, ref: str) -> bytes:
    """`skopeo inspect --raw` of a registry reference: the manifest bytes it serves."""
    out = skopeo.run(
        "inspect", "--raw", "--tls-verify=false", "--authfile", str(client_config.auth_file), ref
    )
    return out.encode().rstrip(b"\n")


def _copy(skopeo, client_config, src: str, dest: str, *extra: str) -> None:
    auth = str(client_config.auth_file)
    skopeo.run(
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-authfile",
        auth,
        "--dest-authfile",
        auth,
        *extra,
        src,
        dest,
    )


def test_oci_image_round_trip(registry, skopeo, client_config, tmp_path: Path, unique_repo):
    """A four-layer OCI image copied from an oci: layout into the registry and back out
    to a new oci: layout keeps its manifest digest and every blob's bytes."""
    image = build_image(seed=101, layers=4)
    src = write_layout(tmp_path / "src", image, tag="v1")
    repo = unique_repo("oci")
    remote = f"docker://{registry.host}/{repo}:v1"

    _copy(skopeo, client_config, f"oci:{src}:v1", remote)

    raw = _raw(skopeo, client_config, remote)
    assert raw == image.manifest.data, "the registry does not serve the pushed manifest bytes"
    head = registry.request("HEAD", f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert head.status == 200
    assert head.header("Docker-Content-Digest") == image.digest
    assert head.header("Content-Type") == OCI_MANIFEST

    info = json.loads(
        skopeo.run(
            "inspect",
            "--tls-verify=false",
            "--authfile",
            str(client_config.auth_file),
            remote,
        )
    )
    assert info["Digest"] == image.digest
    assert info["Layers"] == image.layer_digests

    out = tmp_path / "out"
    _copy(skopeo, client_config, remote, f"oci:{out}:pulled")
    pulled = read_layout(out)
    desc = pulled.ref("pulled")
    assert desc["digest"] == image.digest
    assert desc["mediaType"] == OCI_MANIFEST
    assert pulled.blobs[image.digest] == image.manifest.data
    for blob in image.blobs:
        assert pulled.blobs.get(blob.digest) == blob.data, f"blob {blob.digest} differs"
    pulled_manifest = pulled.json_blob(image.digest)
    assert [layer["digest"] for layer in pulled_manifest["layers"]] == image.layer_digests
    assert pulled_manifest["config"]["digest"] == image.config.digest


def test_docker_schema2_round_trip(registry, skopeo, client_config, tmp_path: Path, unique_repo):
    """A Docker schema 2 image (Docker media types throughout) stays schema 2: the
    registry serves it with its own media type and the same bytes come back out."""
    image = build_image(seed=202, layers=3, fmt="docker")
    src = write_dir(tmp_path / "src", image)
    repo = unique_repo("v2s2")
    remote = f"docker://{registry.host}/{repo}:v2s2"

    _copy(skopeo, client_config, f"dir:{src}", remote)

    raw = _raw(skopeo, client_config, remote)
    assert json.loads(raw)["mediaType"] == DOCKER_MANIFEST
    assert raw == image.manifest.data
    get = registry.request("GET", f"/v2/{repo}/manifests/v2s2", headers={"Accept": DOCKER_MANIFEST})
    assert get.status == 200
    assert get.header("Content-Type") == DOCKER_MANIFEST
    assert get.header("Docker-Content-Digest") == image.digest

    out = tmp_path / "out"
    _copy(skopeo, client_config, remote, f"dir:{out}")
    manifest, blobs = read_dir(out)
    assert manifest == image.manifest.data
    for blob in image.blobs:
        assert blobs.get(blob.digest) == blob.data, f"blob {blob.digest} differs"


def test_multi_platform_index_round_trip(
    registry, skopeo, client_config, tmp_path: Path, unique_repo
):
    """`skopeo copy --all` of a linux/amd64 + linux/arm64 OCI index: the index and both
    platform manifests are in the registry and come back out unchanged."""
    index = build_index(seed=303)
    src = write_layout(tmp_path / "src", index, tag="multi")
    repo = unique_repo("index")
    remote = f"docker://{registry.host}/{repo}:multi"

    _copy(skopeo, client_config, f"oci:{src}:multi", remote, "--all")

    raw = _raw(skopeo, client_config, remote)
    assert raw == index.index.data
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    for img in index.images:
        child = _raw(skopeo, client_config, f"docker://{registry.host}/{repo}@{img.digest}")
        assert child == img.manifest.data, f"{img.platform} manifest differs"

    out = tmp_path / "out"
    _copy(skopeo, client_config, remote, f"oci:{out}:multi", "--all")
    pulled = read_layout(out)
    assert pulled.ref("multi")["digest"] == index.digest
    assert pulled.blobs[index.digest] == index.index.data
    platforms = {
        m["platform"]["architecture"]: m["digest"]
        for m in pulled.json_blob(index.digest)["manifests"]
    }
    assert platforms == {img.platform["architecture"]: img.digest for img in index.images}
    for img in index.images:
        assert pulled.blobs.get(img.digest) == img.manifest.data
        for blob in img.blobs:
            assert pulled.blobs.get(blob.digest) == blob.data, f"blob {blob.digest} differs"


def test_list_tags_and_delete(registry, skopeo, client_config, tmp_path: Path, unique_repo):
    """`skopeo list-tags` lists every tag pushed; `skopeo delete` by digest removes the
    manifest, after which GET by digest and by each of its tags is 404 MANIFEST_UNKNOWN."""
    image = build_image(seed=404, layers=2)
    src = write_layout(tmp_path / "src", image, tag="latest")
    repo = unique_repo("tags")
    tags = ["1.0", "1.1", "latest", "stable"]
    for tag in tags:
        _copy(skopeo, client_config, f"oci:{src}:latest", f"docker://{registry.host}/{repo}:{tag}")

    listed = json.loads(
        skopeo.run(
            "list-tags",
            "--tls-verify=false",
            "--authfile",
            str(client_config.auth_file),
            f"docker://{registry.host}/{repo}",
        )
    )
    assert sorted(listed["Tags"]) == sorted(tags)

    skopeo.run(
        "delete",
        "--tls-verify=false",
        "--authfile",
        str(client_config.auth_file),
        f"docker://{registry.host}/{repo}@{image.digest}",
    )

    accept = {"Accept": OCI_MANIFEST}
    registry.request("GET", f"/v2/{repo}/manifests/{image.digest}", headers=accept).expect_error(
        404, "MANIFEST_UNKNOWN"
    )
    for tag in tags:
        r = registry.request("GET", f"/v2/{repo}/manifests/{tag}", headers=accept)
        r.expect_error(404, "MANIFEST_UNKNOWN")
    # The layers stay: deleting a manifest does not delete blobs (GC does, later).
    for blob in image.blobs:
        assert registry.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}").status == 200
    # No tag names a deleted manifest any more.
    tag_list = registry.request("GET", f"/v2/{repo}/tags/list")
    if tag_list.status == 200:
        assert not tag_list.json().get("tags"), tag_list.json()
    else:
        tag_list.expect_error(404, "NAME_UNKNOWN")
