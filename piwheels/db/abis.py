"""Build targets (one Python ABI on one platform) and what each can serve."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag, parse_tag
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName

from ._common import atomic
from .schema import abis

_ABI_RE = re.compile(r"^cp(\d)(\d{1,2})$")
_PLATFORM_RE = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Abi:
    """A build target."""

    abi: str
    abi_tag: str
    py_major: int
    py_minor: int
    py_micro: int
    platform_tag: str
    glibc: str
    enabled: bool
    skip_reason: str
    env_version: int

    @property
    def py_order(self) -> int:
        return self.py_major * 100 + self.py_minor


def _row(r: object) -> Abi:
    m = r._mapping  # type: ignore[attr-defined]
    return Abi(
        abi=m["abi"],
        abi_tag=m["abi_tag"],
        py_major=m["py_major"],
        py_minor=m["py_minor"],
        py_micro=m["py_micro"],
        platform_tag=m["platform_tag"],
        glibc=m["glibc"],
        enabled=m["enabled"],
        skip_reason=m["skip_reason"],
        env_version=m["env_version"],
    )


def abi_name(abi_tag: str, platform_tag: str) -> str:
    return f"{abi_tag}-{platform_tag}"


def add_abi(
    conn: Connection,
    abi_tag: str,
    platform_tag: str,
    *,
    py_micro: int = 0,
    glibc: str = "",
    enabled: bool = True,
) -> Abi:
    """Add a build target (idempotent) and plan its builds; returns it."""
    m = _ABI_RE.fullmatch(abi_tag)
    if not m:
        raise InvalidName(f"not a CPython ABI tag (cpXY): {abi_tag!r:.40}")
    if not _PLATFORM_RE.fullmatch(platform_tag) or platform_tag == "any":
        raise InvalidName(f"not a platform tag: {platform_tag!r:.60}")
    if glibc and not re.match(r"^\d+\.\d+$", glibc):
        raise InvalidName(f"glibc must look like 2.36: {glibc!r:.20}")
    name = abi_name(abi_tag, platform_tag)
    with atomic(conn):
        result = conn.execute(
            pg_insert(abis)
            .values(
                abi=name,
                abi_tag=abi_tag,
                py_major=int(m.group(1)),
                py_minor=int(m.group(2)),
                py_micro=py_micro,
                platform_tag=platform_tag,
                glibc=glibc,
                enabled=enabled,
            )
            .on_conflict_do_nothing(index_elements=["abi"])
        )
        abi = get_abi(conn, name)
        assert abi is not None
        if result.rowcount:
            from . import queue, versions

            versions.compute_exclusions_for_abi(conn, abi)
            queue.refresh(conn, abi=name)
    return abi


def get_abi(conn: Connection, abi: str) -> Abi | None:
    row = conn.execute(select(abis).where(abis.c.abi == abi)).first()
    return _row(row) if row is not None else None


def list_abis(conn: Connection, *, enabled_only: bool = False) -> list[Abi]:
    """Targets ordered by Python version (never by the tag string), then platform."""
    query = select(abis).order_by(abis.c.py_major, abis.c.py_minor, abis.c.platform_tag)
    if enabled_only:
        query = query.where(abis.c.enabled)
    return [_row(r) for r in conn.execute(query)]


def _set(conn: Connection, abi: str, **values: object) -> None:
    from . import queue

    with atomic(conn):
        result = conn.execute(update(abis).where(abis.c.abi == abi).values(**values))
        if result.rowcount == 0:
            raise InvalidName(f"no such build target: {abi!r:.60}")
        queue.refresh(conn, abi=abi)


def set_enabled(conn: Connection, abi: str, enabled: bool) -> None:
    _set(conn, abi, enabled=enabled)


def skip_abi(conn: Connection, abi: str, reason: str) -> None:
    """Stop (or with an empty *reason*, resume) building anything for a target."""
    _set(conn, abi, skip_reason=reason)


def new_environment(conn: Connection, abi: str) -> int:
    """A new builder environment for *abi*: compile failures become eligible again."""
    from . import queue

    with atomic(conn):
        env = conn.execute(
            update(abis)
            .where(abis.c.abi == abi)
            .values(env_version=abis.c.env_version + 1)
            .returning(abis.c.env_version)
        ).scalar_one_or_none()
        if env is None:
            raise InvalidName(f"no such build target: {abi!r:.60}")
        queue.refresh(conn, abi=abi)
    return int(env)


@lru_cache(maxsize=64)
def supported_tags(
    abi_tag: str, platform_tag: str, py_major: int, py_minor: int, glibc: str
) -> frozenset[Tag]:
    """Every wheel tag an installer on this target accepts (manylinux up to its glibc)."""
    from packaging.tags import compatible_tags, cpython_tags

    platforms = [platform_tag]
    arch = platform_tag.split("_", 1)[1] if platform_tag.startswith("linux_") else ""
    if glibc and arch:
        major, minor = (int(x) for x in glibc.split("."))
        for m in range(minor, 4, -1):
            platforms.append(f"manylinux_{major}_{m}_{arch}")
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}.get(m)
            if legacy:
                platforms.append(f"{legacy}_{arch}")
    version = (py_major, py_minor)
    tags = set(cpython_tags(version, abis=[abi_tag], platforms=platforms))
    tags.update(compatible_tags(version, f"cp{py_major}{py_minor}", platforms))
    return frozenset(tags)


def exclusions(
    abi: Abi, requires_python: str, upstream_tags: tuple[str, ...]
) -> list[tuple[str, str]]:
    """Why a release must not be built for *abi*: (kind, reason) pairs, possibly none."""
    out: list[tuple[str, str]] = []
    if requires_python:
        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            spec = None  # unparseable metadata: try the build rather than guess
        python = f"{abi.py_major}.{abi.py_minor}.{abi.py_micro}"
        if spec is not None and not spec.contains(python, prereleases=True):
            out.append(("requires_python", f"Requires-Python {requires_python} excludes {python}"))
    if upstream_tags:
        supported = supported_tags(
            abi.abi_tag, abi.platform_tag, abi.py_major, abi.py_minor, abi.glibc
        )
        for triple in upstream_tags:
            try:
                if parse_tag(triple) & supported:
                    out.append(("upstream_wheel", f"upstream wheel {triple} serves it"))
                    break
            except ValueError:
                continue
    return out
