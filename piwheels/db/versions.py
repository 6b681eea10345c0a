"""Versions of a project: adding, yanking, skipping, removing; PEP 440 ordering in SQL."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from packaging.version import InvalidVersion, Version
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName
from piwheels.wheels import version_key as sort_key

from . import abis as abis_mod
from . import queue
from ._common import atomic, canonical, check_version
from .schema import version_exclusions, versions


def is_valid(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


@dataclass(frozen=True)
class VersionInfo:
    """One release of a project as stored."""

    package: str
    version: str
    valid: bool
    prerelease: bool
    released_at: datetime | None
    yanked: bool
    yank_reason: str
    skip_reason: str
    has_sdist: bool
    upstream_wheel_serves: bool
    upstream_wheel_tags: tuple[str, ...]
    requires_python: str
    removed_at: datetime | None


def _row(r: object) -> VersionInfo:
    m = r._mapping  # type: ignore[attr-defined]
    return VersionInfo(
        package=m["package"],
        version=m["version"],
        valid=m["valid"],
        prerelease=m["prerelease"],
        released_at=m["released_at"],
        yanked=m["yanked"],
        yank_reason=m["yank_reason"],
        skip_reason=m["skip_reason"],
        has_sdist=m["has_sdist"],
        upstream_wheel_serves=m["upstream_wheel_serves"],
        upstream_wheel_tags=tuple(m["upstream_wheel_tags"].split()),
        requires_python=m["requires_python"],
        removed_at=m["removed_at"],
    )


@dataclass(frozen=True)
class NewVersion:
    """A release to record with :func:`add_versions` (same fields as :func:`add_version`)."""

    package: str
    version: str
    released_at: datetime | None = None
    requires_python: str = ""
    has_sdist: bool = True
    upstream_wheel_tags: tuple[str, ...] | list[str] = ()
    upstream_wheel_serves: bool = False
    yanked: bool = False
    yank_reason: str = ""
    skip_reason: str = ""


_INSERT_PACKAGES = text(
    """
    INSERT INTO packages (name, display_name)
    SELECT * FROM unnest(CAST(:names AS text[]), CAST(:displays AS text[]))
    ON CONFLICT (name) DO NOTHING
    """
)
_INSERT_ALIASES = text(
    """
    INSERT INTO package_aliases (alias, package)
    SELECT * FROM unnest(CAST(:aliases AS text[]), CAST(:names AS text[]))
    ON CONFLICT (alias) DO NOTHING
    """
)
_INSERT_VERSIONS = text(
    """
    INSERT INTO versions (package, version, sort_key, valid, prerelease, released_at,
                          requires_python, has_sdist, upstream_wheel_tags,
                          upstream_wheel_serves, yanked, yank_reason, skip_reason)
    SELECT * FROM unnest(
        CAST(:package AS text[]), CAST(:version AS text[]), CAST(:sort_key AS bytea[]),
        CAST(:valid AS boolean[]), CAST(:prerelease AS boolean[]),
        CAST(:released_at AS timestamptz[]), CAST(:requires_python AS text[]),
        CAST(:has_sdist AS boolean[]), CAST(:upstream_wheel_tags AS text[]),
        CAST(:upstream_wheel_serves AS boolean[]), CAST(:yanked AS boolean[]),
        CAST(:yank_reason AS text[]), CAST(:skip_reason AS text[]))
    ON CONFLICT (package, version) DO NOTHING
    RETURNING package, version
    """
)


def _version_facts(version: str) -> tuple[bytes, bool, bool]:
    """(sort key, valid, prerelease) of a version string, parsing it once."""
    try:
        prerelease = Version(version).is_prerelease
    except InvalidVersion:
        return sort_key(version), False, False
    return sort_key(version), True, prerelease


def add_versions(conn: Connection, rows: Iterable[NewVersion]) -> list[tuple[str, str]]:
    """Record many releases (adding new projects) in a few statements.

    Returns the (canonical name, version) pairs that were new, in input order.
    Every row is checked before anything is written: one unusable name or
    version raises InvalidName and nothing is recorded.  Rows already stored
    (or repeated in *rows*) change nothing.
    """
    rows = list(rows)
    seen: dict[tuple[str, str], NewVersion] = {}
    aliases: dict[str, str] = {}
    displays: dict[str, str] = {}
    for row in rows:
        key = (canonical(row.package), check_version(row.version))
        seen.setdefault(key, row)
        aliases.setdefault(row.package, key[0])
        displays.setdefault(key[0], row.package)
    if not seen:
        return []
    # Sorted, so concurrent batches take their row locks in the same order.
    keys = sorted(seen)
    names = dict(sorted(displays.items()))
    cols: dict[str, list[object]] = {c: [] for c in _VERSION_COLUMNS}
    for key in keys:
        row = seen[key]
        key_bytes, valid, pre = _version_facts(key[1])
        for col, value in zip(
            _VERSION_COLUMNS,
            (
                key[0],
                key[1],
                key_bytes,
                valid,
                pre,
                row.released_at,
                row.requires_python or "",
                row.has_sdist,
                " ".join(row.upstream_wheel_tags),
                row.upstream_wheel_serves,
                row.yanked,
                row.yank_reason,
                row.skip_reason,
            ),
            strict=True,
        ):
            cols[col].append(value)
    alias_items = sorted(aliases.items())
    with atomic(conn):
        conn.execute(_INSERT_PACKAGES, {"names": list(names), "displays": list(names.values())})
        conn.execute(
            _INSERT_ALIASES,
            {"aliases": [a for a, _ in alias_items], "names": [n for _, n in alias_items]},
        )
        added = {(p, v) for p, v in conn.execute(_INSERT_VERSIONS, cols)}
        if not added:
            return []
        abi_list: list[abis_mod.Abi] | None = None
        for key in keys:
            row = seen[key]
            if key in added and (row.requires_python or row.upstream_wheel_tags):
                if abi_list is None:
                    abi_list = abis_mod.list_abis(conn)
                _store_exclusions(
                    conn,
                    key[0],
                    key[1],
                    row.requires_python,
                    tuple(row.upstream_wheel_tags),
                    abi_list,
                )
        queue.update_versions(conn, added)
    order = [(canonical(r.package), r.version) for r in rows]
    out: list[tuple[str, str]] = []
    for key in order:
        if key in added:
            out.append(key)
            added.discard(key)
    return out


_VERSION_COLUMNS = (
    "package",
    "version",
    "sort_key",
    "valid",
    "prerelease",
    "released_at",
    "requires_python",
    "has_sdist",
    "upstream_wheel_tags",
    "upstream_wheel_serves",
    "yanked",
    "yank_reason",
    "skip_reason",
)


def add_version(
    conn: Connection,
    package: str,
    version: str,
    *,
    released_at: datetime | None = None,
    requires_python: str = "",
    has_sdist: bool = True,
    upstream_wheel_tags: tuple[str, ...] | list[str] = (),
    upstream_wheel_serves: bool = False,
    yanked: bool = False,
    yank_reason: str = "",
    skip_reason: str = "",
) -> bool:
    """Record a release (adding the project if new); True if it was new.

    Adding a version that exists changes nothing (idempotent).  Invalid PEP 440
    strings are stored (ordered below valid ones); unusable strings (empty,
    spaces, too long) raise InvalidName.
    """
    row = NewVersion(
        package,
        version,
        released_at=released_at,
        requires_python=requires_python,
        has_sdist=has_sdist,
        upstream_wheel_tags=upstream_wheel_tags,
        upstream_wheel_serves=upstream_wheel_serves,
        yanked=yanked,
        yank_reason=yank_reason,
        skip_reason=skip_reason,
    )
    return bool(add_versions(conn, [row]))


def _store_exclusions(
    conn: Connection,
    package: str,
    version: str,
    requires_python: str,
    tags: tuple[str, ...],
    abi_list: list[abis_mod.Abi] | None = None,
) -> None:
    """Record, per target, whether Requires-Python or an upstream wheel rules it out."""
    if abi_list is None:
        if not requires_python and not tags:
            return
        abi_list = abis_mod.list_abis(conn)
    rows = []
    for abi in abi_list:
        for kind, reason in abis_mod.exclusions(abi, requires_python, tags):
            rows.append(
                {
                    "package": package,
                    "version": version,
                    "abi": abi.abi,
                    "kind": kind,
                    "reason": reason,
                }
            )
    if rows:
        conn.execute(pg_insert(version_exclusions).on_conflict_do_nothing(), rows)


def _key(package: str, version: str) -> tuple[str, str]:
    return canonical(package), check_version(version)


def _change(conn: Connection, package: str, version: str, **values: object) -> None:
    canon, version = _key(package, version)
    with atomic(conn):
        result = conn.execute(
            update(versions)
            .where(versions.c.package == canon, versions.c.version == version)
            .values(**values)
        )
        if result.rowcount == 0:
            raise InvalidName(f"no such version: {canon} {version}")
        queue.update_version(conn, canon, version)


def yank_version(conn: Connection, package: str, version: str, reason: str = "") -> None:
    """Mark a release yanked (PEP 592): no longer built."""
    _change(conn, package, version, yanked=True, yank_reason=reason)


def unyank_version(conn: Connection, package: str, version: str) -> None:
    _change(conn, package, version, yanked=False, yank_reason="")


def skip_version(conn: Connection, package: str, version: str, reason: str) -> None:
    """Stop building a release (an empty *reason* builds it again)."""
    _change(conn, package, version, skip_reason=reason)


def remove_version(conn: Connection, package: str, version: str) -> None:
    """Upstream deleted the release: keep the row (files still to unpublish), stop building."""
    _change(conn, package, version, removed_at=_now(conn))


def set_upstream(
    conn: Connection,
    package: str,
    version: str,
    *,
    requires_python: str | None = None,
    upstream_wheel_tags: tuple[str, ...] | list[str] | None = None,
    upstream_wheel_serves: bool | None = None,
    has_sdist: bool | None = None,
    released_at: datetime | None = None,
) -> None:
    """Update what upstream says about a release; recompute its per-target exclusions."""
    canon, version = _key(package, version)
    values: dict[str, object] = {}
    if requires_python is not None:
        values["requires_python"] = requires_python
    if upstream_wheel_tags is not None:
        values["upstream_wheel_tags"] = " ".join(upstream_wheel_tags)
    if upstream_wheel_serves is not None:
        values["upstream_wheel_serves"] = upstream_wheel_serves
    if has_sdist is not None:
        values["has_sdist"] = has_sdist
    if released_at is not None:
        values["released_at"] = released_at
    with atomic(conn):
        row = conn.execute(
            update(versions)
            .where(versions.c.package == canon, versions.c.version == version)
            .values(**values)
            .returning(versions.c.requires_python, versions.c.upstream_wheel_tags)
        ).first()
        if row is None:
            raise InvalidName(f"no such version: {canon} {version}")
        conn.execute(
            delete(version_exclusions).where(
                version_exclusions.c.package == canon,
                version_exclusions.c.version == version,
                version_exclusions.c.kind != "skip",
            )
        )
        _store_exclusions(conn, canon, version, row[0], tuple(row[1].split()))
        queue.update_version(conn, canon, version)


def skip_version_abi(conn: Connection, package: str, version: str, abi: str, reason: str) -> None:
    """Do not build this release for one target (an empty *reason* lifts the skip)."""
    canon, version = _key(package, version)
    with atomic(conn):
        conn.execute(
            delete(version_exclusions).where(
                version_exclusions.c.package == canon,
                version_exclusions.c.version == version,
                version_exclusions.c.abi == abi,
                version_exclusions.c.kind == "skip",
            )
        )
        if reason:
            conn.execute(
                insert(version_exclusions).values(
                    package=canon, version=version, abi=abi, kind="skip", reason=reason
                )
            )
        queue.update_version(conn, canon, version)


def delete_version(conn: Connection, package: str, version: str) -> bool:
    """Forget a release and everything about it (builds, files); True if it existed."""
    canon, version = _key(package, version)
    with atomic(conn):
        result = conn.execute(
            delete(versions).where(versions.c.package == canon, versions.c.version == version)
        )
    return result.rowcount > 0


def get_version(conn: Connection, package: str, version: str) -> VersionInfo | None:
    canon, version = _key(package, version)
    row = conn.execute(
        select(versions).where(versions.c.package == canon, versions.c.version == version)
    ).first()
    return _row(row) if row is not None else None


def get_versions(conn: Connection, package: str) -> list[VersionInfo]:
    """Every release of *package*, newest first (PEP 440; legacy strings last)."""
    canon = canonical(package)
    rows = conn.execute(
        select(versions)
        .where(versions.c.package == canon)
        .order_by(versions.c.sort_key.desc(), versions.c.version.desc())
    )
    return [_row(r) for r in rows]


def _now(conn: Connection) -> datetime:
    from sqlalchemy import func

    return conn.execute(select(func.now())).scalar_one()


def compute_exclusions_for_abi(conn: Connection, abi: abis_mod.Abi) -> int:
    """Per-target exclusions of every release for a new target (only releases with
    Requires-Python or upstream wheels can be excluded, so only those are read)."""
    rows = conn.execute(
        select(
            versions.c.package,
            versions.c.version,
            versions.c.requires_python,
            versions.c.upstream_wheel_tags,
        ).where((versions.c.requires_python != "") | (versions.c.upstream_wheel_tags != ""))
    )
    batch: list[dict[str, object]] = []
    count = 0
    for package, version, rp, tags in rows:
        for kind, reason in abis_mod.exclusions(abi, rp, tuple(tags.split())):
            batch.append(
                {
                    "package": package,
                    "version": version,
                    "abi": abi.abi,
                    "kind": kind,
                    "reason": reason,
                }
            )
    if batch:
        conn.execute(pg_insert(version_exclusions).on_conflict_do_nothing(), batch)
        count = len(batch)
    return count
