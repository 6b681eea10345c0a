"""Everything a project page needs, as the web model's dataclasses.

:func:`get_project_data` reads one project (the page writer's everyday path);
:func:`get_projects_data` reads a batch of projects in a fixed number of queries (the full
rewrite).  Both feed the same assembly, so a project looks the same whichever read it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from piwheels.errors import InvalidName
from piwheels.web.model import AbiStatus, FileData, ProjectData, VersionData

from . import abis as abis_mod
from . import downloads, packages, versions
from ._common import canonical
from .queue import SERVES

__all__ = ["ProjectLoader", "get_project_data", "get_projects_data", "iter_projects_data"]

#: Days counted as "recent" downloads on the project page.
RECENT_DAYS = 30


@dataclass
class _Rows:
    """The rows one project's page is made from (however they were read)."""

    vers: list[versions.VersionInfo] = field(default_factory=list)
    # Latest build per (version, target).
    latest: dict[tuple[str, str], Any] = field(default_factory=dict)
    # version -> target -> the successful build whose file serves it (a pure wheel serves many).
    served: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    queued: set[tuple[str, str]] = field(default_factory=set)
    exclusions: list[Any] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)
    deps: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    downloads: tuple[int, int] = (0, 0)
    aliases: list[str] = field(default_factory=list)


def get_project_data(conn: Connection, name: str) -> ProjectData:
    """The whole of a project's page: versions newest first, per-target status, files."""
    canon = canonical(name)
    pkg = packages.get_package(conn, canon)
    if pkg is None:
        raise InvalidName(f"no such project: {canon}")
    targets = [a for a in abis_mod.list_abis(conn) if a.enabled]
    rows = _Rows(vers=versions.get_versions(conn, canon))
    p = {"p": canon}
    rows.latest = {
        (r.version, r.abi): r
        for r in conn.execute(
            text(
                """
                SELECT DISTINCT ON (version, abi) version, abi, build_id, status,
                       failure_class, duration
                FROM builds WHERE package = :p
                ORDER BY version, abi, build_id DESC
                """
            ),
            p,
        )
    }
    for r in conn.execute(
        text(
            f"""
            SELECT b.version, a.abi, b.build_id
            FROM builds b JOIN files f ON f.build_id = b.build_id CROSS JOIN abis a
            WHERE b.package = :p AND b.status = 'success' AND ({SERVES})
            """
        ),
        p,
    ):
        rows.served[r.version][r.abi] = r.build_id
    rows.queued = {
        (r.version, r.abi)
        for r in conn.execute(text("SELECT version, abi FROM build_queue WHERE package = :p"), p)
    }
    rows.exclusions = list(
        conn.execute(
            text(
                "SELECT version, abi, kind, reason FROM version_exclusions WHERE package = :p "
                "UNION ALL SELECT NULL, abi, 'skip', reason FROM package_abi_skips "
                "WHERE package = :p"
            ),
            p,
        )
    )
    for r in conn.execute(
        text(
            "SELECT d.filename, d.tool, d.requirement FROM dependencies d "
            "JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id "
            "WHERE b.package = :p ORDER BY d.requirement"
        ),
        p,
    ):
        rows.deps[r.filename][r.tool].append(r.requirement)
    rows.files = list(
        conn.execute(
            text(
                "SELECT b.version, f.* FROM files f JOIN builds b ON b.build_id = f.build_id "
                "WHERE b.package = :p ORDER BY f.filename"
            ),
            p,
        )
    )
    rows.downloads = downloads.download_counts(conn, canon, RECENT_DAYS)
    rows.aliases = packages.get_aliases(conn, canon)
    return _assemble(pkg, targets, rows)


