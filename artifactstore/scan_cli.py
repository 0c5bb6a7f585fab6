"""`artifact-store scan …`: the vulnerability database, scan results, requests, parked
tasks and the projects' scan policies.

`scan db import` reads the OSV files on this machine and writes the database into blob
storage (ARTS_STORAGE_URL) itself, where every worker finds it; the other commands are
calls to scan_svc (ARTS_SCAN_ADDRESS) or to metadata_svc (policies, ARTS_METADATA_ADDRESS).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from google.protobuf import json_format

from artifactstore import access, rpc
from artifactstore.config import Settings
from artifactstore.errors import RegistryError
from artifactstore.metadata.v1 import scans_pb2, scans_pb2_grpc
from artifactstore.scan.v1 import scan_pb2, scan_pb2_grpc
from artifactstore.scanning import GROUPS, SEVERITIES, finding_to_dict, summary_to_dict

# Columns of `scan report`'s table: header, the finding's field, how wide a cell may get.
_COLUMNS = (
    ("SEVERITY", "severity", 8),
    ("VULNERABILITY", "vulnerability_id", 24),
    ("PACKAGE", "package", 28),
    ("INSTALLED", "installed_version", 28),
    ("FIXED", "fixed_version", 28),
    ("PLATFORM", "platform", 16),
    ("PATH", "file_path", 60),
    ("TITLE", "title", 50),
)


_MAX_SOURCES_SHOWN = 20


def split_reference(text: str) -> tuple[str, str]:
    """`repo@digest`, `repo@tag` or `repo:tag` (`repo` alone: `latest`) as (repo, ref)."""
    if "@" in text:
        repo, _, ref = text.partition("@")
        return repo, ref
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        return text[:colon], text[colon + 1 :]
    return text, "latest"


def _operator() -> str:
    return f"{access.OPERATOR_PREFIX}{getpass.getuser()}@{socket.gethostname()}"


def _cell(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def report_table(reply: scan_pb2.ListFindingsResponse, name: str) -> str:
    """The summary lines and the findings table `scan report` prints."""
    summary = summary_to_dict(reply.summary)
    lines = [
        f"{name}@{reply.digest}",
        f"  status: {summary['status']}"
        + (" (a scan is queued)" if summary["queued"] else "")
        + (f"  scanned at: {summary['scanned_at']}" if summary["scanned_at"] else ""),
    ]
    if summary["analyzer"]:
        lines.append(
            f"  analyzer: {summary['analyzer']} {summary['analyzer_version']}"
            f"  database: {summary['database_version'] or '-'}"
        )
    if summary["message"]:
        lines.append(f"  message: {summary['message']}")
    lines.append("  " + "  ".join(f"{g}: {n}" for g, n in summary["grouped"].items()))
    lines.append(
        "  (" + ", ".join(f"{s.lower()} {summary['counts'][s.lower()]}" for s in SEVERITIES) + ")"
    )
    for platform in summary["platforms"]:
        counts = ", ".join(f"{k} {v}" for k, v in platform["counts"].items() if v)
        lines.append(f"  {platform['platform']}: {platform['status']} {counts}".rstrip())
    if reply.findings:
        findings = [finding_to_dict(f) for f in reply.findings]
        # The platform column only tells something for an index.
        columns = [c for c in _COLUMNS if c[1] != "platform" or summary["platforms"]]
        rows = [tuple(str(f[key] or "-") for _, key, _ in columns) for f in findings]
        widths = [
            min(limit, max(len(header), *(len(r[i]) for r in rows)))
            for i, (header, _, limit) in enumerate(columns)
        ]
        lines.append("")
        for row in [tuple(header for header, _, _ in columns), *rows]:
            cells = [_cell(v, w).ljust(w) for v, w in zip(row, widths, strict=True)]
            lines.append("  ".join(cells).rstrip())
    shown = len(reply.findings)
    if shown < reply.total:
        lines.append(f"({shown} of {reply.total} findings shown)")
    return "\n".join(lines)


async def _report(settings: Settings, args: argparse.Namespace) -> str:
    repo, ref = split_reference(args.image)
    async with rpc.channel(settings.scan_address) as channel:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        reply = await rpc.call(
            stub.ListFindings(
                scan_pb2.ListFindingsRequest(
                    repository=repo, reference=ref, severities=args.severity or []
                )
            )
        )
    if args.json:
        return json.dumps(
            {
                "repository": repo,
                "digest": reply.digest,
                "summary": summary_to_dict(reply.summary),
                "total": reply.total,
                "findings": [finding_to_dict(f) for f in reply.findings],
            }
        )
    return report_table(reply, repo)


async def _request(settings: Settings, args: argparse.Namespace) -> str:
    repo, ref = split_reference(args.image)
    async with rpc.channel(settings.scan_address) as channel:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        reply = await rpc.call(
            stub.RequestScan(scan_pb2.RequestScanRequest(repository=repo, reference=ref))
        )
    return f"queued {repo}@{reply.digest} (task {reply.task.task_id})"


async def _db_status(settings: Settings, args: argparse.Namespace) -> str:
    async with rpc.channel(settings.scan_address) as channel:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        status = await rpc.call(stub.GetDatabaseStatus(scan_pb2.GetDatabaseStatusRequest()))
    if args.json:
        return json.dumps(json_format.MessageToDict(status, preserving_proto_field_name=True))
    if not status.present:
        return "no vulnerability database: import one with `artifact-store scan db import PATH`"
    lines = [
        f"version {status.version}  records {status.records}  at {status.location}",
        f"loaded by this scan_svc: {status.loaded_version or 'not yet'}",
    ]
    shown = status.sources[:_MAX_SOURCES_SHOWN]
    lines += [f"  {s.kind:5} {s.records:7} records  {s.path}" for s in shown]
    if len(status.sources) > len(shown):
        lines.append(f"  … and {len(status.sources) - len(shown)} more files (--json lists all)")
    return "\n".join(lines)


class CommandError(Exception):
    """A failure to report in one line, with exit status 1."""


def _db_import(settings: Settings, args: argparse.Namespace) -> str:
    # Imported here: the analysis library (and pyarrow) would otherwise load with every
    # `artifact-store` command, the services' own starts included.
    from artifactstore.storage import StorageOptions
    from scan_svc import vulndb
    from scan_svc.analysis import AnalysisError
    from scan_svc.storage import Storage

    try:
        pointer = vulndb.import_database(
            Storage.open(settings.storage_url, StorageOptions.from_settings(settings)),
            args.paths,
            replace=args.replace,
        )
    except (AnalysisError, OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    return (
        f"vulnerability database {pointer.version}: {pointer.records} records "
        f"at {pointer.location} (workers load it before their next batch)"
    )


async def _parked(settings: Settings, args: argparse.Namespace) -> str:
    async with rpc.channel(settings.scan_address) as channel:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        reply = await rpc.call(
            stub.ListParkedScans(scan_pb2.ListParkedScansRequest(limit=args.limit))
        )
    lines = []
    for task in reply.tasks:
        payload = json.loads(task.payload or "{}")
        if args.json:
            lines.append(
                json.dumps(
                    {
                        **payload,
                        "task_id": task.task_id,
                        "attempts": task.attempts,
                        "error": task.last_error,
                    }
                )
            )
        else:
            lines.append(
                f"{payload.get('repository')}@{payload.get('digest')}  "
                f"attempts={task.attempts}  error={task.last_error}"
            )
    return "\n".join(lines)


async def _policy(settings: Settings, args: argparse.Namespace) -> str:
    async with rpc.channel(settings.metadata_address) as channel:
        stub = scans_pb2_grpc.ScanMetadataServiceStub(channel)
        if args.policy_command == "get":
            policy = await rpc.call(
                stub.GetScanPolicy(scans_pb2.GetScanPolicyRequest(project=args.project))
            )
        else:
            block = args.block_severity if args.policy_command == "set" else ""
            policy = await rpc.call(
                stub.SetScanPolicy(
                    scans_pb2.SetScanPolicyRequest(
                        project=args.project, block_severity=block, updated_by=_operator()
                    )
                )
            )
    if args.json:
        return json.dumps(
            {"project": policy.project, "block_severity": policy.block_severity or None}
        )
    if not policy.block_severity:
        return f"project {policy.project}: no scan policy (pulls are never refused for findings)"
    return (
        f"project {policy.project}: pulls of images with {policy.block_severity} or higher "
        f"findings are refused"
    )


Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, str]]
_ASYNC: dict[str, Handler] = {
    "report": _report,
    "request": _request,
    "parked": _parked,
    "policy": _policy,
}


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `scan db|report|request|parked|policy …` under the `scan` service command
    (which must exist already; alone, it runs scan_svc)."""
    scan = commands.choices["scan"]
    scan.description = (
        "Run scan_svc alone, or, with a command, manage vulnerability scanning: the database, "
        "reports, requests, parked tasks, policies."
    )
    verbs = scan.add_subparsers(dest="scan_command", metavar="COMMAND")

    db = verbs.add_parser("db", help="the vulnerability database of the built-in analyzer")
    db_verbs = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    importing = db_verbs.add_parser(
        "import",
        help="import OSV advisories (JSON/YAML files, folders of them, osv.dev all.zip) "
        "into the shared database",
    )
    importing.add_argument("paths", nargs="+", metavar="PATH")
    importing.add_argument(
        "--replace", action="store_true", help="start from an empty database, not the current one"
    )
    status = db_verbs.add_parser("status", help="the database's version and sources")
    status.add_argument("--json", action="store_true")

    report = verbs.add_parser("report", help="a manifest's latest scan, as a table")
    report.add_argument("image", metavar="REPO@DIGEST|REPO@TAG|REPO:TAG")
    report.add_argument(
        "--severity",
        action="append",
        metavar="LIST",
        help=f"only these severities ({','.join(SEVERITIES)}; comma-separated, repeatable)",
    )
    report.add_argument("--json", action="store_true")

    request = verbs.add_parser("request", help="queue a scan of a manifest")
    request.add_argument("image", metavar="REPO@DIGEST|REPO@TAG|REPO:TAG")

    parked = verbs.add_parser("parked", help="scan tasks parked after failing too often")
    parked.add_argument("--limit", type=int, default=100)
    parked.add_argument("--json", action="store_true")

    policy = verbs.add_parser(
        "policy",
        help="a project's scan policy: refuse pulls of images with findings at or above a severity",
    )
    policy_verbs = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    for verb, text in (("get", "show"), ("set", "set"), ("clear", "remove")):
        parser = policy_verbs.add_parser(verb, help=f"{text} a project's policy")
        parser.add_argument("--project", required=True)
        parser.add_argument("--json", action="store_true")
        if verb == "set":
            parser.add_argument(
                "--block-severity",
                required=True,
                type=str.upper,
                choices=SEVERITIES,
                help=f"refuse pulls of images with findings this severe or worse "
                f"({' > '.join(SEVERITIES)}; groups: {', '.join(GROUPS)})",
            )


def handles(args: argparse.Namespace) -> bool:
    """Whether `args` is one of the commands here (not `scan` alone, which runs scan_svc)."""
    return args.command == "scan" and getattr(args, "scan_command", None) is not None


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run a `scan` command; the exit status."""
    try:
        if args.scan_command == "db" and args.db_command == "import":
            output = _db_import(settings, args)
        elif args.scan_command == "db":
            output = asyncio.run(_db_status(settings, args))
        else:
            output = asyncio.run(_ASYNC[args.scan_command](settings, args))
    except RegistryError as err:
        print(f"error: {err.reason}: {err.message}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0
