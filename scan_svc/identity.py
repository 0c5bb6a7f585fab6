"""The scanner's own identity: a service account with viewer on the whole registry, and a
key file it pulls with.

On each start the worker makes sure, through the IAM RPCs, that the system project
(`artifact-store`, in the default organization), its service account `scanner` and the
root-scope `viewer` binding exist, and that its key file (ARTS_SCAN_KEY_FILE, by default
`<ARTS_DATA_DIR>/keys/scanner.json`, mode 0600) holds a key IAM still accepts; otherwise it
generates a key pair, registers the public half and writes the file. Every step tolerates
the others' work, so restarts and replicas starting together converge: existing project and
account are kept, the binding is only written when missing (each IAM change flushes the
gateways' decision caches), and each replica keeps its own key. Calls are made as
`operator:scan_svc@<host>` and audited like an operator's.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from artifactstore import access, rpc
from artifactstore.errors import Reason, RegistryError
from artifactstore.iam.v1 import iam_pb2 as pb
from artifactstore.scanning import SCANNER_ACCOUNT, SCANNER_PROJECT

if TYPE_CHECKING:
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub

JSON_KEY_USER = access.JSON_KEY_USERS[0]


@dataclass(frozen=True)
class ScannerKey:
    """The scanner's principal and the key file it signs in with."""

    email: str
    key_id: str
    key_file_json: str

    @property
    def principal(self) -> str:
        return access.SERVICE_ACCOUNT_PREFIX + self.email


def _caller() -> pb.Caller:
    return pb.Caller(
        principal=f"{access.OPERATOR_PREFIX}scan_svc@{socket.gethostname()}", source="scan_svc"
    )


async def _tolerating_existing(call: Awaitable[Any]) -> None:
    try:
        await rpc.call(call)
    except RegistryError as err:
        if err.reason != Reason.ALREADY_EXISTS:
            raise


async def _account_email(iam: IamServiceAsyncStub, caller: pb.Caller) -> str:
    await _tolerating_existing(
        iam.CreateProject(pb.CreateProjectRequest(caller=caller, name=SCANNER_PROJECT))
    )
    await _tolerating_existing(
        iam.CreateServiceAccount(
            pb.CreateServiceAccountRequest(
                caller=caller, project=SCANNER_PROJECT, name=SCANNER_ACCOUNT
            )
        )
    )
    listed = await rpc.call(
        iam.ListServiceAccounts(
            pb.ListServiceAccountsRequest(caller=caller, project=SCANNER_PROJECT)
        )
    )
    for account in listed.service_accounts:
        if account.name == SCANNER_ACCOUNT:
            return account.email
    raise RegistryError(Reason.NAME_UNKNOWN, "the scanner's service account vanished")


async def _ensure_viewer(iam: IamServiceAsyncStub, caller: pb.Caller, principal: str) -> None:
    bindings = await rpc.call(
        iam.ListBindings(pb.ListBindingsRequest(caller=caller, principal=principal))
    )
    if any(b.scope.kind == "root" for b in bindings.bindings):
        return
    binding = pb.Binding(scope=pb.Scope(kind="root"), principal=principal, role="viewer")
    await rpc.call(iam.Grant(pb.GrantRequest(caller=caller, binding=binding)))


def _read_key_file(path: Path, email: str) -> ScannerKey | None:
    try:
        text = path.read_text()
        doc = json.loads(text)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("client_email") != email:
        return None
    return ScannerKey(email, str(doc.get("private_key_id", "")), text)


def _write_key_file(path: Path, content: str) -> None:
    """Write `content` to `path` with mode 0600 whole: a sibling, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.replace(temporary, path)


async def _new_key(iam: IamServiceAsyncStub, caller: pb.Caller, email: str) -> tuple[str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = await rpc.call(
        iam.CreateKey(
            pb.CreateKeyRequest(
                caller=caller, service_account=email, public_key_pem=public_pem.decode()
            )
        )
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    document = {
        "type": "service_account",
        "project_id": SCANNER_PROJECT,
        "private_key_id": key.key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": key.key_id,
    }
    return key.key_id, json.dumps(document, indent=2) + "\n"


async def ensure_identity(iam: IamServiceAsyncStub, key_file: Path) -> ScannerKey:
    """The scanner's account and a working key file, created as needed (see the module
    docstring). Raises RegistryError or grpc errors when IAM refuses or is unreachable."""
    caller = _caller()
    email = await _account_email(iam, caller)
    principal = access.SERVICE_ACCOUNT_PREFIX + email
    await _ensure_viewer(iam, caller, principal)
    existing = _read_key_file(key_file, email)
    if existing is not None:
        check = await rpc.call(
            iam.CheckPrincipal(
                pb.CheckPrincipalRequest(principal=principal, key_id=existing.key_id)
            )
        )
        if check.active:
            return existing
    key_id, content = await _new_key(iam, caller, email)
    _write_key_file(key_file, content)
    return ScannerKey(email, key_id, content)
