"""Repository names and tags: the grammar of the OCI Distribution Specification."""

from __future__ import annotations

import re

from artifactstore.errors import Reason, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# Distribution's limit; long names also break clients that build paths from them.
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or not NAME.match(name):
        raise RegistryError(Reason.NAME_INVALID, f"invalid repository name {name[:300]!r}")
    return name


def check_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag, else raise TAG_INVALID."""
    if not TAG.match(tag):
        raise RegistryError(Reason.TAG_INVALID, f"invalid tag {tag[:300]!r}")
    return tag
