"""Row factories for database tests: make what a test needs in one call."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from itertools import count

from sqlalchemy.engine import Connection

from piwheels.db import abis, builds, versions
from piwheels.db.files import Dependency, FileRecord

_seq = count(1)


def abi(conn: Connection, tag: str = "cp311", platform: str = "linux_armv7l", **kw: object) -> str:
    return abis.add_abi(conn, tag, platform, **kw).abi  # type: ignore[arg-type]


def version(
    conn: Connection, package: str = "foo", ver: str = "1.0", days_ago: int = 1, **kw: object
) -> tuple[str, str]:
    released = datetime(2024, 1, 1, tzinfo=UTC) - timedelta(days=days_ago)
    versions.add_version(conn, package, ver, released_at=released, **kw)  # type: ignore[arg-type]
    return package, ver


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def wheel(package: str, ver: str, tags: str, **kw: object) -> FileRecord:
    name = f"{package.replace('-', '_')}-{ver}-{tags}.whl"
    return FileRecord(filename=name, size=1000 + next(_seq), sha256=sha(name), **kw)  # type: ignore[arg-type]


def build(
    conn: Connection,
    package: str,
    ver: str,
    target: str,
    *,
    tags: str | None = None,
    failure: str | None = None,
    builder: str = "builder1",
    deps: tuple[Dependency, ...] = (),
) -> int:
    """Start and finish a build: success with one wheel of *tags*, or a *failure*."""
    build_id = builds.start_build(conn, package, ver, target, builder)
    if failure:
        builds.finish_build(conn, build_id, "failed", timedelta(seconds=5), failure)
    else:
        files = [wheel(package, ver, tags, dependencies=deps)] if tags else []
        builds.finish_build(conn, build_id, "success", timedelta(seconds=60), files=files)
    return build_id
