"""The data the site is rendered from: the contract between the database and the renderer.

The database layer (``piwheels.db.projects``) returns these frozen dataclasses; the renderer
(:mod:`piwheels.web.render`) and the writer (:mod:`piwheels.web.writer`) read them and nothing
else.  They hold plain values only (no database rows, no sessions), so a page can be rendered in
any thread or process.

Values that come from upstream (display names, summaries, versions, yank reasons, requirement
strings) are kept as they are and escaped by the renderer.  Values that become *paths* on disk
(the canonical name, aliases, file names, hashes) are checked here, so a hostile value cannot
reach the file system: a bad one raises :class:`~piwheels.errors.InvalidName` or
:class:`~piwheels.errors.InvalidWheel` naming it.

Datetimes should be timezone-aware; a naive one is taken to be UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from piwheels.errors import InvalidName, InvalidWheel

#: PEP 792 project statuses.
ProjectStatus = Literal["active", "archived", "quarantined", "deprecated"]
PROJECT_STATUSES: frozenset[str] = frozenset({"active", "archived", "quarantined", "deprecated"})

#: What happened to one version on one builder ABI.
BuildStatus = Literal["built", "failed", "skipped", "pending", "building"]
BUILD_STATUSES: frozenset[str] = frozenset({"built", "failed", "skipped", "pending", "building"})

_CANONICAL_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# A name as PyPI accepts it (PEP 508 identifier); every alias must be one of these.
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# Wheel file names that are safe as a path component and in a URL without quoting surprises.
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!~-]*\.whl$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def canonicalize(name: str) -> str:
    """The PEP 503 normalized form of *name*."""
    return re.sub(r"[-_.]+", "-", name).lower()


def check_canonical(name: str) -> str:
    """Return *name* if it is a PEP 503 normalized project name; else raise InvalidName."""
    if not isinstance(name, str) or len(name) > 200 or not _CANONICAL_RE.match(name):
        raise InvalidName(f"not a canonical project name: {name!r:.80}")
    return name


def check_filename(filename: str) -> str:
    """Return *filename* if it is a safe wheel file name; else raise InvalidWheel."""
    if not isinstance(filename, str) or len(filename) > 255 or not _FILENAME_RE.match(filename):
        raise InvalidWheel(f"not a servable wheel file name: {filename!r:.80}")
    return filename


def check_sha256(value: str, what: str = "sha256") -> str:
    """Return *value* if it is 64 lower-case hex digits; else raise InvalidWheel."""
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise InvalidWheel(f"{what} is not a lower-case hex SHA-256: {value!r:.80}")
    return value


_T = TypeVar("_T")


def unchecked_maker(cls: type[_T]) -> Callable[..., _T]:
    """A fast constructor of the dataclass *cls* that skips its ``__post_init__`` checks.

    It takes every field positionally, in declaration order, and no defaults.  Only for
    values read back from this project's own database, which checked them where they came
    in (file names, hashes and sizes in :mod:`piwheels.db.files`, statuses by the schema's
    constraints): the bulk loader builds some 90 of these per project, and the checks
    cost more than the rest of its Python work.  The result equals what ``cls(...)`` makes.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for name in names:
        if not name.isidentifier():  # pragma: no cover - a dataclass field always is
            raise ValueError(f"not a field name: {name!r}")
    args = ", ".join(f"v{i}" for i in range(len(names)))
    items = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names))
    # Generated like dataclasses' own __init__: one dict display is half the cost of
    # zipping names and values.  The instance dict is filled directly because a frozen
    # dataclass refuses setattr.  A wrong count of values raises TypeError.
    source = (
        f"def make({args}):\n"
        "    obj = new(cls)\n"
        f"    obj.__dict__.update({{{items}}})\n"
        "    return obj\n"
    )
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    exec(source, scope)  # the source is made from the dataclass's own field names only
    make: Callable[..., _T] = scope["make"]
    return make


@dataclass(frozen=True)
class AbiStatus:
    """The build status of one version for one builder ABI (e.g. ``cp311``).

    ``log_url`` may be left ``None``: the renderer then links ``build_id``'s log at its
    standard place (see :func:`piwheels.web.layout.log_url`).
    """

    status: BuildStatus
    build_id: int | None = None
    log_url: str | None = None
    reason: str | None = None  # why it was skipped or failed, in a few words
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        if self.status not in BUILD_STATUSES:
            raise ValueError(f"unknown build status: {self.status!r:.40}")
        if self.build_id is not None and (not isinstance(self.build_id, int) or self.build_id < 0):
            raise ValueError(f"build id must be a non-negative integer: {self.build_id!r:.40}")


