"""What is installed in an unpacked image: the OS and its packages, language packages.

Readers (paths image-relative, as in Trivy's `PkgPath`):

* OS: `etc/os-release`, else `usr/lib/os-release` — `ID` as the family, `VERSION_ID`.
* dpkg: `var/lib/dpkg/status` (only packages whose Status says installed) and the
  distroless `var/lib/dpkg/status.d/*` stanzas (which carry no Status); binary name and
  version, and the source package with its version — `Source: gcc-defaults (1.203)` names
  its own version; without one the source version is the binary version less a binary-NMU
  `+bN` suffix. File lists: `var/lib/dpkg/info/*.list`.
* apk: `lib/apk/db/installed` — `P:` name, `V:` version, `o:` origin (the source package
  that Alpine's advisories name), `F:`/`R:` file lists.
* Python: `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` and `*.egg-info` files under
  `site-packages`, `dist-packages` or a `lib/python*` directory.
* npm: `package.json` of a package directory (`…/node_modules/[@scope/]name/` or
  `usr/share/nodejs/[@scope/]name/`) with a string name and version.
* Go: executables (ELF with an execute bit) carrying Go 1.18+ build information: the
  toolchain as the `stdlib` module (version without `go`), and every dependency module.

Language packages whose metadata file belongs to an OS package (listed in a dpkg `.list`
file or an apk `R:` line) are dropped unless asked for: the distribution's advisories cover
them, and their version strings hide the distribution's backported fixes (Trivy's default;
its `--detection-priority comprehensive` keeps them).

Each package records the layer that last wrote the file it was read from.
"""

from __future__ import annotations

import json
import mmap
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.parser import HeaderParser

from . import gobinary
from .errors import AnalysisError
from .unpack import RootFS, Want, is_executable
from .versions import semantic

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d/"
DPKG_INFO = "var/lib/dpkg/info/"
APK_INSTALLED = ("lib/apk/db/installed", "usr/lib/apk/db/installed")

_PYTHON_TREE = re.compile(r"(^|/)(site-packages|dist-packages|lib/python[^/]*)/")
_NODE_PACKAGE = re.compile(
    r"(^|/)(node_modules|usr/share/nodejs)/(@[^/]+/)?[^/@][^/]*/package\.json$"
)
_BINNMU = re.compile(r"\+b\d+$")
_FIELD = re.compile(r"^([!-9;-~][!-9;-~]*):(.*)$")  # dpkg field names: printable, no colon


@dataclass(frozen=True)
class OSInfo:
    """The image's operating system as os-release describes it."""

    family: str
    version_id: str
    pretty_name: str = ""


@dataclass(frozen=True)
class Package:
    """One installed package.

    `ecosystem` is the OSV ecosystem it is matched in: `Debian:12`, `Alpine:v3.19`, `PyPI`,
    `npm`, `Go`. For OS packages `source_name`/`source_version` are what advisories name.
    `path` is the file the package was read from, `layer` that file's layer digest, and
    `os_owned` tells whether an OS package's file list contains that file.
    """

    name: str
    version: str
    ecosystem: str
    type: str
    path: str
    layer: str
    source_name: str = ""
    source_version: str = ""
    os_owned: bool = False


@dataclass(frozen=True)
class Inventory:
    """The OS (None when no os-release was found) and the packages, sorted."""

    os: OSInfo | None
    packages: tuple[Package, ...]


def select(path: str, member: tarfile.TarInfo) -> Want:
    """The unpack selector: which regular files the readers above need."""
    if path in OS_RELEASE or path == DPKG_STATUS or path in APK_INSTALLED:
        return Want.EXTRACT
    if path.startswith(DPKG_STATUS_D):
        return Want.EXTRACT
    if path.startswith(DPKG_INFO) and path.endswith(".list") and "/" not in path[len(DPKG_INFO) :]:
        return Want.EXTRACT
    if _is_python_metadata(path) or _NODE_PACKAGE.search(path):
        return Want.EXTRACT
    if is_executable(member):
        return Want.EXTRACT_IF_ELF
    return Want.SKIP


def _is_python_metadata(path: str) -> bool:
    if not _PYTHON_TREE.search(path):
        return False
    parent, _, base = path.rpartition("/")
    if base == "METADATA" and parent.endswith(".dist-info"):
        return True
    if base == "PKG-INFO" and parent.endswith(".egg-info"):
        return True
    return base.endswith(".egg-info")  # a single-file egg-info is PKG-INFO itself


