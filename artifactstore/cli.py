"""The `artifact-store` command: run the whole mesh or one service of it."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from artifactstore import metrics
from artifactstore.config import Settings

# Service name on the command line → (module with `async def main(settings)`, service.name).
SERVICES: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.server", "gateway"),
    "metadata": ("metadata_svc.server", "metadata_svc"),
    "blob": ("blob_svc.server", "blob_svc"),
    "scan": ("scan_svc.server", "scan_svc"),
    "gc": ("gc_svc.server", "gc_svc"),
}

# Background workers yield the CPU to the services that answer clients: scans and GC may
# lag behind a burst of pushes, but never slow it down.
BACKGROUND_NICENESS = {"scan": 10, "gc": 10}


def run_service(name: str, settings: Settings) -> None:
    """Run one service of the mesh in this process until it is told to stop."""
    from artifactstore import telemetry

    if name in BACKGROUND_NICENESS:
        os.nice(BACKGROUND_NICENESS[name])
    module_name, service_name = SERVICES[name]
    telemetry.setup(service_name, debug=settings.debug)
    metrics.serve_metrics(settings, name)
    main: Callable[[Settings], Coroutine[Any, Any, None]] = importlib.import_module(
        module_name
    ).main
    uvloop.run(main(settings))


def serve(settings: Settings) -> None:
    """Run every service as its own supervised process, each forked from this one."""
    from artifactstore import telemetry
    from artifactstore.supervisor import Supervisor

    # Logging only: a tracer provider set here would be inherited by every service.
    telemetry.setup_logging("supervisor", debug=settings.debug)
    service = Supervisor(settings).run()
    if service is not None:  # this process is a service forked from the supervisor
        run_service(service, Settings.from_env())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `artifact-store` console script."""
    words = sys.argv[1:] if argv is None else argv
    # The mesh's own processes (the supervisor and each service it starts) go straight to
    # their work: the modules of the other commands, which parsing needs, would cost each
    # of them about 20 MiB of memory.
    if len(words) == 1 and (words[0] == "serve" or words[0] in SERVICES):
        settings = Settings.from_env()
        if words[0] == "serve":
            serve(settings)
        else:
            run_service(words[0], settings)
        return
    _command(words)


def _command(words: list[str]) -> None:
    from artifactstore import gc_cli, iam_cli, scan_cli, trace_cli

    parser = argparse.ArgumentParser(
        prog="artifact-store",
        description="Artifact Store: an OCI registry over gRPC services. "
        "Configuration comes from the environment (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the whole mesh, each service a supervised process")
    for name, (_, service_name) in SERVICES.items():
        commands.add_parser(name, help=f"run {service_name} alone")
    iam_cli.add_parsers(commands)
    gc_cli.add_parsers(commands)
    scan_cli.add_parsers(commands)
    trace_cli.add_parsers(commands)
    args = parser.parse_args(words)
    settings = Settings.from_env()
    if args.command == "serve":
        serve(settings)
    elif args.command == "trace":
        sys.exit(trace_cli.run(args, os.environ.get("ARTS_TRACES_FILE", "")))
    elif gc_cli.handles(args):
        sys.exit(gc_cli.run(settings, args))
    elif args.command in {"iam", "audit"}:
        sys.exit(iam_cli.run(settings, args))
    elif scan_cli.handles(args):
        sys.exit(scan_cli.run(settings, args))
    else:
        run_service(args.command, settings)


if __name__ == "__main__":
    main()
