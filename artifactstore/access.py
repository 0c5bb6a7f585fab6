"""The access model shared by the gateway and the IAM service: actions, roles,
principals and scopes (DESIGN.md, "Access control")."""

from __future__ import annotations

import enum

PULL = "pull"
PUSH = "push"
DELETE = "delete"
MANAGE = "manage"
ACTIONS = (PULL, PUSH, DELETE, MANAGE)

ALL_USERS = "allUsers"
USER_PREFIX = "user:"
SERVICE_ACCOUNT_PREFIX = "serviceAccount:"
# Operators run `artifact-store iam` on a host that can reach the mesh's sockets, which
# already gives full control; their calls are audited under this prefix, not checked.
OPERATOR_PREFIX = "operator:"
# The user names docker and podman send with a service-account key file as password.
JSON_KEY_USERS = ("_json_key", "_json_key_base64")


class Role(enum.IntEnum):
    """Roles in the order of what they allow; each allows everything below it."""

    VIEWER = 1
    EDITOR = 2
    OWNER = 3

    @classmethod
    def parse(cls, name: str, scope_kind: str) -> Role:
        """The role named `name` when bound at a scope of `scope_kind`.

        `viewer|editor|owner` are accepted at every scope; their `artifact_store_` forms
        only above repositories, where they mean "on every repository beneath".
        """
        bare = name.removeprefix("artifact_store_")
        if bare not in {"viewer", "editor", "owner"}:
            raise ValueError(f"unknown role {name!r}")
        if bare != name and scope_kind == "repository":
            raise ValueError(f"{name} is bound above repositories; use {bare!r} on one")
        return cls[bare.upper()]

    @property
    def actions(self) -> tuple[str, ...]:
        """What this role allows."""
        return {Role.VIEWER: (PULL,), Role.EDITOR: (PULL, PUSH), Role.OWNER: ACTIONS}[self]


SCOPE_KINDS = ("root", "organization", "project", "repository")


def project_of(repository: str) -> str:
    """The project a repository belongs to: the first component of its name."""
    return repository.split("/", 1)[0]
