"""What the upstream index says, parsed: the root listing and project pages.

These are plain frozen records plus the pure functions that build them from
the JSON simple API (PEP 691, 700, 792) and classify distribution file names.
The HTTP client and the local-folder upstream both produce them, so the
follower does not care where they came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from packaging.utils import canonicalize_version

from piwheels.errors import InvalidName
from piwheels.upstream.faults import InvalidResponse

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
# Longer names or versions than this are refused: nothing real is that long and
# the database and file system should not have to find out.
MAX_NAME = 200
MAX_VERSION = 200
MAX_FILENAME = 400
STATUSES = frozenset({"active", "archived", "quarantined", "deprecated"})
SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".tbz", ".txz")

_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_SEP_RE = re.compile(r"[-_.]+")
_CANON_RE = re.compile(r"^[a-z0-9](?:-?[a-z0-9])*$")

FileKind = Literal["sdist", "wheel", "other"]


def canonical_name(name: str) -> str:
    """The PEP 503 form of *name*; :class:`InvalidName` if it is not a valid name."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"invalid project name {name!r}: empty or not a string")
    if len(name) > MAX_NAME:
        raise InvalidName(f"invalid project name {name[:40]!r}...: longer than {MAX_NAME}")
    if not _NAME_RE.match(name):
        raise InvalidName(f"invalid project name {name!r}: not a PEP 508 name")
    return _SEP_RE.sub("-", name).lower()


def version_key(version: str) -> str:
    """A key under which equal versions (``1.0`` and ``1.0.0``) meet; lenient."""
    return canonicalize_version(version)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One distribution file of a project page."""

    filename: str
    url: str
    version: str  # as spelled in the file name
    kind: FileKind
    sha256: str | None = None
    requires_python: str | None = None
    yanked: bool = False
    yank_reason: str | None = None
    upload_time: datetime | None = None
    size: int | None = None
    # Compressed wheel tags ("cp311-cp311-manylinux_2_17_aarch64"); empty otherwise.
    tags: str = ""


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project page of the simple API, optionally with the project JSON's details."""

    name: str  # canonical
    serial: int | None
    files: tuple[FileInfo, ...] = ()
    versions: tuple[str, ...] | None = None  # PEP 700; None when not offered
    status: str = "active"
    status_reason: str | None = None
    display_name: str | None = None  # a spelling of the name, if the upstream says one
    summary: str | None = None
    rejected: tuple[str, ...] = ()  # file names or versions refused as invalid


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    """The bits of the project JSON (``/pypi/<name>/json``) the follower wants."""

    name: str  # the display spelling
    summary: str | None
    serial: int | None = None


@dataclass(slots=True)
class RootIndex:
    """The root listing: every project with its last serial."""

    serial: int | None  # the index's global serial (X-PyPI-Last-Serial)
    projects: dict[str, int]  # canonical name -> last serial
    spellings: dict[str, str] = field(default_factory=dict)  # only where not canonical
    rejected: list[str] = field(default_factory=list)  # names refused, as seen
    etag: str | None = None

    @property
    def target_serial(self) -> int:
        """The serial a complete pass over this root reaches."""
        if self.serial is not None:
            return self.serial
        return max(self.projects.values(), default=0)