def get_projects_data(conn: Connection, names: Sequence[str]) -> dict[str, ProjectData]:
    """The pages of every project of *names* that exists, in a fixed number of queries.

    Keys are canonical names; a name with no project (e.g. deleted meanwhile) is left out.
    Each value equals what :func:`get_project_data` returns for that name.  Meant for
    batches of a few hundred names: every query reads the whole batch with ``= ANY``.
    """
    canons = sorted({canonical(n) for n in names})
    if not canons:
        return {}
    q = {"n": canons}
    pkgs = {
        r.name: packages._row(r)
        for r in conn.execute(text("SELECT * FROM packages WHERE name = ANY(:n)"), q)
    }
    if not pkgs:
        return {}
    targets = [a for a in abis_mod.list_abis(conn) if a.enabled]
    rows: dict[str, _Rows] = {name: _Rows() for name in pkgs}

    def each(query: str) -> Iterator[tuple[_Rows, Any]]:
        # fetchall: one call for the batch instead of one per row.
        for r in conn.execute(text(query), q).all():
            got = rows.get(r.package)
            if got is not None:
                yield got, r

    for got, r in each(
        "SELECT * FROM versions WHERE package = ANY(:n) "
        "ORDER BY package, sort_key DESC, version DESC"
    ):
        got.vers.append(versions._row(r))
    for got, r in each(
        """
        SELECT DISTINCT ON (package, version, abi) package, version, abi, build_id, status,
               failure_class, duration
        FROM builds WHERE package = ANY(:n)
        ORDER BY package, version, abi, build_id DESC
        """
    ):
        got.latest[(r.version, r.abi)] = r
    for got, r in each(
        f"""
        SELECT b.package, b.version, a.abi, b.build_id
        FROM builds b JOIN files f ON f.build_id = b.build_id CROSS JOIN abis a
        WHERE b.package = ANY(:n) AND b.status = 'success' AND ({SERVES})
        """
    ):
        got.served[r.version][r.abi] = r.build_id
    for got, r in each("SELECT package, version, abi FROM build_queue WHERE package = ANY(:n)"):
        got.queued.add((r.version, r.abi))
    for got, r in each(
        "SELECT package, version, abi, kind, reason FROM version_exclusions "
        "WHERE package = ANY(:n) UNION ALL SELECT package, NULL, abi, 'skip', reason "
        "FROM package_abi_skips WHERE package = ANY(:n)"
    ):
        got.exclusions.append(r)
    # One row per (file, tool), its requirements in the order the per-project read gives.
    for got, r in each(
        "SELECT b.package, d.filename, d.tool, array_agg(d.requirement ORDER BY d.requirement) "
        "AS reqs FROM dependencies d "
        "JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id "
        "WHERE b.package = ANY(:n) GROUP BY b.package, d.filename, d.tool"
    ):
        got.deps[r.filename][r.tool] = list(r.reqs)
    for got, r in each(
        "SELECT b.package, b.version, f.* FROM files f JOIN builds b ON b.build_id = f.build_id "
        "WHERE b.package = ANY(:n) ORDER BY f.filename"
    ):
        got.files.append(r)
    for got, r in each(
        f"""
        SELECT package,
               coalesce(sum(downloads) FILTER (WHERE day >= current_date - {RECENT_DAYS}), 0)
                   AS recent,
               coalesce(sum(downloads), 0) AS total
        FROM daily_package_stats WHERE package = ANY(:n) GROUP BY package
        """
    ):
        got.downloads = (int(r.recent), int(r.total))
    for got, r in each(
        "SELECT package, alias FROM package_aliases WHERE package = ANY(:n) "
        "ORDER BY package, last_seen DESC, alias"
    ):
        got.aliases.append(r.alias)
    return {name: _assemble(pkgs[name], targets, rows[name]) for name in canons if name in pkgs}


def iter_projects_data(
    conn: Connection, names: Iterable[str], batch: int = 200
) -> Iterator[ProjectData]:
    """Every project of *names* that exists, read :func:`get_projects_data` a *batch* at a time."""
    if batch < 1:
        raise ValueError(f"batch size must be positive: {batch}")
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) >= batch:
            yield from get_projects_data(conn, chunk).values()
            chunk = []
    if chunk:
        yield from get_projects_data(conn, chunk).values()


