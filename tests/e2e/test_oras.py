"""oras (the Python SDK, PyPI `oras` 0.2.43) against the registry: artifacts that refer
to an image through `subject`, found with the referrers API and pulled back.

Facts about the SDK this relies on (read from its source): `OrasClient.push(subject=…)`
takes an `oras.oci.Subject` (it calls `dataclasses.asdict` on it; the `str` annotation
is wrong) and puts it in the manifest; it never writes `artifactType`, so a referrer's
`artifactType` is its config's media type, which `manifest_config="<path>:<type>"` sets
(a path that does not exist gives the empty `{}` config). `push` returns the manifest
PUT's response, so its headers (`OCI-Subject`) can be checked. The SDK always reads
`~/.docker/config.json`, so HOME points at an empty directory here.

The client signs in as the registry's administrator with Basic credentials
(`auth_backend="basic"`): with its token backend this SDK asks for a `pull` scope only
and then pushes with that token (a client bug, see CLIENTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import oras.client
import oras.oci
import pytest

from tests.e2e.images import OCI_INDEX, OCI_MANIFEST, build_image

SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"


@pytest.fixture
def oras_client(registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An OrasClient for the registry over plain HTTP, with no credentials of this machine,
    signed in as the administrator (Basic credentials, the login kept in a file here)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    client = oras.client.OrasClient(hostname=registry.host, insecure=True, auth_backend="basic")
    user, password = registry.admin
    config = tmp_path / "oras-config.json"
    client.login(user, password, hostname=registry.host, config_path=str(config))
    assert registry.host in json.loads(config.read_text())["auths"]
    return client


def _push_artifact(
    oras_client, registry, repo: str, tag: str, subject, artifact_type: str, path: Path
):
    """Push one file as an artifact whose config media type is `artifact_type`."""
    return oras_client.push(
        target=f"{registry.host}/{repo}:{tag}",
        files=[f"{path}:application/vnd.example.file.v1"],
        manifest_config=f"{path.parent / 'no-config'}:{artifact_type}",
        manifest_annotations={"org.example.kind": tag},
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )


def test_referrers_with_oras(registry, oras_client, tmp_path: Path, unique_repo):
    """Push an image, attach an SBOM and a signature to it with oras (`subject`), list them
    with GET /v2/<name>/referrers/<digest> (all, and filtered by artifactType), pull the
    SBOM back with oras, and see a deleted referrer leave the list."""
    repo = unique_repo("oras")
    image = build_image(seed=606, layers=2)
    registry.push_image(repo, image, "v1")
    subject = oras.oci.Subject(
        mediaType=OCI_MANIFEST, digest=image.digest, size=image.manifest.size
    )

    sbom_file = tmp_path / "sbom.json"
    sbom_file.write_text(json.dumps({"packages": ["a", "b"], "seed": 606}))
    sig_file = tmp_path / "signature.bin"
    sig_file.write_bytes(b"not really a signature\n" * 8)

    pushed = {}
    for tag, artifact_type, path in (
        ("sbom", SBOM_TYPE, sbom_file),
        ("sig", SIGNATURE_TYPE, sig_file),
    ):
        resp = _push_artifact(oras_client, registry, repo, tag, subject, artifact_type, path)
        assert resp.status_code == 201, resp.text
        assert resp.headers.get("OCI-Subject") == image.digest, dict(resp.headers)
        digest = resp.headers["Docker-Content-Digest"]
        manifest = registry.request(
            "GET", f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        )
        assert manifest.status == 200
        pushed[artifact_type] = (digest, manifest.body)

    assert sorted(oras_client.get_tags(f"{registry.host}/{repo}")) == ["sbom", "sig", "v1"]

    # All referrers of the image.
    r = registry.request("GET", f"/v2/{repo}/referrers/{image.digest}")
    assert r.status == 200, r.body
    assert r.header("Content-Type") == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == {digest for digest, _ in pushed.values()}
    for artifact_type, (digest, body) in pushed.items():
        desc = by_digest[digest]
        assert desc["mediaType"] == OCI_MANIFEST
        assert desc["size"] == len(body)
        assert desc["artifactType"] == artifact_type
        assert desc["annotations"] == json.loads(body)["annotations"]

    # Filtered by artifactType: only the SBOM, and the registry says it filtered.
    r = registry.request(
        "GET", f"/v2/{repo}/referrers/{image.digest}?artifactType={quote(SBOM_TYPE, safe='')}"
    )
    assert r.status == 200, r.body
    assert r.header("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in r.json()["manifests"]] == [pushed[SBOM_TYPE][0]]
    r = registry.request(
        "GET", f"/v2/{repo}/referrers/{image.digest}?artifactType=application%2Fvnd.none"
    )
    assert r.status == 200, r.body
    assert r.header("OCI-Filters-Applied") == "artifactType"
    assert r.json()["manifests"] == []

    # Pull the SBOM back with oras: the same file content.
    out = tmp_path / "pulled"
    files = oras_client.pull(
        target=f"{registry.host}/{repo}@{pushed[SBOM_TYPE][0]}", outdir=str(out)
    )
    assert [Path(f).name for f in files] == ["sbom.json"]
    assert Path(files[0]).read_bytes() == sbom_file.read_bytes()

    # A deleted referrer is no longer listed; the other one stays.
    r = registry.request("DELETE", f"/v2/{repo}/manifests/{pushed[SIGNATURE_TYPE][0]}")
    assert r.status == 202, r.body
    r = registry.request("GET", f"/v2/{repo}/referrers/{image.digest}")
    assert r.status == 200
    assert [d["digest"] for d in r.json()["manifests"]] == [pushed[SBOM_TYPE][0]]
