"""Generate the Python code for every contract in protos/ into artifactstore/<svc>/v1/.

Proto paths equal packages (protos/artifactstore/<svc>/v1/<svc>.proto is
artifactstore.<svc>.v1), so the generated imports need no rewriting.

    python scripts/gen_protos.py          regenerate in place
    python scripts/gen_protos.py --check  fail if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
INIT = '"""Generated from protos/; regenerate with `make protos`."""\n'


def generate(out: Path) -> list[Path]:
    """Compile every .proto under protos/ into `out`; return the generated files."""
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    include = resources.files("grpc_tools") / "_proto"
    # mypy-protobuf's plugins are installed beside this interpreter, not necessarily on PATH.
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = [p for p in out.rglob("*") if p.is_file()]
    # Every package below artifactstore/ (artifactstore/<svc>/ and its v1/) is generated;
    # artifactstore/__init__.py itself is hand-written plumbing.
    packages = {d for p in generated for d in p.relative_to(out).parents if len(d.parts) >= 2}
    for pkg in packages:
        init = out / pkg / "__init__.py"
        if not init.exists():
            init.write_text(INIT)
            generated.append(init)
    return sorted(generated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stale = []
        for path in generate(out):
            rel = path.relative_to(out)
            target = ROOT / rel
            if target.exists() and filecmp.cmp(path, target, shallow=False):
                continue
            stale.append(rel.as_posix())
            if not check:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    if check and stale:
        print("generated code is stale; run `make protos`:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
