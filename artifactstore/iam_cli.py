"""`artifact-store iam …` and `artifact-store audit`: administration of organizations,
projects, users, service accounts, keys and bindings, over gRPC to the IAM service.

The caller is recorded as `operator:<user>@<host>`: whoever can reach the mesh's sockets
already controls it, so operator calls are audited rather than checked. Key pairs are
generated here; only the public key is sent, and the private key exists only in the key
file written for the user.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format
from google.protobuf.message import Message

from artifactstore import access, rpc
from artifactstore.config import Settings
from artifactstore.errors import RegistryError
from artifactstore.iam.v1 import iam_pb2 as pb
from artifactstore.iam.v1 import iam_pb2_grpc

if TYPE_CHECKING:
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub

Command = Callable[["IamServiceAsyncStub", argparse.Namespace, pb.Caller], Awaitable[Any]]


def _caller() -> pb.Caller:
    return pb.Caller(
        principal=f"{access.OPERATOR_PREFIX}{getpass.getuser()}@{socket.gethostname()}",
        source="cli",
    )


def _scope(text: str) -> pb.Scope:
    kind, _, name = text.partition(":")
    if kind not in access.SCOPE_KINDS or (kind == "root") != (name == ""):
        raise SystemExit(
            f"invalid scope {text!r}: root, organization:NAME, project:NAME or repository:NAME"
        )
    return pb.Scope(kind=kind, name=name)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def _key_file(email: str, key: pb.Key, private_pem: str) -> dict[str, str]:
    project = email.partition("@")[2].split(".")[0]
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": key.key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": key.key_id,
    }


async def _create_key(
    stub: IamServiceAsyncStub, args: argparse.Namespace, caller: pb.Caller
) -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = await rpc.call(
        stub.CreateKey(
            pb.CreateKeyRequest(
                caller=caller, service_account=args.email, public_key_pem=public_pem.decode()
            )
        )
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(_key_file(args.email, key, private_pem), f, indent=2)
        f.write("\n")
    return key.key_id


def _rows(messages: list[Message], as_json: bool) -> str:
    dicts = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]
    if as_json:
        return "\n".join(json.dumps(d, sort_keys=True) for d in dicts)
    lines = []
    for d in dicts:
        for time_field in ("created_at", "at"):
            if time_field in d:
                d[time_field] = datetime.fromtimestamp(d[time_field], UTC).isoformat(
                    timespec="seconds"
                )
        lines.append("  ".join(f"{k}={v}" for k, v in d.items() if k != "public_key_pem"))
    return "\n".join(lines)


# (group, command) → (help, arguments, implementation). Each implementation returns what
# to print: a message (shown as one line of JSON with --json), a list of rows, or text.
COMMANDS: dict[tuple[str, str], tuple[str, list[tuple[list[str], dict[str, Any]]], Command]] = {
    ("org", "create"): (
        "create an organization",
        [(["name"], {})],
        lambda s, a, c: rpc.call(
            s.CreateOrganization(pb.CreateOrganizationRequest(caller=c, name=a.name))
        ),
    ),
    ("org", "list"): (
        "list organizations",
        [],
        lambda s, a, c: _list(
            s.ListOrganizations(pb.ListOrganizationsRequest(caller=c)), "organizations"
        ),
    ),
    ("org", "delete"): (
        "delete an organization that has no projects",
        [(["name"], {})],
        lambda s, a, c: rpc.call(
            s.DeleteOrganization(pb.DeleteOrganizationRequest(caller=c, name=a.name))
        ),
    ),
    ("project", "create"): (
        "create a project (repositories named <project>/… belong to it)",
        [
            (["name"], {}),
            (["--org"], {"default": None, "help": "organization (default: the default one)"}),
        ],
        lambda s, a, c: rpc.call(
            s.CreateProject(pb.CreateProjectRequest(caller=c, organization=a.org, name=a.name))
        ),
    ),
    ("project", "list"): (
        "list projects",
        [(["--org"], {"default": ""})],
        lambda s, a, c: _list(
            s.ListProjects(pb.ListProjectsRequest(caller=c, organization=a.org)), "projects"
        ),
    ),
    ("project", "delete"): (
        "delete a project that has no repositories, with its service accounts",
        [(["name"], {})],
        lambda s, a, c: rpc.call(s.DeleteProject(pb.DeleteProjectRequest(caller=c, name=a.name))),
    ),
    ("user", "create"): (
        "create a user (password prompted, or one line on stdin with --password-stdin)",
        [(["name"], {}), (["--password-stdin"], {"action": "store_true"})],
        lambda s, a, c: rpc.call(
            s.CreateUser(pb.CreateUserRequest(caller=c, name=a.name, password=_password(a)))
        ),
    ),
    ("user", "list"): (
        "list users",
        [],
        lambda s, a, c: _list(s.ListUsers(pb.ListUsersRequest(caller=c)), "users"),
    ),
    ("user", "delete"): (
        "delete a user and their bindings",
        [(["name"], {})],
        lambda s, a, c: rpc.call(s.DeleteUser(pb.DeleteUserRequest(caller=c, name=a.name))),
    ),
    ("user", "passwd"): (
        "set a user's password",
        [(["name"], {}), (["--password-stdin"], {"action": "store_true"})],
        lambda s, a, c: rpc.call(
            s.UpdateUser(pb.UpdateUserRequest(caller=c, name=a.name, password=_password(a)))
        ),
    ),
    ("user", "disable"): (
        "disable a user",
        [(["name"], {})],
        lambda s, a, c: rpc.call(
            s.UpdateUser(pb.UpdateUserRequest(caller=c, name=a.name, disabled=True))
        ),
    ),
    ("user", "enable"): (
        "enable a user",
        [(["name"], {})],
        lambda s, a, c: rpc.call(
            s.UpdateUser(pb.UpdateUserRequest(caller=c, name=a.name, disabled=False))
        ),
    ),
    ("sa", "create"): (
        "create a service account in a project; prints its email",
        [(["name"], {}), (["--project"], {"required": True})],
        lambda s, a, c: _field(
            s.CreateServiceAccount(
                pb.CreateServiceAccountRequest(caller=c, project=a.project, name=a.name)
            ),
            "email",
        ),
    ),
    ("sa", "list"): (
        "list a project's service accounts",
        [(["--project"], {"required": True})],
        lambda s, a, c: _list(
            s.ListServiceAccounts(pb.ListServiceAccountsRequest(caller=c, project=a.project)),
            "service_accounts",
        ),
    ),
    ("sa", "delete"): (
        "delete a service account with its keys and bindings",
        [(["email"], {})],
        lambda s, a, c: rpc.call(
            s.DeleteServiceAccount(pb.DeleteServiceAccountRequest(caller=c, email=a.email))
        ),
    ),
    ("key", "create"): (
        "create a key for a service account and write its JSON key file; prints the key id",
        [
            (["email"], {}),
            (["--output", "-o"], {"required": True, "help": "key file to write (mode 0600)"}),
        ],
        _create_key,
    ),
    ("key", "list"): (
        "list a service account's keys",
        [(["email"], {})],
        lambda s, a, c: _list(
            s.ListKeys(pb.ListKeysRequest(caller=c, service_account=a.email)), "keys"
        ),
    ),
    ("key", "delete"): (
        "delete a key (it stops working at once)",
        [(["key_id"], {})],
        lambda s, a, c: rpc.call(s.DeleteKey(pb.DeleteKeyRequest(caller=c, key_id=a.key_id))),
    ),
    ("key", "disable"): (
        "disable a key",
        [(["key_id"], {})],
        lambda s, a, c: rpc.call(
            s.UpdateKey(pb.UpdateKeyRequest(caller=c, key_id=a.key_id, disabled=True))
        ),
    ),
    ("key", "enable"): (
        "enable a key",
        [(["key_id"], {})],
        lambda s, a, c: rpc.call(
            s.UpdateKey(pb.UpdateKeyRequest(caller=c, key_id=a.key_id, disabled=False))
        ),
    ),
    ("grant", ""): (
        "bind a role to a principal at a scope",
        [
            (["--scope"], {"required": True}),
            (["--principal"], {"required": True}),
            (["--role"], {"required": True}),
        ],
        lambda s, a, c: rpc.call(
            s.Grant(
                pb.GrantRequest(
                    caller=c,
                    binding=pb.Binding(scope=_scope(a.scope), principal=a.principal, role=a.role),
                )
            )
        ),
    ),
    ("revoke", ""): (
        "remove a principal's binding at a scope",
        [(["--scope"], {"required": True}), (["--principal"], {"required": True})],
        lambda s, a, c: rpc.call(
            s.Revoke(pb.RevokeRequest(caller=c, scope=_scope(a.scope), principal=a.principal))
        ),
    ),
    ("bindings", ""): (
        "list bindings at a scope and/or of a principal",
        [(["--scope"], {"default": ""}), (["--principal"], {"default": ""})],
        lambda s, a, c: _list(
            s.ListBindings(
                pb.ListBindingsRequest(
                    caller=c,
                    scope=_scope(a.scope) if a.scope else pb.Scope(),
                    principal=a.principal,
                )
            ),
            "bindings",
        ),
    ),
}


async def _list(awaitable: Awaitable[Message], field: str) -> list[Message]:
    reply = await rpc.call(awaitable)
    return list(getattr(reply, field))


async def _field(awaitable: Awaitable[Message], field: str) -> str:
    return str(getattr(await rpc.call(awaitable), field))


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `iam …` and `audit` on the CLI's subcommands."""
    iam = commands.add_parser(
        "iam", help="administer organizations, projects, users, service accounts, keys, bindings"
    )
    groups = iam.add_subparsers(dest="iam_group", required=True, metavar="GROUP")
    subgroups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for (group, command), (help_text, arguments, _) in COMMANDS.items():
        if command:
            if group not in subgroups:
                subgroups[group] = groups.add_parser(
                    group, help=f"{group} commands"
                ).add_subparsers(dest="iam_command", required=True, metavar="COMMAND")
            parser = subgroups[group].add_parser(command, help=help_text)
        else:
            parser = groups.add_parser(group, help=help_text)
            parser.set_defaults(iam_command="")
        for flags, options in arguments:
            parser.add_argument(*flags, **options)
        parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    audit = commands.add_parser("audit", help="read the audit log, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true", help="print entries as JSON lines")


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    async with rpc.channel(settings.iam_address) as channel:
        stub: IamServiceAsyncStub = iam_pb2_grpc.IamServiceStub(channel)
        caller = _caller()
        try:
            if args.command == "audit":
                result: Any = await _list(
                    stub.ListAudit(pb.ListAuditRequest(caller=caller, limit=args.limit)), "entries"
                )
            else:
                result = await COMMANDS[(args.iam_group, args.iam_command)][2](stub, args, caller)
        except RegistryError as err:
            print(f"error: {err.reason}: {err.message}", file=sys.stderr)
            return 1
    if isinstance(result, list):
        output = _rows(result, args.json)
    elif isinstance(result, Message):
        output = _rows([result], args.json)
    else:
        output = str(result)
    if output:
        print(output)
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run an `iam` or `audit` command; the exit status."""
    return asyncio.run(_run(settings, args))
