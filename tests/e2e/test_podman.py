"""podman against the registry: load an image from disk, push it, pull it back.

podman keeps layers uncompressed in its storage and compresses them again on push, so
the compressed layer digests in the registry are podman's, not the builder's; what must
survive the round trip is the image: its config (the image ID), its uncompressed layers
(`RootFS.Layers` = the config's diff_ids) and the manifest digest podman pushed.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.images import DOCKER_MANIFEST, OCI_MANIFEST, build_image, write_layout

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}


def _inspect(podman, ref: str) -> dict:
    out = podman.run("image", "inspect", ref)
    docs = json.loads(out)
    assert len(docs) == 1, out
    return docs[0]


def test_push_pull_round_trip(registry, podman, client_config, tmp_path: Path, unique_repo):
    """Sign in with `podman login` as the administrator; pull from an oci: layout (no
    network), tag, push, remove, pull back, compare."""
    image = build_image(seed=505, layers=3)
    src = write_layout(tmp_path / "src", image, tag="v1")
    repo = unique_repo("podman")
    remote = f"{registry.host}/{repo}:v1"
    auth = ["--authfile", str(client_config.auth_file)]
    user, password = registry.admin
    out = podman.run(
        "login",
        "--tls-verify=false",
        *auth,
        "-u",
        user,
        "--password-stdin",
        registry.host,
        input=password,
    )
    assert "Login Succeeded" in out, out

    image_id = podman.run("pull", "-q", f"oci:{src}:v1").strip()
    assert image_id == image.config.digest.removeprefix("sha256:")
    local = _inspect(podman, image_id)
    assert local["RootFS"]["Layers"] == list(image.diff_ids)

    podman.run("tag", image_id, remote)
    digest_file = tmp_path / "pushed.digest"
    podman.run("push", "--tls-verify=false", *auth, "--digestfile", str(digest_file), remote)
    pushed_digest = digest_file.read_text().strip()
    assert pushed_digest.startswith("sha256:")

    # The registry serves what podman pushed, under the tag and under its digest.
    head = registry.request("HEAD", f"/v2/{repo}/manifests/v1", headers=ACCEPT)
    assert head.status == 200, head
    assert head.header("Docker-Content-Digest") == pushed_digest
    manifest = registry.request("GET", f"/v2/{repo}/manifests/{pushed_digest}", headers=ACCEPT)
    assert manifest.status == 200
    pushed = manifest.json()
    assert pushed["config"]["digest"] == image.config.digest
    assert len(pushed["layers"]) == len(image.layers)
    for layer in pushed["layers"]:
        assert registry.request("HEAD", f"/v2/{repo}/blobs/{layer['digest']}").status == 200

    podman.run("rmi", "--force", image_id)
    gone = podman.result("image", "exists", image_id)
    assert gone.returncode == 1, "the image is still in local storage after rmi"

    podman.run("pull", "-q", "--tls-verify=false", *auth, remote)
    pulled = _inspect(podman, remote)
    assert pulled["Id"] == image_id
    assert pulled["Digest"] == pushed_digest
    assert pulled["RootFS"]["Layers"] == list(image.diff_ids)
    assert f"{registry.host}/{repo}@{pushed_digest}" in pulled["RepoDigests"]
