"""Helpers shared by the query modules: name and version checks, nested transactions,
server-side prepared statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName

from .schema import MAX_NAME, MAX_VERSION

# A project name as PEP 508 allows it (what upstream accepts).
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# Versions are kept as upstream spells them (legacy ones too) but must be printable
# and free of whitespace and path separators.
_VERSION_RE = re.compile(r"^[!-~]+$")


def check_name(name: str) -> str:
    """Return *name* (as given) if it is a storable project name; else raise InvalidName."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"empty or non-text project name: {name!r:.80}")
    if len(name) > MAX_NAME:
        raise InvalidName(f"project name longer than {MAX_NAME} characters: {name[:40]!r}...")
    if not _NAME_RE.fullmatch(name):
        raise InvalidName(f"not a valid project name: {name!r:.80}")
    return name


def canonical(name: str) -> str:
    """The PEP 503 canonical form of *name*, after checking it."""
    return str(canonicalize_name(check_name(name)))


def check_version(version: str) -> str:
    """Return *version* if it can be stored; else raise InvalidName."""
    if not isinstance(version, str) or not version:
        raise InvalidName(f"empty or non-text version: {version!r:.80}")
    if len(version) > MAX_VERSION:
        raise InvalidName(f"version longer than {MAX_VERSION} characters: {version[:40]!r}...")
    if not _VERSION_RE.fullmatch(version) or "/" in version or "\\" in version:
        raise InvalidName(f"version has spaces, control characters or slashes: {version!r:.80}")
    return version


@contextmanager
def atomic(conn: Connection) -> Iterator[Connection]:
    """A savepoint when a transaction is open (tests, callers' own), else a transaction.

    Each data-layer write is atomic this way: all of it or none of it.
    """
    if conn.in_transaction():
        with conn.begin_nested():
            yield conn
    else:
        with conn.begin():
            yield conn


def execute_prepared(conn: Connection, name: str, sql: str, types: str, args: tuple) -> Any:
    """Run *sql* (with ``$n`` parameters of *types*) as a server-side prepared statement.

    The statement is prepared once per database connection (PREPARE is not
    undone by a rollback), so repeated small calls skip parsing and planning.
    Python lists are sent as array literals; an empty one (``'{}'``) takes its
    parameter's type.
    """
    prepared: set[str] = conn.connection.info.setdefault("piw_prepared", set())
    if name not in prepared:
        conn.exec_driver_sql(f"PREPARE {name}({types}) AS {sql}")
        prepared.add(name)
    marks = ", ".join(["%s"] * len(args))
    return conn.exec_driver_sql(f"EXECUTE {name}({marks})", args)
