# ruff: noqa: E501  (generated table definitions: the long lines are column comments)
"""0001: the initial schema (every table of piwheels.db.schema as of this revision).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "abis",
        sa.Column(
            "abi", sa.Text(), nullable=False, comment="Target name: <abi_tag>-<platform_tag>"
        ),
        sa.Column(
            "abi_tag",
            sa.Text(),
            nullable=False,
            comment="Wheel ABI tag the target builds, e.g. cp311",
        ),
        sa.Column(
            "interpreter",
            sa.Text(),
            server_default="cp",
            nullable=False,
            comment="Interpreter tag, cp",
        ),
        sa.Column(
            "py_major", sa.SmallInteger(), nullable=False, comment="Python major version (ordering)"
        ),
        sa.Column(
            "py_minor", sa.SmallInteger(), nullable=False, comment="Python minor version (ordering)"
        ),
        sa.Column(
            "py_micro",
            sa.SmallInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Python micro version of the builders, for Requires-Python checks",
        ),
        sa.Column(
            "platform_tag",
            sa.Text(),
            nullable=False,
            comment="Wheel platform tag, e.g. linux_armv7l",
        ),
        sa.Column(
            "glibc",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="glibc version of the target (major.minor) for manylinux coverage; empty if none",
        ),
        sa.Column(
            "enabled",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
            comment="Whether builds are planned for this target",
        ),
        sa.Column(
            "skip_reason",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Why this target builds nothing at present; empty means build",
        ),
        sa.Column(
            "env_version",
            sa.Integer(),
            server_default=sa.text("1"),
            nullable=False,
            comment="Builder environment generation; bumping it retries compile failures",
        ),
        sa.CheckConstraint("abi = abi_tag || '-' || platform_tag", name=op.f("ck_abis_abi_name")),
        sa.CheckConstraint(
            "abi_tag NOT IN ('none', 'abi3')", name=op.f("ck_abis_abi_tag_specific")
        ),
        sa.PrimaryKeyConstraint("abi", name=op.f("pk_abis")),
        comment="Build targets: one Python ABI on one platform",
    )
    op.create_index(
        op.f("ix_abis_py_major_py_minor"), "abis", ["py_major", "py_minor"], unique=False
    )
    op.create_table(
        "configuration",
        sa.Column("id", sa.SmallInteger(), nullable=False, comment="Always 1: a single-row table"),
        sa.Column(
            "schema_version", sa.Text(), nullable=False, comment="Schema revision of this database"
        ),
        sa.Column(
            "max_attempts",
            sa.SmallInteger(),
            server_default=sa.text("3"),
            nullable=False,
            comment="Attempts per version and target before transient failures stop being retried",
        ),
        sa.Column(
            "retry_base",
            sa.Interval(),
            server_default=sa.text("'00:10:00'::interval"),
            nullable=False,
            comment="Backoff after the first transient failure; doubles with each attempt",
        ),
        sa.Column(
            "build_when_upstream_wheel",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="Build versions even when upstream already ships a wheel serving the target",
        ),
        sa.Column(
            "demand_days",
            sa.SmallInteger(),
            server_default=sa.text("30"),
            nullable=False,
            comment="Days of downloads and index hits that make up a package's demand",
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_configuration_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_configuration")),
        comment="Settings kept with the data: schema version and build-queue policy",
    )
    op.create_table(
        "daily_client_stats",
        sa.Column("day", sa.Date(), nullable=False, comment="UTC day"),
        sa.Column("source", sa.Text(), nullable=False, comment="download or search"),
        sa.Column("kind", sa.Text(), nullable=False, comment="Client kind"),
        sa.Column(
            "distro_name",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Linux distribution name ('' unknown)",
        ),
        sa.Column(
            "distro_version",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Linux distribution version ('' unknown)",
        ),
        sa.Column(
            "os_name",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Operating system name ('' unknown)",
        ),
        sa.Column(
            "os_version",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Operating system version ('' unknown)",
        ),
        sa.Column(
            "arch",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Machine architecture, e.g. armv7l ('' unknown)",
        ),
        sa.Column(
            "py_name",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Python implementation, e.g. CPython ('' unknown)",
        ),
        sa.Column(
            "py_version",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Python version ('' unknown)",
        ),
        sa.Column(
            "installer_name",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Installer, e.g. pip or uv ('' unknown)",
        ),
        sa.Column(
            "installer_version",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Installer version ('' unknown)",
        ),
        sa.Column(
            "setuptools_version",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="setuptools version ('' unknown)",
        ),
        sa.Column("hits", sa.BigInteger(), nullable=False, comment="Requests"),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False, comment="Bytes sent"),
        sa.CheckConstraint(
            "source IN ('download', 'search')", name=op.f("ck_daily_client_stats_source")
        ),
        sa.PrimaryKeyConstraint(
            "day",
            "source",
            "kind",
            "distro_name",
            "distro_version",
            "os_name",
            "os_version",
            "arch",
            "py_name",
            "py_version",
            "installer_name",
            "installer_version",
            "setuptools_version",
            name="pk_daily_client_stats",
        ),
        comment="Per day: downloads and index hits by client (distro, OS, arch, Python, installer)",
    )
    op.create_table(
        "daily_package_stats",
        sa.Column("day", sa.Date(), nullable=False, comment="UTC day"),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column(
            "downloads",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Downloads",
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Download bytes",
        ),
        sa.Column(
            "seconds_saved",
            sa.Double(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Sum of the build durations of the downloaded files (time saved)",
        ),
        sa.Column(
            "searches",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Index hits",
        ),
        sa.Column(
            "project_hits",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Page hits",
        ),
        sa.Column(
            "json_hits",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="JSON hits",
        ),
        sa.PrimaryKeyConstraint("day", "package", name=op.f("pk_daily_package_stats")),
        comment="Per day, per project: downloads, bytes, time saved and hits",
    )
    op.create_index(
        op.f("ix_daily_package_stats_package_day"),
        "daily_package_stats",
        ["package", "day"],
        unique=False,
    )
    op.create_table(
        "daily_web_stats",
        sa.Column("day", sa.Date(), nullable=False, comment="UTC day"),
        sa.Column("source", sa.Text(), nullable=False, comment="project, json or web"),
        sa.Column(
            "page", sa.Text(), nullable=False, comment="Page path, or project name for project/json"
        ),
        sa.Column("kind", sa.Text(), nullable=False, comment="Client kind"),
        sa.Column("hits", sa.BigInteger(), nullable=False, comment="Requests"),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False, comment="Bytes sent"),
        sa.PrimaryKeyConstraint("day", "source", "page", "kind", name=op.f("pk_daily_web_stats")),
        comment="Per day: web, project page and JSON hits by page and client kind",
    )
    op.create_table(
        "downloads",
        sa.Column(
            "accessed_at", sa.DateTime(timezone=True), nullable=False, comment="Request time"
        ),
        sa.Column(
            "client",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Client kind: pip, uv, direct, bot, other"
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Bytes sent in the response",
        ),
        sa.Column(
            "package", sa.Text(), nullable=False, comment="Canonical project name (from the file)"
        ),
        sa.Column("filename", sa.Text(), nullable=False, comment="Wheel file downloaded"),
        sa.Column("distro_name", sa.Text(), nullable=True, comment="Linux distribution name"),
        sa.Column("distro_version", sa.Text(), nullable=True, comment="Linux distribution version"),
        sa.Column("os_name", sa.Text(), nullable=True, comment="Operating system name"),
        sa.Column("os_version", sa.Text(), nullable=True, comment="Operating system version"),
        sa.Column("arch", sa.Text(), nullable=True, comment="Machine architecture, e.g. armv7l"),
        sa.Column(
            "py_name", sa.Text(), nullable=True, comment="Python implementation, e.g. CPython"
        ),
        sa.Column("py_version", sa.Text(), nullable=True, comment="Python version"),
        sa.Column("installer_name", sa.Text(), nullable=True, comment="Installer, e.g. pip or uv"),
        sa.Column("installer_version", sa.Text(), nullable=True, comment="Installer version"),
        sa.Column("setuptools_version", sa.Text(), nullable=True, comment="setuptools version"),
        sa.CheckConstraint(
            "kind IN ('pip', 'uv', 'direct', 'bot', 'other')", name=op.f("ck_downloads_kind")
        ),
        comment="Wheel downloads (append-only; read the rollups for statistics)",
    )
    op.create_index(
        "ix_downloads_accessed_at",
        "downloads",
        ["accessed_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_index(
        "ix_downloads_package_accessed_at", "downloads", ["package", "accessed_at"], unique=False
    )
    op.create_table(
        "hourly_totals",
        sa.Column(
            "hour", sa.DateTime(timezone=True), nullable=False, comment="Start of the UTC hour"
        ),
        sa.Column(
            "source", sa.Text(), nullable=False, comment="download, search, project, json or web"
        ),
        sa.Column("kind", sa.Text(), nullable=False, comment="Client kind"),
        sa.Column("hits", sa.BigInteger(), nullable=False, comment="Requests"),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False, comment="Bytes sent"),
        sa.CheckConstraint(
            "source IN ('download', 'search', 'project', 'json', 'web')",
            name=op.f("ck_hourly_totals_source"),
        ),
        sa.PrimaryKeyConstraint("hour", "source", "kind", name=op.f("pk_hourly_totals")),
        comment="Per hour: requests and bytes by source and client kind (totals, spikes, bandwidth)",
    )
    op.create_table(
        "json_hits",
        sa.Column(
            "accessed_at", sa.DateTime(timezone=True), nullable=False, comment="Request time"
        ),
        sa.Column(
            "client",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Client kind: pip, uv, direct, bot, other"
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Bytes sent in the response",
        ),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.CheckConstraint(
            "kind IN ('pip', 'uv', 'direct', 'bot', 'other')", name=op.f("ck_json_hits_kind")
        ),
        comment="Project JSON API hits (append-only)",
    )
    op.create_index(
        "ix_json_hits_accessed_at",
        "json_hits",
        ["accessed_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_table(
        "packages",
        sa.Column("name", sa.Text(), nullable=False, comment="PEP 503 canonical project name"),
        sa.Column(
            "display_name",
            sa.Text(),
            nullable=False,
            comment="Spelling upstream uses now (latest seen)",
        ),
        sa.Column(
            "summary",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Upstream one-line summary",
        ),
        sa.Column(
            "skip_reason",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Why no version of this project is built; empty means build",
        ),
        sa.Column(
            "status",
            sa.Text(),
            server_default="active",
            nullable=False,
            comment="PEP 792 project status: active, archived, quarantined or deprecated",
        ),
        sa.Column(
            "status_reason",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="PEP 792 status reason",
        ),
        sa.Column(
            "added_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When this project was first recorded here",
        ),
        sa.Column(
            "removed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When upstream deleted the project (files still to be unpublished); NULL if live",
        ),
        sa.Column(
            "priority",
            sa.Integer(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Manual bump: higher builds before demand ordering applies",
        ),
        sa.Column(
            "demand",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Downloads plus index hits over configuration.demand_days (from the rollups)",
        ),
        sa.Column(
            "upstream_serial",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Upstream serial of the last change to this project that was processed",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'archived', 'quarantined', 'deprecated')",
            name=op.f("ck_packages_status"),
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200", name=op.f("ck_packages_name_length")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_packages")),
        comment="Projects known upstream, one row per canonical name",
    )
    op.create_table(
        "project_hits",
        sa.Column(
            "accessed_at", sa.DateTime(timezone=True), nullable=False, comment="Request time"
        ),
        sa.Column(
            "client",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Client kind: pip, uv, direct, bot, other"
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Bytes sent in the response",
        ),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.CheckConstraint(
            "kind IN ('pip', 'uv', 'direct', 'bot', 'other')", name=op.f("ck_project_hits_kind")
        ),
        comment="Project page hits, project/<pkg>/ (append-only)",
    )
    op.create_index(
        "ix_project_hits_accessed_at",
        "project_hits",
        ["accessed_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_table(
        "rewrites_pending",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column(
            "kind",
            sa.Text(),
            nullable=False,
            comment="Pages to write: simple (index pages), project (project page) or both",
        ),
        sa.Column(
            "added_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the rewrite was first requested",
        ),
        sa.CheckConstraint(
            "kind IN ('simple', 'project', 'both')", name=op.f("ck_rewrites_pending_kind")
        ),
        sa.PrimaryKeyConstraint("package", name=op.f("pk_rewrites_pending")),
        comment="Page rewrites requested but not yet done (survive a master restart)",
    )
    op.create_table(
        "searches",
        sa.Column(
            "accessed_at", sa.DateTime(timezone=True), nullable=False, comment="Request time"
        ),
        sa.Column(
            "client",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Client kind: pip, uv, direct, bot, other"
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Bytes sent in the response",
        ),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("distro_name", sa.Text(), nullable=True, comment="Linux distribution name"),
        sa.Column("distro_version", sa.Text(), nullable=True, comment="Linux distribution version"),
        sa.Column("os_name", sa.Text(), nullable=True, comment="Operating system name"),
        sa.Column("os_version", sa.Text(), nullable=True, comment="Operating system version"),
        sa.Column("arch", sa.Text(), nullable=True, comment="Machine architecture, e.g. armv7l"),
        sa.Column(
            "py_name", sa.Text(), nullable=True, comment="Python implementation, e.g. CPython"
        ),
        sa.Column("py_version", sa.Text(), nullable=True, comment="Python version"),
        sa.Column("installer_name", sa.Text(), nullable=True, comment="Installer, e.g. pip or uv"),
        sa.Column("installer_version", sa.Text(), nullable=True, comment="Installer version"),
        sa.Column("setuptools_version", sa.Text(), nullable=True, comment="setuptools version"),
        sa.CheckConstraint(
            "kind IN ('pip', 'uv', 'direct', 'bot', 'other')", name=op.f("ck_searches_kind")
        ),
        comment="Index page hits, simple/<pkg>/ (append-only)",
    )
    op.create_index(
        "ix_searches_accessed_at",
        "searches",
        ["accessed_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_table(
        "upstream_state",
        sa.Column("id", sa.SmallInteger(), nullable=False, comment="Always 1: a single-row table"),
        sa.Column(
            "last_serial",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Highest upstream event serial fully processed",
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When last_serial moved",
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_upstream_state_single_row")),
        sa.CheckConstraint("last_serial >= 0", name=op.f("ck_upstream_state_serial_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_state")),
        comment="Where the upstream watcher is in the upstream event log",
    )
    op.create_table(
        "web_hits",
        sa.Column(
            "accessed_at", sa.DateTime(timezone=True), nullable=False, comment="Request time"
        ),
        sa.Column(
            "client",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Salted hash or network prefix of the client; never a raw address",
        ),
        sa.Column(
            "kind", sa.Text(), nullable=False, comment="Client kind: pip, uv, direct, bot, other"
        ),
        sa.Column(
            "bytes_sent",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Bytes sent in the response",
        ),
        sa.Column("page", sa.Text(), nullable=False, comment="Page path, e.g. index.html"),
        sa.CheckConstraint(
            "kind IN ('pip', 'uv', 'direct', 'bot', 'other')", name=op.f("ck_web_hits_kind")
        ),
        comment="Other web page hits (append-only)",
    )
    op.create_index(
        "ix_web_hits_accessed_at",
        "web_hits",
        ["accessed_at"],
        unique=False,
        postgresql_using="brin",
    )
    op.create_table(
        "builders",
        sa.Column(
            "builder_id",
            sa.Integer(),
            sa.Identity(always=False),
            nullable=False,
            comment="Stable builder id (survives master restarts)",
        ),
        sa.Column("label", sa.Text(), nullable=False, comment="Builder's label (host name)"),
        sa.Column(
            "public_key",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Builder's public key",
        ),
        sa.Column("abi", sa.Text(), nullable=True, comment="Target the builder last reported"),
        sa.Column(
            "platform_tag",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Reported platform",
        ),
        sa.Column(
            "first_seen",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="First hello from this builder",
        ),
        sa.Column(
            "last_seen",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="Last message from this builder",
        ),
        sa.ForeignKeyConstraint(
            ["abi"], ["abis.abi"], name=op.f("fk_builders_abi_abis"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("builder_id", name=op.f("pk_builders")),
        sa.UniqueConstraint("label", name=op.f("uq_builders_label")),
        comment="Every builder that has said hello",
    )
    op.create_table(
        "package_abi_skips",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("abi", sa.Text(), nullable=False, comment="Target this project is not built for"),
        sa.Column("reason", sa.Text(), nullable=False, comment="Why"),
        sa.ForeignKeyConstraint(
            ["abi"], ["abis.abi"], name=op.f("fk_package_abi_skips_abi_abis"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["package"],
            ["packages.name"],
            name=op.f("fk_package_abi_skips_package_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("package", "abi", name=op.f("pk_package_abi_skips")),
        comment="Per-project, per-target skips",
    )
    op.create_table(
        "package_aliases",
        sa.Column(
            "alias", sa.Text(), nullable=False, comment="A spelling of the name as seen upstream"
        ),
        sa.Column(
            "package", sa.Text(), nullable=False, comment="Canonical name the alias belongs to"
        ),
        sa.Column(
            "first_seen",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When this spelling was first seen",
        ),
        sa.Column(
            "last_seen",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When this spelling was last seen",
        ),
        sa.ForeignKeyConstraint(
            ["package"],
            ["packages.name"],
            name=op.f("fk_package_aliases_package_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alias", name=op.f("pk_package_aliases")),
        comment="Every spelling of every project name ever seen",
    )
    op.create_index(
        op.f("ix_package_aliases_package_last_seen"),
        "package_aliases",
        ["package", "last_seen"],
        unique=False,
    )
    op.create_table(
        "versions",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column(
            "version",
            sa.Text(),
            nullable=False,
            comment="Version string exactly as upstream has it",
        ),
        sa.Column(
            "sort_key",
            sa.LargeBinary(),
            nullable=False,
            comment="Binary PEP 440 ordering key; legacy (invalid) versions sort below valid ones",
        ),
        sa.Column(
            "valid",
            sa.Boolean(),
            nullable=False,
            comment="Whether the version string is valid PEP 440",
        ),
        sa.Column(
            "prerelease",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="PEP 440 pre- or development release",
        ),
        sa.Column(
            "released_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Upstream release time",
        ),
        sa.Column(
            "yanked",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="PEP 592 yanked",
        ),
        sa.Column(
            "yank_reason",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="PEP 592 yank reason",
        ),
        sa.Column(
            "skip_reason",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Why this version is not built; empty means build",
        ),
        sa.Column(
            "has_sdist",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
            comment="Upstream has a source distribution to build from",
        ),
        sa.Column(
            "upstream_wheel_serves",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="Upstream already ships a wheel serving every target (e.g. py3-none-any)",
        ),
        sa.Column(
            "upstream_wheel_tags",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Space-separated tag triples of upstream's wheels (per-target coverage)",
        ),
        sa.Column(
            "requires_python",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Requires-Python of the release; empty when none",
        ),
        sa.Column(
            "added_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When this version was first recorded here",
        ),
        sa.Column(
            "removed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When upstream deleted the release; NULL if live",
        ),
        sa.CheckConstraint(
            "char_length(version) BETWEEN 1 AND 200", name=op.f("ck_versions_version_length")
        ),
        sa.ForeignKeyConstraint(
            ["package"],
            ["packages.name"],
            name=op.f("fk_versions_package_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("package", "version", name=op.f("pk_versions")),
        comment="Releases of each project",
    )
    op.create_index(
        op.f("ix_versions_package_sort_key"), "versions", ["package", "sort_key"], unique=False
    )
    op.create_index(op.f("ix_versions_released_at"), "versions", ["released_at"], unique=False)
    op.create_table(
        "build_queue",
        sa.Column("abi", sa.Text(), nullable=False, comment="Target"),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("version", sa.Text(), nullable=False, comment="Version string"),
        sa.Column("priority", sa.Integer(), nullable=False, comment="Copy of packages.priority"),
        sa.Column("demand", sa.BigInteger(), nullable=False, comment="Copy of packages.demand"),
        sa.Column(
            "released_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Copy of versions.released_at (-infinity when unknown)",
        ),
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Backoff: not handed out before this time (-infinity when free)",
        ),
        sa.Column(
            "attempt",
            sa.SmallInteger(),
            nullable=False,
            comment="Attempt number the next build will be",
        ),
        sa.ForeignKeyConstraint(
            ["abi"], ["abis.abi"], name=op.f("fk_build_queue_abi_abis"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["package", "version"],
            ["versions.package", "versions.version"],
            name=op.f("fk_build_queue_package_version_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("abi", "package", "version", name=op.f("pk_build_queue")),
        comment="Materialised build queue: what each target still needs, kept up to date per change",
    )
    op.create_index(
        "ix_build_queue_order",
        "build_queue",
        [
            "abi",
            sa.literal_column("priority DESC"),
            sa.literal_column("demand DESC"),
            sa.literal_column("released_at DESC"),
            "package",
            "version",
        ],
        unique=False,
    )
    op.create_index(
        op.f("ix_build_queue_package_version"), "build_queue", ["package", "version"], unique=False
    )
    op.create_table(
        "builds",
        sa.Column(
            "build_id",
            sa.BigInteger(),
            sa.Identity(always=False),
            nullable=False,
            comment="Build id",
        ),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("version", sa.Text(), nullable=False, comment="Version string"),
        sa.Column("abi", sa.Text(), nullable=False, comment="Target built for"),
        sa.Column(
            "builder_id",
            sa.Integer(),
            nullable=True,
            comment="Builder that ran it (NULL for imports)",
        ),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the builder was given the job",
        ),
        sa.Column(
            "duration",
            sa.Interval(),
            nullable=True,
            comment="How long the build took; NULL until done",
        ),
        sa.Column(
            "status",
            sa.Text(),
            server_default="pending",
            nullable=False,
            comment="pending, building, success or failed",
        ),
        sa.Column(
            "failure_class", sa.Text(), nullable=True, comment="Why it failed (failed builds only)"
        ),
        sa.Column(
            "attempt",
            sa.SmallInteger(),
            server_default=sa.text("1"),
            nullable=False,
            comment="Attempt number",
        ),
        sa.Column(
            "retry_after",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Transient failures: not retried before this time",
        ),
        sa.Column(
            "env_version",
            sa.Integer(),
            server_default=sa.text("1"),
            nullable=False,
            comment="abis.env_version when the build ran",
        ),
        sa.Column(
            "cleared",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="A manual retry request set this: the failure no longer blocks the queue",
        ),
        sa.Column(
            "log_path",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Log file, relative to output",
        ),
        sa.CheckConstraint(
            "(status = 'failed') = (failure_class IS NOT NULL)",
            name=op.f("ck_builds_failure_class_when_failed"),
        ),
        sa.CheckConstraint(
            "failure_class IS NULL OR failure_class IN ('compile_error', 'timeout', 'builder_lost', 'dependency_missing', 'disk_full', 'memory', 'import_failed', 'invalid_wheel', 'other')",
            name=op.f("ck_builds_failure_class"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'building', 'success', 'failed')", name=op.f("ck_builds_status")
        ),
        sa.CheckConstraint("attempt >= 1", name=op.f("ck_builds_attempt_positive")),
        sa.ForeignKeyConstraint(
            ["abi"], ["abis.abi"], name=op.f("fk_builds_abi_abis"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["builder_id"],
            ["builders.builder_id"],
            name=op.f("fk_builds_builder_id_builders"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["package", "version"],
            ["versions.package", "versions.version"],
            name=op.f("fk_builds_package_version_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", name=op.f("pk_builds")),
        comment="Every build attempt of a version for a target",
    )
    op.create_index(
        "ix_builds_active",
        "builds",
        ["status"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'building')"),
    )
    op.create_index(
        op.f("ix_builds_package_version_abi"), "builds", ["package", "version", "abi"], unique=False
    )
    op.create_index(
        "ix_builds_started_at", "builds", ["started_at"], unique=False, postgresql_using="brin"
    )
    op.create_table(
        "version_exclusions",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("version", sa.Text(), nullable=False, comment="Version string"),
        sa.Column("abi", sa.Text(), nullable=False, comment="Target the version is not built for"),
        sa.Column(
            "kind",
            sa.Text(),
            nullable=False,
            comment="requires_python (excluded by Requires-Python), upstream_wheel, or skip (manual)",
        ),
        sa.Column(
            "reason", sa.Text(), server_default="", nullable=False, comment="Details for people"
        ),
        sa.CheckConstraint(
            "kind IN ('requires_python', 'upstream_wheel', 'skip')",
            name=op.f("ck_version_exclusions_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["abi"], ["abis.abi"], name=op.f("fk_version_exclusions_abi_abis"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["package", "version"],
            ["versions.package", "versions.version"],
            name=op.f("fk_version_exclusions_package_version_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "package", "version", "abi", "kind", name=op.f("pk_version_exclusions")
        ),
        comment="Sparse per-version, per-target reasons not to build (computed at insert time)",
    )
    op.create_table(
        "files",
        sa.Column("filename", sa.Text(), nullable=False, comment="Wheel file name"),
        sa.Column(
            "build_id",
            sa.BigInteger(),
            nullable=False,
            comment="Build that produced (or imported) the file",
        ),
        sa.Column("size", sa.BigInteger(), nullable=False, comment="Size in bytes"),
        sa.Column(
            "sha256", sa.Text(), nullable=False, comment="SHA-256 of the file, lower-case hex"
        ),
        sa.Column(
            "name_tag", sa.Text(), nullable=False, comment="Distribution part of the file name"
        ),
        sa.Column(
            "version_tag", sa.Text(), nullable=False, comment="Version part of the file name"
        ),
        sa.Column(
            "build_tag", sa.Text(), server_default="", nullable=False, comment="Build tag, if any"
        ),
        sa.Column(
            "python_tag", sa.Text(), nullable=False, comment="Python tag(s), e.g. cp311 or py3"
        ),
        sa.Column(
            "abi_tag", sa.Text(), nullable=False, comment="ABI tag, e.g. cp311, abi3 or none"
        ),
        sa.Column(
            "platform_tag", sa.Text(), nullable=False, comment="Platform tag(s), e.g. linux_armv7l"
        ),
        sa.Column(
            "py_min",
            sa.Integer(),
            nullable=False,
            comment="Lowest Python served (major*100+minor), for none/abi3 coverage",
        ),
        sa.Column(
            "py_max",
            sa.Integer(),
            nullable=False,
            comment="Highest Python served (major*100+minor), for none/abi3 coverage",
        ),
        sa.Column(
            "requires_python",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Requires-Python",
        ),
        sa.Column(
            "metadata_sha256",
            sa.Text(),
            nullable=True,
            comment="SHA-256 of the METADATA served beside the file (PEP 658); NULL if none",
        ),
        sa.Column(
            "published_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the file was published here",
        ),
        sa.Column(
            "import_test",
            sa.Text(),
            server_default="untested",
            nullable=False,
            comment="Result of importing the wheel: untested, passed or failed",
        ),
        sa.Column(
            "import_error",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="Import failure message",
        ),
        sa.CheckConstraint(
            "import_test IN ('untested', 'passed', 'failed')", name=op.f("ck_files_import_test")
        ),
        sa.CheckConstraint(
            "metadata_sha256 IS NULL OR metadata_sha256 ~ '^[0-9a-f]{64}$'",
            name=op.f("ck_files_metadata_hex"),
        ),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name=op.f("ck_files_sha256_hex")),
        sa.CheckConstraint(
            "char_length(filename) BETWEEN 5 AND 255", name=op.f("ck_files_filename_length")
        ),
        sa.CheckConstraint("size >= 0", name=op.f("ck_files_size_positive")),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["builds.build_id"],
            name=op.f("fk_files_build_id_builds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("filename", name=op.f("pk_files")),
        comment="Wheel files published",
    )
    op.create_index(op.f("ix_files_build_id"), "files", ["build_id"], unique=False)
    op.create_table(
        "dependencies",
        sa.Column("filename", sa.Text(), nullable=False, comment="Wheel file"),
        sa.Column(
            "tool",
            sa.Text(),
            nullable=False,
            comment="apt (Debian package), pip (requirement) or missing-lib (unresolved library)",
        ),
        sa.Column(
            "requirement",
            sa.Text(),
            nullable=False,
            comment="Debian package, PEP 508 requirement with markers, or library soname",
        ),
        sa.CheckConstraint(
            "tool IN ('apt', 'pip', 'missing-lib')", name=op.f("ck_dependencies_tool")
        ),
        sa.ForeignKeyConstraint(
            ["filename"],
            ["files.filename"],
            name=op.f("fk_dependencies_filename_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("filename", "tool", "requirement", name=op.f("pk_dependencies")),
        comment="What each wheel needs at run time",
    )
    # The single-row tables start with their one row.
    op.execute("INSERT INTO configuration (id, schema_version) VALUES (1, '0001')")
    op.execute("INSERT INTO upstream_state (id, last_serial) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("dependencies")
    op.drop_index(op.f("ix_files_build_id"), table_name="files")
    op.drop_table("files")
    op.drop_table("version_exclusions")
    op.drop_index("ix_builds_started_at", table_name="builds", postgresql_using="brin")
    op.drop_index(op.f("ix_builds_package_version_abi"), table_name="builds")
    op.drop_index(
        "ix_builds_active",
        table_name="builds",
        postgresql_where=sa.text("status IN ('pending', 'building')"),
    )
    op.drop_table("builds")
    op.drop_index(op.f("ix_build_queue_package_version"), table_name="build_queue")
    op.drop_index("ix_build_queue_order", table_name="build_queue")
    op.drop_table("build_queue")
    op.drop_index(op.f("ix_versions_released_at"), table_name="versions")
    op.drop_index(op.f("ix_versions_package_sort_key"), table_name="versions")
    op.drop_table("versions")
    op.drop_index(op.f("ix_package_aliases_package_last_seen"), table_name="package_aliases")
    op.drop_table("package_aliases")
    op.drop_table("package_abi_skips")
    op.drop_table("builders")
    op.drop_index("ix_web_hits_accessed_at", table_name="web_hits", postgresql_using="brin")
    op.drop_table("web_hits")
    op.drop_table("upstream_state")
    op.drop_index("ix_searches_accessed_at", table_name="searches", postgresql_using="brin")
    op.drop_table("searches")
    op.drop_table("rewrites_pending")
    op.drop_index("ix_project_hits_accessed_at", table_name="project_hits", postgresql_using="brin")
    op.drop_table("project_hits")
    op.drop_table("packages")
    op.drop_index("ix_json_hits_accessed_at", table_name="json_hits", postgresql_using="brin")
    op.drop_table("json_hits")
    op.drop_table("hourly_totals")
    op.drop_index("ix_downloads_package_accessed_at", table_name="downloads")
    op.drop_index("ix_downloads_accessed_at", table_name="downloads", postgresql_using="brin")
    op.drop_table("downloads")
    op.drop_table("daily_web_stats")
    op.drop_index(op.f("ix_daily_package_stats_package_day"), table_name="daily_package_stats")
    op.drop_table("daily_package_stats")
    op.drop_table("daily_client_stats")
    op.drop_table("configuration")
    op.drop_index(op.f("ix_abis_py_major_py_minor"), table_name="abis")
    op.drop_table("abis")