class ProjectLoader:
    """Reads a chunk of projects with :func:`get_projects_data`: ``load_many`` for
    :meth:`piwheels.web.writer.SiteWriter.write_all`.

    Made from a database *url*, it pickles as just the URL and opens an engine of its own
    (one connection) in each process that calls it, so a pool of worker processes each reads
    its own chunks.  Made from an *engine*, it uses that engine and stays in this process.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        if (url is None) == (engine is None):
            raise ValueError("give a database URL or an engine")
        self.url = url
        self._engine = engine

    def __getstate__(self) -> dict[str, Any]:
        if self.url is None:
            raise TypeError("a ProjectLoader made from an engine cannot leave its process")
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self._engine = None

    def __call__(self, names: list[str]) -> list[ProjectData]:
        if self._engine is None:
            assert self.url is not None
            self._engine = create_engine(self.url, pool_size=1, max_overflow=0)
        with self._engine.connect() as conn:
            return list(get_projects_data(conn, names).values())


def _assemble(pkg: packages.Package, targets: list[abis_mod.Abi], rows: _Rows) -> ProjectData:
    """A project's page from its rows: each target's status per version, and the files."""
    excluded = {(r.version, r.abi): r.reason for r in rows.exclusions}
    # Requires-Python outranks a pure wheel built elsewhere: installers will not use it.
    py_excluded = {(r.version, r.abi) for r in rows.exclusions if r.kind == "requires_python"}
    served, queued = rows.served, rows.queued
    files_by_version: dict[str, list[FileData]] = defaultdict(list)
    for r in rows.files:
        d = rows.deps.get(r.filename, {})
        files_by_version[r.version].append(
            FileData(
                filename=r.filename,
                size=r.size,
                sha256=r.sha256,
                upload_time=r.published_at,
                abi_tag=r.abi_tag,
                platform_tag=r.platform_tag,
                requires_python=r.requires_python or None,
                metadata_sha256=r.metadata_sha256,
                builder_abis=tuple(
                    a.abi
                    for a in targets
                    if served.get(r.version, {}).get(a.abi) == r.build_id
                    and (r.version, a.abi) not in py_excluded
                ),
                import_ok=None if r.import_test == "untested" else r.import_test == "passed",
                import_error=r.import_error or None,
                missing_libraries=tuple(d.get("missing-lib", ())),
                apt_dependencies=tuple(d.get("apt", ())),
                pip_dependencies=tuple(d.get("pip", ())),
            )
        )
    out = []
    for v in rows.vers:
        skip = v.skip_reason or pkg.skip_reason or None
        statuses: dict[str, AbiStatus] = {}
        for a in targets:
            key = (v.version, a.abi)
            b = rows.latest.get(key)
            if key in py_excluded:
                statuses[a.abi] = AbiStatus("skipped", reason=excluded[key])
            elif v.version in served and a.abi in served[v.version]:
                statuses[a.abi] = AbiStatus("built", build_id=served[v.version][a.abi])
            elif b is not None and b.status in ("pending", "building"):
                statuses[a.abi] = AbiStatus("building", build_id=b.build_id)
            elif skip or key in excluded or (None, a.abi) in excluded:
                reason = skip or excluded.get(key) or excluded.get((None, a.abi))
                statuses[a.abi] = AbiStatus("skipped", reason=reason)
            elif b is not None and b.status == "failed" and key not in queued:
                statuses[a.abi] = AbiStatus(
                    "failed", build_id=b.build_id, reason=b.failure_class, duration=b.duration
                )
            elif key in queued:
                statuses[a.abi] = AbiStatus("pending")
            else:
                statuses[a.abi] = AbiStatus("skipped", reason="not built")
        out.append(
            VersionData(
                version=v.version,
                released=v.released_at,
                yanked=v.yanked,
                yank_reason=v.yank_reason or None,
                prerelease=v.prerelease,
                skip_reason=skip,
                builds=statuses,
                files=tuple(files_by_version.get(v.version, ())),
            )
        )
    recent, total = rows.downloads
    return ProjectData(
        name=pkg.name,
        display_name=pkg.display_name,
        summary=pkg.summary,
        status=pkg.status,  # type: ignore[arg-type]
        status_reason=pkg.status_reason or None,
        aliases=tuple(rows.aliases),
        versions=tuple(out),
        downloads_30d=recent,
        downloads_all=total,
        skip_reason=pkg.skip_reason or None,
        abis=tuple(a.abi for a in targets),
    )
