"""Every table of the piwheels database, declared once (SQLAlchemy Core).

The migrations in ``sql/versions`` build exactly this; a test compares the
two.  Every table and column carries a comment, which lands in PostgreSQL
(``\\d+`` shows it), so the database documents itself.

Conventions:

* Projects are keyed by their PEP 503 canonical name (``packages.name``);
  every spelling seen is an alias.
* A *build target* (``abis.abi``) is one Python ABI on one platform, named
  ``<abi_tag>-<platform_tag>`` (e.g. ``cp311-linux_armv7l``).  Targets are
  ordered by ``py_major, py_minor`` (never by the string).
* Versions keep the upstream string and a binary PEP 440 sort key
  (:func:`piwheels.db.versions.sort_key`) so ``ORDER BY sort_key`` is PEP 440
  order in SQL; legacy strings sort below every valid version.
* Hit tables (downloads, searches, ...) are append-only and time-indexed with
  BRIN; statistics read the daily rollups, not the raw rows.  No raw client
  address is stored: ``client`` is a salted hash or a network prefix.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.sql.elements import TextClause

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

#: Schema version this code expects (the newest alembic revision).
SCHEMA_VERSION = "0005"

#: Longest project name and version string stored (PyPI's own limits are lower).
MAX_NAME = 200
MAX_VERSION = 200

PROJECT_STATUSES = ("active", "archived", "quarantined", "deprecated")
BUILD_STATUSES = ("pending", "building", "success", "failed")
FAILURE_CLASSES = (
    "compile_error",
    "timeout",
    "builder_lost",
    "dependency_missing",
    "disk_full",
    "memory",
    "import_failed",
    "invalid_wheel",
    "other",
)
#: Failures that say nothing about the package: retried with backoff.
TRANSIENT_FAILURES = ("timeout", "builder_lost", "disk_full")
DEPENDENCY_TOOLS = ("apt", "pip", "missing-lib")
CLIENT_KINDS = ("pip", "uv", "direct", "bot", "other")
IMPORT_TESTS = ("untested", "passed", "failed")
EXCLUSION_KINDS = ("requires_python", "upstream_wheel", "skip")
REWRITE_KINDS = ("simple", "project", "both")
ROLLUP_SOURCES = ("download", "search", "project", "json", "web")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> TextClause:
    return text("now()")


# ---------------------------------------------------------------------------
# Configuration and upstream state

configuration = Table(
    "configuration",
    metadata,
    Column("id", SmallInteger, primary_key=True, comment="Always 1: a single-row table"),
    Column("schema_version", Text, nullable=False, comment="Schema revision of this database"),
    Column(
        "max_attempts",
        SmallInteger,
        nullable=False,
        server_default=text("3"),
        comment="Attempts per version and target before transient failures stop being retried",
    ),
    Column(
        "retry_base",
        Interval,
        nullable=False,
        server_default=text("'00:10:00'::interval"),
        comment="Backoff after the first transient failure; doubles with each attempt",
    ),
    Column(
        "build_when_upstream_wheel",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="Build versions even when upstream already ships a wheel serving the target",
    ),
    Column(
        "demand_days",
        SmallInteger,
        nullable=False,
        server_default=text("30"),
        comment="Days of downloads and index hits that make up a package's demand",
    ),
    CheckConstraint("id = 1", name="single_row"),
    comment="Settings kept with the data: schema version and build-queue policy",
)

upstream_state = Table(
    "upstream_state",
    metadata,
    Column("id", SmallInteger, primary_key=True, comment="Always 1: a single-row table"),
    Column(
        "last_serial",
        BigInteger,
        nullable=False,
        server_default=text("0"),
        comment="Highest upstream event serial fully processed",
    ),
    Column("updated_at", DateTime(timezone=True), nullable=True, comment="When last_serial moved"),
    Column(
        "todo_serial",
        BigInteger,
        nullable=True,
        comment="Serial the unfinished pass reaches once upstream_todo is empty; NULL if none",
    ),
    CheckConstraint("id = 1", name="single_row"),
    CheckConstraint("last_serial >= 0", name="serial_positive"),
    comment="Where the upstream watcher is in the upstream event log",
)

upstream_todo = Table(
    "upstream_todo",
    metadata,
    Column("package", Text, primary_key=True, comment="Canonical project name to look at"),
    Column(
        "serial",
        BigInteger,
        nullable=False,
        comment="Serial the root listing promised for it; -1 when it left the root",
    ),
    comment="Projects the unfinished upstream pass still has to look at (resumed on restart)",
)

upstream_removals = Table(
    "upstream_removals",
    metadata,
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column(
        "version",
        Text,
        nullable=False,
        comment="Version upstream deleted; empty when the whole project was deleted",
    ),
    Column(
        "requested_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When upstream's deletion was seen",
    ),
    PrimaryKeyConstraint("package", "version"),
    comment="Upstream deletions whose builds, pages and files are still to be removed",
)

# ---------------------------------------------------------------------------
# Projects and versions

packages = Table(
    "packages",
    metadata,
    Column("name", Text, primary_key=True, comment="PEP 503 canonical project name"),
    Column(
        "display_name", Text, nullable=False, comment="Spelling upstream uses now (latest seen)"
    ),
    Column("summary", Text, nullable=False, server_default="", comment="Upstream one-line summary"),
    Column(
        "skip_reason",
        Text,
        nullable=False,
        server_default="",
        comment="Why no version of this project is built; empty means build",
    ),
    Column(
        "status",
        Text,
        nullable=False,
        server_default="active",
        comment="PEP 792 project status: active, archived, quarantined or deprecated",
    ),
    Column(
        "status_reason", Text, nullable=False, server_default="", comment="PEP 792 status reason"
    ),
    Column(
        "added_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When this project was first recorded here",
    ),
    Column(
        "removed_at",
        DateTime(timezone=True),
        nullable=True,
        comment="When upstream deleted the project (files still to be unpublished); NULL if live",
    ),
    Column(
        "priority",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="Manual bump: higher builds before demand ordering applies",
    ),
    Column(
        "demand",
        BigInteger,
        nullable=False,
        server_default=text("0"),
        comment="Downloads plus index hits over configuration.demand_days (from the rollups)",
    ),
    Column(
        "upstream_serial",
        BigInteger,
        nullable=False,
        server_default=text("0"),
        comment="Upstream serial of the last change to this project that was processed",
    ),
    CheckConstraint(f"char_length(name) BETWEEN 1 AND {MAX_NAME}", name="name_length"),
    CheckConstraint(_in("status", PROJECT_STATUSES), name="status"),
    comment="Projects known upstream, one row per canonical name",
)

package_aliases = Table(
    "package_aliases",
    metadata,
    Column("alias", Text, primary_key=True, comment="A spelling of the name as seen upstream"),
    Column(
        "package",
        Text,
        ForeignKey("packages.name", ondelete="CASCADE"),
        nullable=False,
        comment="Canonical name the alias belongs to",
    ),
    Column(
        "first_seen",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When this spelling was first seen",
    ),
    Column(
        "last_seen",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When this spelling was last seen",
    ),
    Index(None, "package", "last_seen"),
    comment="Every spelling of every project name ever seen",
)

versions = Table(
    "versions",
    metadata,
    Column(
        "package",
        Text,
        ForeignKey("packages.name", ondelete="CASCADE"),
        nullable=False,
        comment="Canonical project name",
    ),
    Column("version", Text, nullable=False, comment="Version string exactly as upstream has it"),
    Column(
        "sort_key",
        LargeBinary,
        nullable=False,
        comment="Binary PEP 440 ordering key; legacy (invalid) versions sort below valid ones",
    ),
    Column(
        "valid",
        Boolean,
        nullable=False,
        comment="Whether the version string is valid PEP 440",
    ),
    Column(
        "prerelease",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="PEP 440 pre- or development release",
    ),
    Column("released_at", DateTime(timezone=True), nullable=True, comment="Upstream release time"),
    Column(
        "yanked", Boolean, nullable=False, server_default=text("false"), comment="PEP 592 yanked"
    ),
    Column("yank_reason", Text, nullable=False, server_default="", comment="PEP 592 yank reason"),
    Column(
        "skip_reason",
        Text,
        nullable=False,
        server_default="",
        comment="Why this version is not built; empty means build",
    ),
    Column(
        "has_sdist",
        Boolean,
        nullable=False,
        server_default=text("true"),
        comment="Upstream has a source distribution to build from",
    ),
    Column(
        "upstream_wheel_serves",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="Upstream already ships a wheel serving every target (e.g. py3-none-any)",
    ),
    Column(
        "upstream_wheel_tags",
        Text,
        nullable=False,
        server_default="",
        comment="Space-separated tag triples of upstream's wheels (per-target coverage)",
    ),
    Column(
        "requires_python",
        Text,
        nullable=False,
        server_default="",
        comment="Requires-Python of the release; empty when none",
    ),
    Column(
        "added_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When this version was first recorded here",
    ),
    Column(
        "removed_at",
        DateTime(timezone=True),
        nullable=True,
        comment="When upstream deleted the release; NULL if live",
    ),
    PrimaryKeyConstraint("package", "version"),
    CheckConstraint(f"char_length(version) BETWEEN 1 AND {MAX_VERSION}", name="version_length"),
    Index(None, "package", "sort_key"),
    Index(None, "released_at"),
    comment="Releases of each project",
)

upstream_files = Table(
    "upstream_files",
    metadata,
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("version", Text, nullable=False, comment="Version string"),
    Column("filename", Text, nullable=False, comment="Distribution file name upstream"),
    Column("sha256", Text, nullable=True, comment="SHA-256 upstream gives; NULL if none"),
    Column("size", BigInteger, nullable=True, comment="Size in bytes upstream gives; NULL if none"),
    PrimaryKeyConstraint("package", "version", "filename"),
    ForeignKeyConstraint(
        ["package", "version"],
        ["versions.package", "versions.version"],
        ondelete="CASCADE",
    ),
    comment="Files each release has upstream (what the upstream watcher diffs pages against)",
)

# ---------------------------------------------------------------------------
# Build targets and builders

abis = Table(
    "abis",
    metadata,
    Column("abi", Text, primary_key=True, comment="Target name: <abi_tag>-<platform_tag>"),
    Column("abi_tag", Text, nullable=False, comment="Wheel ABI tag the target builds, e.g. cp311"),
    Column("interpreter", Text, nullable=False, server_default="cp", comment="Interpreter tag, cp"),
    Column("py_major", SmallInteger, nullable=False, comment="Python major version (ordering)"),
    Column("py_minor", SmallInteger, nullable=False, comment="Python minor version (ordering)"),
    Column(
        "py_micro",
        SmallInteger,
        nullable=False,
        server_default=text("0"),
        comment="Python micro version of the builders, for Requires-Python checks",
    ),
    Column("platform_tag", Text, nullable=False, comment="Wheel platform tag, e.g. linux_armv7l"),
    Column(
        "glibc",
        Text,
        nullable=False,
        server_default="",
        comment="glibc version of the target (major.minor) for manylinux coverage; empty if none",
    ),
    Column(
        "enabled",
        Boolean,
        nullable=False,
        server_default=text("true"),
        comment="Whether builds are planned for this target",
    ),
    Column(
        "skip_reason",
        Text,
        nullable=False,
        server_default="",
        comment="Why this target builds nothing at present; empty means build",
    ),
    Column(
        "env_version",
        Integer,
        nullable=False,
        server_default=text("1"),
        comment="Builder environment generation; bumping it retries compile failures",
    ),
    CheckConstraint("abi = abi_tag || '-' || platform_tag", name="abi_name"),
    CheckConstraint("abi_tag NOT IN ('none', 'abi3')", name="abi_tag_specific"),
    Index(None, "py_major", "py_minor"),
    comment="Build targets: one Python ABI on one platform",
)

builders = Table(
    "builders",
    metadata,
    Column(
        "builder_id",
        Integer,
        Identity(),
        primary_key=True,
        comment="Stable builder id (survives master restarts)",
    ),
    Column("label", Text, nullable=False, unique=True, comment="Builder's label (host name)"),
    Column("public_key", Text, nullable=False, server_default="", comment="Builder's public key"),
    Column(
        "abi",
        Text,
        ForeignKey("abis.abi", ondelete="SET NULL"),
        nullable=True,
        comment="Target the builder last reported",
    ),
    Column("platform_tag", Text, nullable=False, server_default="", comment="Reported platform"),
    Column(
        "first_seen",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="First hello from this builder",
    ),
    Column(
        "last_seen",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="Last message from this builder",
    ),
    comment="Every builder that has said hello",
)

package_abi_skips = Table(
    "package_abi_skips",
    metadata,
    Column(
        "package",
        Text,
        ForeignKey("packages.name", ondelete="CASCADE"),
        nullable=False,
        comment="Canonical project name",
    ),
    Column(
        "abi",
        Text,
        ForeignKey("abis.abi", ondelete="CASCADE"),
        nullable=False,
        comment="Target this project is not built for",
    ),
    Column("reason", Text, nullable=False, comment="Why"),
    PrimaryKeyConstraint("package", "abi"),
    comment="Per-project, per-target skips",
)

version_exclusions = Table(
    "version_exclusions",
    metadata,
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("version", Text, nullable=False, comment="Version string"),
    Column(
        "abi",
        Text,
        ForeignKey("abis.abi", ondelete="CASCADE"),
        nullable=False,
        comment="Target the version is not built for",
    ),
    Column(
        "kind",
        Text,
        nullable=False,
        comment="requires_python (excluded by Requires-Python), upstream_wheel, or skip (manual)",
    ),
    Column("reason", Text, nullable=False, server_default="", comment="Details for people"),
    PrimaryKeyConstraint("package", "version", "abi", "kind"),
    ForeignKeyConstraint(
        ["package", "version"],
        ["versions.package", "versions.version"],
        ondelete="CASCADE",
    ),
    CheckConstraint(_in("kind", EXCLUSION_KINDS), name="kind"),
    comment="Sparse per-version, per-target reasons not to build (computed at insert time)",
)

# ---------------------------------------------------------------------------
# Builds, files, dependencies

builds = Table(
    "builds",
    metadata,
    Column("build_id", BigInteger, Identity(), primary_key=True, comment="Build id"),
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("version", Text, nullable=False, comment="Version string"),
    Column(
        "abi",
        Text,
        ForeignKey("abis.abi", ondelete="RESTRICT"),
        nullable=False,
        comment="Target built for",
    ),
    Column(
        "builder_id",
        Integer,
        ForeignKey("builders.builder_id", ondelete="SET NULL"),
        nullable=True,
        comment="Builder that ran it (NULL for imports)",
    ),
    Column(
        "started_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When the builder was given the job",
    ),
    Column("duration", Interval, nullable=True, comment="How long the build took; NULL until done"),
    Column(
        "status",
        Text,
        nullable=False,
        server_default="pending",
        comment="pending, building, success or failed",
    ),
    Column("failure_class", Text, nullable=True, comment="Why it failed (failed builds only)"),
    Column(
        "attempt", SmallInteger, nullable=False, server_default=text("1"), comment="Attempt number"
    ),
    Column(
        "retry_after",
        DateTime(timezone=True),
        nullable=True,
        comment="Transient failures: not retried before this time",
    ),
    Column(
        "env_version",
        Integer,
        nullable=False,
        server_default=text("1"),
        comment="abis.env_version when the build ran",
    ),
    Column(
        "cleared",
        Boolean,
        nullable=False,
        server_default=text("false"),
        comment="A manual retry request set this: the failure no longer blocks the queue",
    ),
    Column(
        "log_path", Text, nullable=False, server_default="", comment="Log file, relative to output"
    ),
    ForeignKeyConstraint(
        ["package", "version"],
        ["versions.package", "versions.version"],
        ondelete="CASCADE",
    ),
    CheckConstraint(_in("status", BUILD_STATUSES), name="status"),
    CheckConstraint(
        f"failure_class IS NULL OR {_in('failure_class', FAILURE_CLASSES)}", name="failure_class"
    ),
    CheckConstraint(
        "(status = 'failed') = (failure_class IS NOT NULL)", name="failure_class_when_failed"
    ),
    CheckConstraint("attempt >= 1", name="attempt_positive"),
    Index(None, "package", "version", "abi"),
    Index("ix_builds_started_at", "started_at", postgresql_using="brin"),
    Index(
        "ix_builds_active",
        "status",
        postgresql_where=text("status IN ('pending', 'building')"),
    ),
    comment="Every build attempt of a version for a target",
)

files = Table(
    "files",
    metadata,
    Column("filename", Text, primary_key=True, comment="Wheel file name"),
    Column(
        "build_id",
        BigInteger,
        ForeignKey("builds.build_id", ondelete="CASCADE"),
        nullable=False,
        comment="Build that produced (or imported) the file",
    ),
    Column("size", BigInteger, nullable=False, comment="Size in bytes"),
    Column("sha256", Text, nullable=False, comment="SHA-256 of the file, lower-case hex"),
    Column("name_tag", Text, nullable=False, comment="Distribution part of the file name"),
    Column("version_tag", Text, nullable=False, comment="Version part of the file name"),
    Column("build_tag", Text, nullable=False, server_default="", comment="Build tag, if any"),
    Column("python_tag", Text, nullable=False, comment="Python tag(s), e.g. cp311 or py3"),
    Column("abi_tag", Text, nullable=False, comment="ABI tag, e.g. cp311, abi3 or none"),
    Column("platform_tag", Text, nullable=False, comment="Platform tag(s), e.g. linux_armv7l"),
    Column(
        "py_min",
        Integer,
        nullable=False,
        comment="Lowest Python served (major*100+minor), for none/abi3 coverage",
    ),
    Column(
        "py_max",
        Integer,
        nullable=False,
        comment="Highest Python served (major*100+minor), for none/abi3 coverage",
    ),
    Column("requires_python", Text, nullable=False, server_default="", comment="Requires-Python"),
    Column(
        "metadata_sha256",
        Text,
        nullable=True,
        comment="SHA-256 of the METADATA served beside the file (PEP 658); NULL if none",
    ),
    Column(
        "published_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When the file was published here",
    ),
    Column(
        "import_test",
        Text,
        nullable=False,
        server_default="untested",
        comment="Result of importing the wheel: untested, passed or failed",
    ),
    Column(
        "import_error", Text, nullable=False, server_default="", comment="Import failure message"
    ),
    CheckConstraint("size >= 0", name="size_positive"),
    CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
    CheckConstraint(
        "metadata_sha256 IS NULL OR metadata_sha256 ~ '^[0-9a-f]{64}$'", name="metadata_hex"
    ),
    CheckConstraint("char_length(filename) BETWEEN 5 AND 255", name="filename_length"),
    CheckConstraint(_in("import_test", IMPORT_TESTS), name="import_test"),
    Index(None, "build_id"),
    comment="Wheel files published",
)

dependencies = Table(
    "dependencies",
    metadata,
    Column(
        "filename",
        Text,
        ForeignKey("files.filename", ondelete="CASCADE"),
        nullable=False,
        comment="Wheel file",
    ),
    Column(
        "tool",
        Text,
        nullable=False,
        comment="apt (Debian package), pip (requirement) or missing-lib (unresolved library)",
    ),
    Column(
        "requirement",
        Text,
        nullable=False,
        comment="Debian package, PEP 508 requirement with markers, or library soname",
    ),
    PrimaryKeyConstraint("filename", "tool", "requirement"),
    CheckConstraint(_in("tool", DEPENDENCY_TOOLS), name="tool"),
    comment="What each wheel needs at run time",
)

build_queue = Table(
    "build_queue",
    metadata,
    # No foreign keys: this is derived data rewritten in bulk; triggers on
    # versions and abis delete the rows of a deleted release or target
    # (migration 0002).
    Column("abi", Text, nullable=False, comment="Target"),
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("version", Text, nullable=False, comment="Version string"),
    Column("priority", Integer, nullable=False, comment="Copy of packages.priority"),
    Column("demand", BigInteger, nullable=False, comment="Copy of packages.demand"),
    Column(
        "released_at",
        DateTime(timezone=True),
        nullable=False,
        comment="Copy of versions.released_at (-infinity when unknown)",
    ),
    Column(
        "not_before",
        DateTime(timezone=True),
        nullable=False,
        comment="Backoff: not handed out before this time (-infinity when free)",
    ),
    Column(
        "attempt",
        SmallInteger,
        nullable=False,
        comment="Attempt number the next build will be",
    ),
    PrimaryKeyConstraint("package", "version", "abi"),
    Index(
        "ix_build_queue_order",
        "abi",
        text("priority DESC"),
        text("demand DESC"),
        text("released_at DESC"),
        "package",
        "version",
    ),
    comment="Materialised build queue: what each target still needs, kept up to date per change",
)

rewrites_pending = Table(
    "rewrites_pending",
    metadata,
    Column("package", Text, primary_key=True, comment="Canonical project name"),
    Column(
        "kind",
        Text,
        nullable=False,
        comment="Pages to write: simple (index pages), project (project page) or both",
    ),
    Column(
        "added_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When the rewrite was first requested",
    ),
    CheckConstraint(_in("kind", REWRITE_KINDS), name="kind"),
    comment="Page rewrites requested but not yet done (survive a master restart)",
)

# ---------------------------------------------------------------------------
# Hits (append-only) and their daily rollups


def _client_columns() -> list[Column]:
    """Client fields parsed from pip's user agent (NULL when unknown)."""
    return [
        Column("distro_name", Text, nullable=True, comment="Linux distribution name"),
        Column("distro_version", Text, nullable=True, comment="Linux distribution version"),
        Column("os_name", Text, nullable=True, comment="Operating system name"),
        Column("os_version", Text, nullable=True, comment="Operating system version"),
        Column("arch", Text, nullable=True, comment="Machine architecture, e.g. armv7l"),
        Column("py_name", Text, nullable=True, comment="Python implementation, e.g. CPython"),
        Column("py_version", Text, nullable=True, comment="Python version"),
        Column("installer_name", Text, nullable=True, comment="Installer, e.g. pip or uv"),
        Column("installer_version", Text, nullable=True, comment="Installer version"),
        Column("setuptools_version", Text, nullable=True, comment="setuptools version"),
    ]