# -- OS ---------------------------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), quotes and backslash escapes removed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key.strip()] = value
    return values


def read_os(fs: RootFS) -> OSInfo | None:
    """The OS of the image from its os-release file, or None when there is none."""
    for path in OS_RELEASE:
        data = fs.read_bytes(path)
        if data is not None:
            values = parse_os_release(data.decode("utf-8", "replace"))
            return OSInfo(
                family=values.get("ID", "").lower(),
                version_id=values.get("VERSION_ID", ""),
                pretty_name=values.get("PRETTY_NAME", ""),
            )
    return None


def os_ecosystem(info: OSInfo | None) -> str:
    """The OSV ecosystem of the OS packages: `Debian:12`, `Ubuntu:22.04`, `Alpine:v3.19`
    (Alpine's releases are named by major.minor with a `v`); "" when unknown."""
    if info is None:
        return ""
    if info.family == "alpine":
        major_minor = ".".join(info.version_id.split(".")[:2])
        return f"Alpine:v{major_minor}" if major_minor else "Alpine"
    if info.family in ("debian", "ubuntu"):
        name = info.family.capitalize()
        return f"{name}:{info.version_id}" if info.version_id else name
    return info.family


# -- dpkg -------------------------------------------------------------------------------------


def parse_control(text: str, where: str) -> list[dict[str, str]]:
    """Stanzas of a deb822 file (dpkg status): `Field: value` lines, continuation lines
    starting with whitespace, blank lines between stanzas. AnalysisError on any other line,
    naming the file and line number."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t":
            if not last:
                raise AnalysisError(f"{where}: line {number}: continuation without a field")
            current[last] += "\n" + line.strip()
            continue
        m = _FIELD.match(line)
        if m is None:
            raise AnalysisError(f"{where}: line {number}: not a 'Field: value' line")
        last = m.group(1)
        current[last] = m.group(2).strip()
    if current:
        stanzas.append(current)
    return stanzas


def _dpkg_source(stanza: dict[str, str]) -> tuple[str, str]:
    name, version = stanza["Package"], stanza["Version"]
    source = stanza.get("Source", "").strip()
    if not source:
        return name, _BINNMU.sub("", version)
    m = re.match(r"^(\S+)\s*(?:\((.+)\))?$", source)
    if m is None:
        return source, _BINNMU.sub("", version)
    return m.group(1), (m.group(2) or _BINNMU.sub("", version)).strip()


def _dpkg_packages(fs: RootFS, path: str, ecosystem: str, need_status: bool) -> list[Package]:
    data = fs.read_bytes(path)
    if data is None:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AnalysisError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    layer = fs.layer_of(path)
    out = []
    for stanza in parse_control(text, path):
        status = stanza.get("Status", "").split()
        # "install ok installed", and "hold ok installed" (held packages are installed too);
        # distroless status.d stanzas have no Status at all.
        if (need_status or status) and (len(status) != 3 or status[2] != "installed"):
            continue
        if "Package" not in stanza or "Version" not in stanza:
            raise AnalysisError(f"{path}: an installed package without Package or Version")
        source_name, source_version = _dpkg_source(stanza)
        out.append(
            Package(
                name=stanza["Package"],
                version=stanza["Version"],
                ecosystem=ecosystem,
                type="dpkg",
                path=path,
                layer=layer,
                source_name=source_name,
                source_version=source_version,
            )
        )
    return out


def read_dpkg(fs: RootFS, ecosystem: str) -> list[Package]:
    """Installed dpkg packages from the status file and status.d (distroless)."""
    packages = _dpkg_packages(fs, DPKG_STATUS, ecosystem, need_status=True)
    for path in fs.files():
        if path.startswith(DPKG_STATUS_D) and not path.endswith(".md5sums"):
            packages.extend(_dpkg_packages(fs, path, ecosystem, need_status=False))
    return packages


def dpkg_owned_files(fs: RootFS) -> set[str]:
    """Every path listed in `var/lib/dpkg/info/*.list`, resolved inside the image."""
    owned: set[str] = set()
    for path in fs.files():
        if path.startswith(DPKG_INFO) and path.endswith(".list"):
            data = fs.read_bytes(path) or b""
            for line in data.decode("utf-8", "replace").splitlines():
                listed = line.strip().lstrip("/")
                if listed:
                    owned.add(fs.resolve(listed) or listed)
    return owned


# -- apk --------------------------------------------------------------------------------------


def read_apk(fs: RootFS, ecosystem: str) -> tuple[list[Package], set[str]]:
    """Installed apk packages and the files they own, from the installed database."""
    for path in APK_INSTALLED:
        data = fs.read_bytes(path)
        if data is not None:
            break
    else:
        return [], set()
    layer = fs.layer_of(path)
    packages: list[Package] = []
    owned: set[str] = set()
    record: dict[str, str] = {}
    directory = ""

    def flush() -> None:
        if not record:
            return
        if "P" not in record or "V" not in record:
            raise AnalysisError(f"{path}: a package without P: or V:")
        packages.append(
            Package(
                name=record["P"],
                version=record["V"],
                ecosystem=ecosystem,
                type="apk",
                path=path,
                layer=layer,
                source_name=record.get("o", record["P"]),
                source_version=record["V"],
            )
        )

    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            flush()
            record, directory = {}, ""
            continue
        if len(line) < 2 or line[1] != ":":
            raise AnalysisError(f"{path}: line {number}: not a 'X:value' line")
        key, value = line[0], line[2:]
        if key == "F":
            directory = value.strip("/")
        elif key == "R":
            owned.add(fs.resolve(f"{directory}/{value}") or f"{directory}/{value}")
        else:
            record.setdefault(key, value)
    flush()
    return packages, owned


# -- languages --------------------------------------------------------------------------------


def _python_packages(fs: RootFS) -> Iterator[Package]:
    for path in fs.files():
        if not _is_python_metadata(path):
            continue
        data = fs.read_bytes(path) or b""
        headers = HeaderParser().parsestr(data.decode("utf-8", "replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if not name or not version:
            continue  # not metadata after all (a stray file named like one)
        yield Package(
            str(name).strip(), str(version).strip(), "PyPI", "python", path, fs.layer_of(path)
        )


def _npm_packages(fs: RootFS) -> Iterator[Package]:
    for path in fs.files():
        if not _NODE_PACKAGE.search(path):
            continue
        try:
            manifest = json.loads(fs.read_bytes(path) or b"")
        except ValueError:
            continue  # a broken package.json is not an installed package we can name
        if not isinstance(manifest, dict):
            continue
        name, version = manifest.get("name"), manifest.get("version")
        if isinstance(name, str) and isinstance(version, str) and name and version:
            yield Package(name, version, "npm", "npm", path, fs.layer_of(path))


def _go_packages(fs: RootFS) -> Iterator[Package]:
    for path in fs.files():
        disk = fs.disk_path(path)
        if disk is None or disk.stat().st_size < 64:
            continue
        with open(disk, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
            # Mapped, not read: Go binaries run to hundreds of MB and only a few KB matter.
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                info = gobinary.read_buildinfo(data)
        if info is None:
            continue
        layer = fs.layer_of(path)
        toolchain = semantic.normalize_go(info.go_version)
        yield Package("stdlib", toolchain, "Go", "gobinary", path, layer)
        for dep in info.deps:
            yield Package(dep.path, dep.version.removeprefix("v"), "Go", "gobinary", path, layer)


def _owned(path: str, owned: set[str]) -> bool:
    """True when the metadata file or its package directory is in an OS file list."""
    if path in owned:
        return True
    parent = path.rpartition("/")[0]
    return parent.endswith((".dist-info", ".egg-info")) and parent in owned


def collect(fs: RootFS, include_os_owned: bool = False) -> Inventory:
    """Read every package of the unpacked image `fs`.

    With `include_os_owned` False (the default), language packages owned by an OS package
    are dropped (see the module docstring). Raises AnalysisError for a corrupt dpkg or apk
    database.
    """
    info = read_os(fs)
    ecosystem = os_ecosystem(info)
    packages: list[Package] = []
    owned: set[str] = set()
    if fs.resolve(DPKG_STATUS) in fs.origin or any(p.startswith(DPKG_STATUS_D) for p in fs.origin):
        packages.extend(read_dpkg(fs, ecosystem or "Debian"))
        owned |= dpkg_owned_files(fs)
    apk_packages, apk_owned = read_apk(fs, ecosystem or "Alpine")
    packages.extend(apk_packages)
    owned |= apk_owned
    for lang in (_python_packages(fs), _npm_packages(fs), _go_packages(fs)):
        for package in lang:
            is_owned = _owned(package.path, owned)
            if is_owned and not include_os_owned:
                continue
            packages.append(replace(package, os_owned=is_owned))
    packages.sort(key=lambda p: (p.type, p.name, p.version, p.path))
    return Inventory(info, tuple(packages))
