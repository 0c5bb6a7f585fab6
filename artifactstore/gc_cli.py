"""`artifact-store gc run|status` and `artifact-store repo delete`: garbage collection on
demand and its progress, over gRPC to gc_svc, and repository deletion, over gRPC to
metadata_svc (recorded in the audit log as the operator's, like `artifact-store iam`).

`artifact-store gc` without a command runs gc_svc itself (artifactstore.cli).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from artifactstore import access, rpc
from artifactstore.config import Settings
from artifactstore.errors import RegistryError
from artifactstore.gc.v1 import gc_pb2, gc_pb2_grpc
from artifactstore.iam.v1 import iam_pb2, iam_pb2_grpc
from artifactstore.metadata.v1 import gc_pb2 as metadata_gc_pb2
from artifactstore.metadata.v1 import gc_pb2_grpc as metadata_gc_pb2_grpc

if TYPE_CHECKING:
    from artifactstore.gc.v1.gc_pb2_grpc import GcServiceAsyncStub
    from artifactstore.iam.v1.iam_pb2_grpc import IamServiceAsyncStub
    from artifactstore.metadata.v1.gc_pb2_grpc import MetadataGcServiceAsyncStub

# A full cycle over a large registry takes a while; the command waits for it.
RUN_TIMEOUT_SECONDS = 24 * 3600.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `gc run`, `gc status` (under the `gc` service command, which must exist
    already) and `repo delete`."""
    gc = commands.choices["gc"]
    gc.description = "Run gc_svc alone, or, with a command, ask the running gc_svc."
    gc_commands = gc.add_subparsers(dest="gc_command", metavar="COMMAND")
    run = gc_commands.add_parser(
        "run", help="run one full GC cycle now and print what it reclaimed, per category"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="change nothing; print what a cycle would do"
    )
    status = gc_commands.add_parser(
        "status", help="what the current cycle has done so far, the last cycle, the totals"
    )
    repo = commands.add_parser("repo", help="administer repositories")
    repo_commands = repo.add_subparsers(dest="repo_command", required=True, metavar="COMMAND")
    delete = repo_commands.add_parser(
        "delete", help="delete a repository: its tags and manifests at once, its blobs by GC"
    )
    delete.add_argument("name")
    for parser in (run, status, delete):
        parser.add_argument("--json", action="store_true", help="print the result as JSON")


def handles(args: argparse.Namespace) -> bool:
    """Whether `args` is one of the commands here (not `gc` alone, which runs gc_svc)."""
    return args.command == "repo" or (
        args.command == "gc" and getattr(args, "gc_command", None) is not None
    )


def _json(message: Message) -> str:
    return json.dumps(
        json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        ),
        sort_keys=True,
    )


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _table(categories: Sequence[gc_pb2.CategoryStats], *, totals: bool = False) -> list[str]:
    head = (
        ["category", "swept", "reclaimed", "bytes"]
        if totals
        else ["category", "marked", "swept", "reclaimed", "bytes"]
    )
    rows = [head]
    for c in categories:
        values = [c.swept, c.reclaimed, c.reclaimed_bytes]
        rows.append([c.category, *map(str, values if totals else [c.marked, *values])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def _cycle(cycle: gc_pb2.Cycle) -> list[str]:
    ended = cycle.finished_at or time.time()
    kind = "dry run" if cycle.dry_run else "cycle"
    state = f"phase {cycle.phase}" if not cycle.finished_at else "done"
    lines = [f"{kind} started {_when(cycle.started_at)}, {state}, {ended - cycle.started_at:.1f} s"]
    if cycle.error:
        lines.append(f"stopped: {cycle.error}")
    return lines + _table(cycle.categories)


def _status(status: gc_pb2.GcStatus) -> list[str]:
    lines = []
    if status.running:
        lines += ["current:", *_cycle(status.current), ""]
    if status.HasField("last"):
        lines += ["last:", *_cycle(status.last), ""]
    lines += [f"totals since start ({status.cycles} cycles):", *_table(status.totals, totals=True)]
    for queue in (status.repository_queue, status.canonical_queue):
        lines.append(f"queue {queue.queue}: {queue.pending} pending, {queue.parked} parked")
    return lines


def _operator() -> str:
    return f"{access.OPERATOR_PREFIX}{getpass.getuser()}@{socket.gethostname()}"


async def _delete_repository(
    settings: Settings, name: str
) -> metadata_gc_pb2.DeleteRepositoryResponse:
    async with rpc.channel(settings.metadata_address) as channel:
        stub: MetadataGcServiceAsyncStub = metadata_gc_pb2_grpc.MetadataGcServiceStub(channel)
        deleted = await rpc.call(
            stub.DeleteRepository(
                metadata_gc_pb2.DeleteRepositoryRequest(
                    repository=name, queue=settings.gc_repository_queue
                )
            )
        )
    async with rpc.channel(settings.iam_address) as channel:
        iam: IamServiceAsyncStub = iam_pb2_grpc.IamServiceStub(channel)
        await rpc.call(
            iam.RecordAudit(
                iam_pb2.AuditEntry(
                    at=time.time(),
                    principal=_operator(),
                    source="cli",
                    action="repository.delete",
                    target=f"repository:{name}",
                    detail={"task": deleted.task_id},
                )
            )
        )
    return deleted


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.command == "repo":
            deleted = await _delete_repository(settings, args.name)
            output = (
                _json(deleted)
                if args.json
                else f"repository {args.name} deleted; its blobs follow through GC "
                f"(task {deleted.task_id})"
            )
        else:
            async with rpc.channel(settings.gc_address) as channel:
                stub: GcServiceAsyncStub = gc_pb2_grpc.GcServiceStub(channel)
                if args.gc_command == "run":
                    cycle = await rpc.call(
                        stub.RunCycle(
                            gc_pb2.RunCycleRequest(dry_run=args.dry_run),
                            timeout=RUN_TIMEOUT_SECONDS,
                        )
                    )
                    output = _json(cycle) if args.json else "\n".join(_cycle(cycle))
                else:
                    status = await rpc.call(stub.GetStatus(gc_pb2.GetStatusRequest()))
                    output = _json(status) if args.json else "\n".join(_status(status))
    except RegistryError as err:
        print(f"error: {err.reason}: {err.message}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    print(output)
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run a `gc` or `repo` command; the exit status."""
    return asyncio.run(_run(settings, args))