@dataclass(frozen=True)
class FileData:
    """One wheel served for a version.

    ``upload_time`` is when the file was published *here* (PEP 700 ``upload-time``).
    ``builder_abis`` lists the builder ABIs this file serves (a ``py3-none-any`` wheel built
    once may serve several).  ``import_ok`` is the import test: True passed, False failed
    (``import_error`` says how, ``missing_libraries`` names shared libraries not found),
    None not tested.  ``pip_dependencies`` are PEP 508 requirement strings, markers included.
    """

    filename: str
    size: int
    sha256: str
    upload_time: datetime
    abi_tag: str
    platform_tag: str
    requires_python: str | None = None
    metadata_sha256: str | None = None  # sha256 of the .metadata file; None if not served
    builder_abis: tuple[str, ...] = ()
    import_ok: bool | None = None
    import_error: str | None = None
    missing_libraries: tuple[str, ...] = ()
    apt_dependencies: tuple[str, ...] = ()
    pip_dependencies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_filename(self.filename)
        check_sha256(self.sha256, f"sha256 of {self.filename}")
        if self.metadata_sha256 is not None:
            check_sha256(self.metadata_sha256, f"metadata sha256 of {self.filename}")
        if not isinstance(self.size, int) or self.size < 0:
            raise InvalidWheel(f"size of {self.filename} is not a non-negative integer")
        if not isinstance(self.upload_time, datetime):
            raise InvalidWheel(f"upload time of {self.filename} is not a datetime")


@dataclass(frozen=True)
class VersionData:
    """One release of a project, with its per-ABI build status and its files.

    ``skip_reason`` is set when the version is not built at all (e.g. "binary only").
    ``builds`` maps builder ABI -> :class:`AbiStatus`.
    """

    version: str
    released: datetime | None = None
    yanked: bool = False
    yank_reason: str | None = None
    prerelease: bool = False
    skip_reason: str | None = None
    builds: Mapping[str, AbiStatus] = field(default_factory=dict)
    files: tuple[FileData, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version:
            raise InvalidName(f"empty or non-text version: {self.version!r:.80}")


@dataclass(frozen=True)
class ProjectData:
    """Everything about one project that its pages show.

    ``name`` is the PEP 503 canonical name (also the directory name); ``display_name`` the
    spelling upstream uses.  ``aliases`` are other spellings seen (each must canonicalize to
    ``name``).  ``versions`` are newest first (PEP 440 order, decided by the database layer).
    ``abis`` are the builder ABI columns for the project page in display order; when empty the
    renderer uses the ABIs that appear in ``builds``, ordered by Python version.
    ``upstream_url`` is the project's page on the upstream index, if known (shown as a link);
    ``tracks_url`` its simple-index URL there, published as PEP 708 ``tracks``.
    """

    name: str
    display_name: str
    summary: str = ""
    status: ProjectStatus = "active"
    status_reason: str | None = None
    aliases: tuple[str, ...] = ()
    versions: tuple[VersionData, ...] = ()
    downloads_30d: int = 0
    downloads_all: int = 0
    upstream_url: str | None = None
    skip_reason: str | None = None  # the whole project is not built (e.g. "binary only")
    abis: tuple[str, ...] = ()
    tracks_url: str | None = None  # PEP 708: this project's simple page on the upstream index

    def __post_init__(self) -> None:
        check_canonical(self.name)
        if self.status not in PROJECT_STATUSES:
            raise ValueError(f"{self.name}: unknown project status {self.status!r:.40}")
        for alias in self.aliases:
            if not isinstance(alias, str) or not _NAME_RE.match(alias) or len(alias) > 200:
                raise InvalidName(f"{self.name}: bad alias {alias!r:.80}")
            if canonicalize(alias) != self.name:
                raise InvalidName(f"{self.name}: alias {alias!r:.80} is another project")
        seen: set[str] = set()
        for version in self.versions:
            for f in version.files:
                if f.filename in seen:
                    raise InvalidWheel(f"{self.name}: file {f.filename} listed twice")
                seen.add(f.filename)

    @property
    def files(self) -> list[FileData]:
        """Every file of every version, newest version first."""
        return [f for v in self.versions for f in v.files]

    @property
    def offers_files(self) -> bool:
        """False for a quarantined project: PEP 792 says the index offers none of its files."""
        return self.status != "quarantined"


@dataclass(frozen=True)
class SearchEntry:
    """One row of the search index: a package and its download counts."""

    name: str
    downloads_30d: int = 0
    downloads_all: int = 0


@dataclass(frozen=True)
class HomeStats:
    """The live figures on the home page."""

    packages_built: int = 0
    wheels: int = 0
    downloads_all: int = 0
    downloads_30d: int = 0
    time_saved: timedelta = timedelta(0)
    builds_last_hour: int = 0
    packages_total: int = 0
    updated: datetime | None = None


@dataclass(frozen=True)
class BuildLog:
    """A build's log and what it was a build of."""

    build_id: int
    text: str
    package: str = ""
    version: str = ""
    abi: str = ""
    status: BuildStatus = "failed"
    started: datetime | None = None
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.build_id, int) or self.build_id < 0:
            raise ValueError(f"build id must be a non-negative integer: {self.build_id!r:.40}")