def _hit_columns() -> list[Column]:
    return [
        Column("accessed_at", DateTime(timezone=True), nullable=False, comment="Request time"),
        Column(
            "client",
            Text,
            nullable=False,
            server_default="",
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        Column("kind", Text, nullable=False, comment="Client kind: pip, uv, direct, bot, other"),
        Column(
            "bytes_sent",
            BigInteger,
            nullable=False,
            server_default=text("0"),
            comment="Bytes sent in the response",
        ),
    ]


def _hit_table(name: str, comment: str, *cols: Column, client_fields: bool) -> Table:
    extra = _client_columns() if client_fields else []
    return Table(
        name,
        metadata,
        *_hit_columns(),
        *cols,
        *extra,
        CheckConstraint(_in("kind", CLIENT_KINDS), name="kind"),
        Index(f"ix_{name}_accessed_at", "accessed_at", postgresql_using="brin"),
        comment=comment,
    )


downloads = _hit_table(
    "downloads",
    "Wheel downloads (append-only; read the rollups for statistics)",
    Column("package", Text, nullable=False, comment="Canonical project name (from the file)"),
    Column("filename", Text, nullable=False, comment="Wheel file downloaded"),
    client_fields=True,
)
searches = _hit_table(
    "searches",
    "Index page hits, simple/<pkg>/ (append-only)",
    Column("package", Text, nullable=False, comment="Canonical project name"),
    client_fields=True,
)
project_hits = _hit_table(
    "project_hits",
    "Project page hits, project/<pkg>/ (append-only)",
    Column("package", Text, nullable=False, comment="Canonical project name"),
    client_fields=False,
)
json_hits = _hit_table(
    "json_hits",
    "Project JSON API hits (append-only)",
    Column("package", Text, nullable=False, comment="Canonical project name"),
    client_fields=False,
)
web_hits = _hit_table(
    "web_hits",
    "Other web page hits (append-only)",
    Column("page", Text, nullable=False, comment="Page path, e.g. index.html"),
    client_fields=False,
)

#: The raw hit tables, by rollup source name.
HIT_TABLES = {
    "download": downloads,
    "search": searches,
    "project": project_hits,
    "json": json_hits,
    "web": web_hits,
}

daily_package_stats = Table(
    "daily_package_stats",
    metadata,
    Column("day", Date, nullable=False, comment="UTC day"),
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("downloads", BigInteger, nullable=False, server_default=text("0"), comment="Downloads"),
    Column(
        "bytes_sent", BigInteger, nullable=False, server_default=text("0"), comment="Download bytes"
    ),
    Column(
        "seconds_saved",
        Double,
        nullable=False,
        server_default=text("0"),
        comment="Sum of the build durations of the downloaded files (time saved)",
    ),
    Column("searches", BigInteger, nullable=False, server_default=text("0"), comment="Index hits"),
    Column(
        "project_hits", BigInteger, nullable=False, server_default=text("0"), comment="Page hits"
    ),
    Column("json_hits", BigInteger, nullable=False, server_default=text("0"), comment="JSON hits"),
    PrimaryKeyConstraint("day", "package"),
    Index(None, "package", "day"),
    comment="Per day, per project: downloads, bytes, time saved and hits",
)

daily_client_stats = Table(
    "daily_client_stats",
    metadata,
    Column("day", Date, nullable=False, comment="UTC day"),
    Column("source", Text, nullable=False, comment="download or search"),
    Column("kind", Text, nullable=False, comment="Client kind"),
    *[
        Column(c.name, Text, nullable=False, server_default="", comment=f"{c.comment} ('' unknown)")
        for c in _client_columns()
    ],
    Column("hits", BigInteger, nullable=False, comment="Requests"),
    Column("bytes_sent", BigInteger, nullable=False, comment="Bytes sent"),
    PrimaryKeyConstraint(
        "day",
        "source",
        "kind",
        *[c.name for c in _client_columns()],
        name="pk_daily_client_stats",
    ),
    CheckConstraint("source IN ('download', 'search')", name="source"),
    comment="Per day: downloads and index hits by client (distro, OS, arch, Python, installer)",
)

daily_web_stats = Table(
    "daily_web_stats",
    metadata,
    Column("day", Date, nullable=False, comment="UTC day"),
    Column("source", Text, nullable=False, comment="project, json or web"),
    Column("page", Text, nullable=False, comment="Page path, or project name for project/json"),
    Column("kind", Text, nullable=False, comment="Client kind"),
    Column("hits", BigInteger, nullable=False, comment="Requests"),
    Column("bytes_sent", BigInteger, nullable=False, comment="Bytes sent"),
    PrimaryKeyConstraint("day", "source", "page", "kind"),
    comment="Per day: web, project page and JSON hits by page and client kind",
)

hourly_totals = Table(
    "hourly_totals",
    metadata,
    Column("hour", DateTime(timezone=True), nullable=False, comment="Start of the UTC hour"),
    Column("source", Text, nullable=False, comment="download, search, project, json or web"),
    Column("kind", Text, nullable=False, comment="Client kind"),
    Column("hits", BigInteger, nullable=False, comment="Requests"),
    Column("bytes_sent", BigInteger, nullable=False, comment="Bytes sent"),
    PrimaryKeyConstraint("hour", "source", "kind"),
    CheckConstraint(_in("source", ROLLUP_SOURCES), name="source"),
    comment="Per hour: requests and bytes by source and client kind (totals, spikes, bandwidth)",
)

daily_totals = Table(
    "daily_totals",
    metadata,
    Column("day", Date, nullable=False, comment="UTC day"),
    Column("downloads", BigInteger, nullable=False, comment="Downloads (no bots)"),
    Column("bytes_sent", BigInteger, nullable=False, comment="Download bytes (no bots)"),
    Column("seconds_saved", Double, nullable=False, comment="Time saved by the day's downloads"),
    Column("searches", BigInteger, nullable=False, comment="Index hits (no bots)"),
    Column("project_hits", BigInteger, nullable=False, comment="Project page hits (no bots)"),
    Column("json_hits", BigInteger, nullable=False, comment="JSON hits (no bots)"),
    PrimaryKeyConstraint("day"),
    comment="Per day: daily_package_stats summed over projects (daily and all-time figures)",
)

monthly_package_stats = Table(
    "monthly_package_stats",
    metadata,
    Column("month", Date, nullable=False, comment="First UTC day of the month"),
    Column("package", Text, nullable=False, comment="Canonical project name"),
    Column("downloads", BigInteger, nullable=False, comment="Downloads (no bots)"),
    Column("searches", BigInteger, nullable=False, comment="Index hits (no bots)"),
    Column("project_hits", BigInteger, nullable=False, comment="Project page hits (no bots)"),
    Column("json_hits", BigInteger, nullable=False, comment="JSON hits (no bots)"),
    PrimaryKeyConstraint("month", "package"),
    comment="Per month, per project: daily_package_stats summed (top projects of a period)",
)

log_batches = Table(
    "log_batches",
    metadata,
    Column(
        "source",
        LargeBinary,
        nullable=False,
        comment="Identity of the piw-logger that sent the batch (unique per logger process)",
    ),
    Column("batch_id", BigInteger, nullable=False, comment="Batch number given by that logger"),
    Column("stored", BigInteger, nullable=False, comment="Records stored from the batch"),
    Column(
        "stored_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
        comment="When the batch was committed (kept a few days, then pruned)",
    ),
    PrimaryKeyConstraint("source", "batch_id"),
    Index(None, "stored_at"),
    comment="Log batches stored, recorded with their rows: a resent batch is not stored twice",
)