def classify_filename(filename: str, project: str) -> tuple[FileKind, str, str]:
    """(kind, version, tags) of *filename* in canonical *project*.

    Raises :class:`ValueError` for a name that is not a distribution of *project*
    or is unsafe (path parts, control characters, too long).
    """
    if (
        not filename
        or len(filename) > MAX_FILENAME
        or "/" in filename
        or "\\" in filename
        or filename.startswith(".")
        or not filename.isprintable()
    ):
        raise ValueError(f"unsafe file name {filename[:80]!r}")
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        if len(parts) not in (5, 6) or not all(parts):
            raise ValueError(f"invalid wheel name {filename!r}")
        if _SEP_RE.sub("-", parts[0]).lower() != project:
            raise ValueError(f"wheel {filename!r} is not of project {project!r}")
        return "wheel", parts[1], "-".join(parts[-3:])
    lower = filename.lower()
    for suffix in SDIST_SUFFIXES:
        if lower.endswith(suffix):
            stem, kind = filename[: -len(suffix)], "sdist"
            break
    else:
        # Eggs, Windows installers and other old formats: not buildable, but
        # they still make a release exist.
        stem, _, _ = filename.rpartition(".")
        kind = "other"
        if stem.endswith(("-py2", "-py3")) or re.search(r"-py\d\.\d+$", stem):
            stem = stem.rsplit("-", 1)[0]
        stem = re.sub(r"\.(win32|win-amd64|linux-\w+|macosx-[\w.-]+)$", "", stem)
    # The name part may itself contain "-": find the split whose left side is
    # the project, so "foo-bar-1.0" in project "foo-bar" gives "1.0".
    for i, char in enumerate(stem):
        if char == "-" and _SEP_RE.sub("-", stem[:i]).lower() == project:
            version = stem[i + 1 :]
            if version and len(version) <= MAX_VERSION:
                return kind, version, ""  # type: ignore[return-value]
            break
    raise ValueError(f"file {filename!r} is not a distribution of {project!r}")


def parse_time(value: Any) -> datetime | None:
    """An upload-time string (``2024-01-02T03:04:05.123Z``) as aware UTC; lenient."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _check_api_version(meta: Any, what: str, url: str | None) -> None:
    version = meta.get("api-version", "1.0") if isinstance(meta, dict) else "1.0"
    major = str(version).split(".", 1)[0]
    if major != "1":
        raise InvalidResponse(f"{what} has unsupported simple API version {version!r}", url=url)


def _serial(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_root(
    body: bytes, *, header_serial: int | None = None, url: str | None = None
) -> RootIndex:
    """Parse a JSON root listing; invalid entries go to ``rejected``, not an error."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidResponse(f"root listing is not valid JSON: {exc}", url=url)
    if not isinstance(doc, dict) or not isinstance(doc.get("projects"), list):
        raise InvalidResponse("root listing has no 'projects' list", url=url)
    meta = doc.get("meta")
    _check_api_version(meta, "root listing", url)
    serial = header_serial
    if serial is None and isinstance(meta, dict):
        serial = _serial(meta.get("_last-serial"))
    projects: dict[str, int] = {}
    spellings: dict[str, str] = {}
    rejected: list[str] = []
    entries = doc.pop("projects")
    canonical_match = _CANON_RE.match
    # Pop entries as we go so the parsed document is freed while the listing
    # is built: with 600,000 projects it is most of the memory a pass needs.
    while entries:
        entry = entries.pop()
        if type(entry) is not dict:
            rejected.append(repr(entry)[:80])
            continue
        name: Any = entry.get("name")
        value = entry.get("_last-serial")
        if type(name) is str and len(name) <= MAX_NAME and canonical_match(name):
            canon = name  # already canonical: the common case, and cheaper
        else:
            try:
                canon = canonical_name(name)
            except InvalidName:
                rejected.append(name if isinstance(name, str) else repr(name))
                continue
        if type(value) is int and value >= 0:
            project_serial = value
        elif value is None:
            # PEP 691 does not require _last-serial: fall back to the root's
            # serial, so every pass whose root moved looks at the project again.
            project_serial = serial if serial is not None else 0
        else:
            parsed = _serial(value)
            if parsed is None:
                rejected.append(name)
                continue
            project_serial = parsed
        old = projects.get(canon)
        if old is None or project_serial > old:
            projects[canon] = project_serial
            if name != canon:
                spellings[canon] = name
    rejected.reverse()
    return RootIndex(serial, projects, spellings, rejected)


