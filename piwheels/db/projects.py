"""Everything a project page needs, as the web model's dataclasses."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import text
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName
from piwheels.web.model import AbiStatus, FileData, ProjectData, VersionData

from . import abis as abis_mod
from . import downloads, packages, versions
from ._common import canonical
from .queue import SERVES


def get_project_data(conn: Connection, name: str) -> ProjectData:
    """The whole of a project's page: versions newest first, per-target status, files."""
    canon = canonical(name)
    pkg = packages.get_package(conn, canon)
    if pkg is None:
        raise InvalidName(f"no such project: {canon}")
    targets = [a for a in abis_mod.list_abis(conn) if a.enabled]
    vers = versions.get_versions(conn, canon)
    # Latest build per (version, target), and queue membership.
    latest = {
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
            {"p": canon},
        )
    }
    # Which target each successful file serves (a pure wheel serves many).
    served: dict[str, dict[str, int]] = defaultdict(dict)
    for r in conn.execute(
        text(
            f"""
            SELECT b.version, a.abi, b.build_id
            FROM builds b JOIN files f ON f.build_id = b.build_id CROSS JOIN abis a
            WHERE b.package = :p AND b.status = 'success' AND ({SERVES})
            """
        ),
        {"p": canon},
    ):
        served[r.version][r.abi] = r.build_id
    queued = {
        (r.version, r.abi)
        for r in conn.execute(
            text("SELECT version, abi FROM build_queue WHERE package = :p"), {"p": canon}
        )
    }
    exclusion_rows = list(
        conn.execute(
            text(
                "SELECT version, abi, kind, reason FROM version_exclusions WHERE package = :p "
                "UNION ALL SELECT NULL, abi, 'skip', reason FROM package_abi_skips "
                "WHERE package = :p"
            ),
            {"p": canon},
        )
    )
    excluded = {(r.version, r.abi): r.reason for r in exclusion_rows}
    # Requires-Python outranks a pure wheel built elsewhere: installers will not use it.
    py_excluded = {(r.version, r.abi) for r in exclusion_rows if r.kind == "requires_python"}
    files_by_version: dict[str, list[FileData]] = defaultdict(list)
    deps: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in conn.execute(
        text(
            "SELECT d.filename, d.tool, d.requirement FROM dependencies d "
            "JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id "
            "WHERE b.package = :p ORDER BY d.requirement"
        ),
        {"p": canon},
    ):
        deps[r.filename][r.tool].append(r.requirement)
    for r in conn.execute(
        text(
            "SELECT b.version, f.* FROM files f JOIN builds b ON b.build_id = f.build_id "
            "WHERE b.package = :p ORDER BY f.filename"
        ),
        {"p": canon},
    ):
        d = deps[r.filename]
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
                    if served[r.version].get(a.abi) == r.build_id
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
    for v in vers:
        skip = v.skip_reason or pkg.skip_reason or None
        statuses: dict[str, AbiStatus] = {}
        for a in targets:
            b = latest.get((v.version, a.abi))
            if (v.version, a.abi) in py_excluded:
                statuses[a.abi] = AbiStatus("skipped", reason=excluded[(v.version, a.abi)])
            elif v.version in served and a.abi in served[v.version]:
                statuses[a.abi] = AbiStatus("built", build_id=served[v.version][a.abi])
            elif b is not None and b.status in ("pending", "building"):
                statuses[a.abi] = AbiStatus("building", build_id=b.build_id)
            elif skip or (v.version, a.abi) in excluded or (None, a.abi) in excluded:
                reason = skip or excluded.get((v.version, a.abi)) or excluded.get((None, a.abi))
                statuses[a.abi] = AbiStatus("skipped", reason=reason)
            elif b is not None and b.status == "failed" and (v.version, a.abi) not in queued:
                statuses[a.abi] = AbiStatus(
                    "failed", build_id=b.build_id, reason=b.failure_class, duration=b.duration
                )
            elif (v.version, a.abi) in queued:
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
    recent, total = downloads.download_counts(conn, canon, 30)
    return ProjectData(
        name=canon,
        display_name=pkg.display_name,
        summary=pkg.summary,
        status=pkg.status,  # type: ignore[arg-type]
        status_reason=pkg.status_reason or None,
        aliases=tuple(a for a in packages.get_aliases(conn, canon)),
        versions=tuple(out),
        downloads_30d=recent,
        downloads_all=total,
        skip_reason=pkg.skip_reason or None,
        abis=tuple(a.abi for a in targets),
    )
