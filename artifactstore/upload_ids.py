"""Upload session ids a gateway issues itself, so that starting an upload (`POST
/v2/<name>/blobs/uploads/`) costs no call and no commit.

An issued id is 64 hex digits: a 16-byte random nonce, the second it was issued (uint32,
big-endian) and a 12-byte HMAC-SHA256 of both and the repository, under a secret derived
from the signing key every gateway replica shares (so any replica accepts any replica's
ids, and a client can neither invent one nor move one to another repository). metadata_svc
records the session at its first use (`start` in GetUpload and BeginBlobCommit), unless
the session has ended (an `upload ended` key, kept while the id could still start) or was
issued longer ago than an unused session is kept; see MetadataStore.upload_of.

Sessions created with CreateUpload keep their 32-digit ids and need their record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 16
ISSUED_BYTES = 4  # the issue second, uint32 big-endian
MAC_BYTES = 12
ISSUED_ID_LENGTH = 2 * (NONCE_BYTES + ISSUED_BYTES + MAC_BYTES)
_HEX = frozenset("0123456789abcdef")


def issued_at(upload_id: str) -> int | None:
    """The second an issued id was issued (its MAC unchecked: only a gateway can), or None
    for any other id."""
    if len(upload_id) != ISSUED_ID_LENGTH or not _HEX.issuperset(upload_id):
        return None
    start = 2 * NONCE_BYTES
    return int(upload_id[start : start + 2 * ISSUED_BYTES], 16)


class UploadIds:
    """Issues and checks upload ids with the gateways' shared secret."""

    def __init__(self, signing_key: ec.EllipticCurvePrivateKey) -> None:
        # A secret of its own, so that the MAC never exposes anything of the signing key.
        scalar = signing_key.private_numbers().private_value.to_bytes(32, "big")
        self._secret = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"artifact-store upload ids"
        ).derive(scalar)

    def _mac(self, repository: str, body: bytes) -> bytes:
        message = repository.encode() + b"\n" + body
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, repository: str, now: float | None = None) -> str:
        """A new id for a session of `repository`."""
        second = int(time.time() if now is None else now)
        body = os.urandom(NONCE_BYTES) + second.to_bytes(ISSUED_BYTES, "big")
        return (body + self._mac(repository, body)).hex()

    def vouches(self, upload_id: str, repository: str) -> bool:
        """Whether `upload_id` was issued by a gateway for `repository`."""
        if issued_at(upload_id) is None:
            return False
        raw = bytes.fromhex(upload_id)
        body, mac = raw[: NONCE_BYTES + ISSUED_BYTES], raw[NONCE_BYTES + ISSUED_BYTES :]
        return hmac.compare_digest(mac, self._mac(repository, body))
