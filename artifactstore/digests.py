"""Content digests ("algorithm:hex") as the OCI image specification defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from artifactstore.errors import Reason, RegistryError

# Registered algorithms and the length of their hex encoding.
ALGORITHMS = {"sha256": 64, "sha512": 128}
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest of a registered algorithm."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse and validate `text`; raise DIGEST_INVALID (or UNSUPPORTED for an
        unregistered algorithm) otherwise."""
        if not _GRAMMAR.match(text):
            raise RegistryError(Reason.DIGEST_INVALID, f"invalid digest {text[:200]!r}")
        algorithm, _, encoded = text.partition(":")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise RegistryError(
                Reason.DIGEST_INVALID, f"unsupported digest algorithm {algorithm!r}"
            )
        if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise RegistryError(Reason.DIGEST_INVALID, f"invalid {algorithm} digest {text!r}")
        return cls(algorithm, encoded)

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest rather than a tag (it contains ':')."""
    return ":" in reference


def sha256_of(data: bytes) -> Digest:
    """The sha256 digest of `data`."""
    return Digest("sha256", hashlib.sha256(data).hexdigest())