def parse_project(
    body: bytes, name: str, *, header_serial: int | None = None, url: str | None = None
) -> ProjectPage:
    """Parse a JSON project page for canonical *name*."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidResponse(f"page of {name} is not valid JSON: {exc}", url=url)
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise InvalidResponse(f"page of {name} has no 'files' list", url=url)
    meta = doc.get("meta")
    _check_api_version(meta, f"page of {name}", url)
    serial = header_serial
    if serial is None and isinstance(meta, dict):
        serial = _serial(meta.get("_last-serial"))
    rejected: list[str] = []
    files = []
    for entry in doc["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            rejected.append(repr(entry)[:80])
            continue
        filename = entry["filename"]
        try:
            kind, version, tags = classify_filename(filename, name)
        except ValueError:
            rejected.append(filename[:80])
            continue
        hashes = entry.get("hashes")
        sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
        yanked = entry.get("yanked", False)
        requires = entry.get("requires-python")
        size = entry.get("size")
        file_url = entry.get("url")
        files.append(
            FileInfo(
                filename=filename,
                url=file_url if isinstance(file_url, str) else "",
                version=version,
                kind=kind,
                sha256=sha256 if isinstance(sha256, str) else None,
                requires_python=requires if isinstance(requires, str) and requires else None,
                yanked=bool(yanked),
                yank_reason=yanked if isinstance(yanked, str) and yanked else None,
                upload_time=parse_time(entry.get("upload-time")),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                tags=tags,
            )
        )
    versions: tuple[str, ...] | None = None
    raw_versions = doc.get("versions")
    if isinstance(raw_versions, list):
        good = []
        for version in raw_versions:
            if (
                isinstance(version, str)
                and 0 < len(version) <= MAX_VERSION
                and version.isprintable()
            ):
                good.append(version)
            else:
                rejected.append(repr(version)[:80])
        versions = tuple(good)
    status, reason = "active", None
    raw_status = doc.get("project-status")
    if isinstance(raw_status, dict):
        if raw_status.get("status") in STATUSES:
            status = raw_status["status"]
        reason_value = raw_status.get("reason")
        reason = reason_value if isinstance(reason_value, str) and reason_value else None
    return ProjectPage(
        name=name,
        serial=serial,
        files=tuple(files),
        versions=versions,
        status=status,
        status_reason=reason,
        rejected=tuple(rejected),
    )


def parse_info(body: bytes, *, url: str | None = None) -> ProjectInfo:
    """Parse the project JSON (``/pypi/<name>/json``): display name and summary."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidResponse(f"project JSON is not valid JSON: {exc}", url=url)
    info = doc.get("info") if isinstance(doc, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise InvalidResponse("project JSON has no info.name", url=url)
    raw = info.get("summary")
    # One line, bounded: it goes into listings, not a document.
    summary = (" ".join(raw.split())[:200] or None) if isinstance(raw, str) else None
    return ProjectInfo(name=info["name"], summary=summary, serial=_serial(doc.get("last_serial")))


def group_releases(page: ProjectPage) -> dict[str, list[FileInfo]]:
    """The page's files grouped by release version (the ``versions`` spelling if known)."""
    spelled: dict[str, str] = {}
    releases: dict[str, list[FileInfo]] = {}
    for version in page.versions or ():
        spelled.setdefault(version_key(version), version)
        releases.setdefault(version, [])
    for info in page.files:
        key = version_key(info.version)
        version = spelled.setdefault(key, info.version)
        releases.setdefault(version, []).append(info)
    return releases


def render_root(projects: Iterable[tuple[str, int]], serial: int) -> bytes:
    """A JSON root listing (used by the local-folder upstream and the stand-in server)."""
    return json.dumps(
        {
            "meta": {"api-version": "1.4", "_last-serial": serial},
            "projects": [{"name": name, "_last-serial": s} for name, s in projects],
        },
        separators=(",", ":"),
    ).encode()


def render_project(
    name: str,
    serial: int,
    files: Iterable[Mapping[str, Any]],
    versions: Iterable[str],
    **extra: Any,
) -> bytes:
    """A JSON project page (used by the stand-in server and the local-folder index)."""
    doc: dict[str, Any] = {
        "meta": {"api-version": "1.4", "_last-serial": serial},
        "name": name,
        "files": list(files),
        "versions": list(versions),
    }
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":")).encode()
