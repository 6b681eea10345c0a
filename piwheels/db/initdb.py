"""piw-initdb: create or upgrade the piwheels database and the master's role.

Run it as a PostgreSQL superuser (or the owner of the database).  It:

1. creates the database when it does not exist;
2. upgrades the schema to this code's revision with alembic (the migrations
   in ``sql/``, installed as :mod:`piwheels.sql`);
3. creates the least-privilege role the master connects as and grants it
   exactly what it needs (see :data:`WRITES`).

It shows the plan first and asks before changing anything unless ``--yes``;
``--dry-run`` prints the plan and the SQL and changes nothing.  A database
whose schema is newer than this code is refused.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from piwheels.cli import Command
from piwheels.errors import DatabaseError, SchemaVersionError, UsageError
from piwheels.settings import Settings

DEFAULT_USER = "piwheels"
PASSWORD_VAR = "PIWHEELS_DB_PASSWORD"

#: What the master may do to each table beyond SELECT (everything else: SELECT only).
#: Hit tables are append-only, so INSERT alone; nothing gets TRUNCATE, ownership or DDL.
WRITES: dict[str, tuple[str, ...]] = {
    "configuration": ("UPDATE",),
    "upstream_state": ("UPDATE",),
    "packages": ("INSERT", "UPDATE", "DELETE"),
    "package_aliases": ("INSERT", "UPDATE", "DELETE"),
    "versions": ("INSERT", "UPDATE", "DELETE"),
    "abis": ("INSERT", "UPDATE"),
    "builders": ("INSERT", "UPDATE"),
    "package_abi_skips": ("INSERT", "UPDATE", "DELETE"),
    "version_exclusions": ("INSERT", "UPDATE", "DELETE"),
    "builds": ("INSERT", "UPDATE", "DELETE"),
    "files": ("INSERT", "UPDATE", "DELETE"),
    "dependencies": ("INSERT", "UPDATE", "DELETE"),
    "build_queue": ("INSERT", "UPDATE", "DELETE"),
    "rewrites_pending": ("INSERT", "UPDATE", "DELETE"),
    "upstream_todo": ("INSERT", "UPDATE", "DELETE"),
    "upstream_files": ("INSERT", "UPDATE", "DELETE"),
    "upstream_removals": ("INSERT", "UPDATE", "DELETE"),
    "downloads": ("INSERT",),
    "searches": ("INSERT",),
    "project_hits": ("INSERT",),
    "json_hits": ("INSERT",),
    "web_hits": ("INSERT",),
    "daily_package_stats": ("INSERT", "UPDATE", "DELETE"),
    "daily_client_stats": ("INSERT", "UPDATE", "DELETE"),
    "daily_web_stats": ("INSERT", "UPDATE", "DELETE"),
    "hourly_totals": ("INSERT", "UPDATE", "DELETE"),
    "daily_totals": ("INSERT", "UPDATE", "DELETE"),
    "monthly_package_stats": ("INSERT", "UPDATE", "DELETE"),
    "log_batches": ("INSERT", "DELETE"),
}


def alembic_config(
    url: str | None = None,
    *,
    connection: Connection | None = None,
    output: io.StringIO | None = None,
) -> Config:
    """An alembic configuration built in code (no ini file) for the installed migrations."""
    import piwheels.sql

    cfg = Config(output_buffer=output) if output is not None else Config()
    cfg.set_main_option("script_location", str(Path(piwheels.sql.__file__).parent))
    if url is not None:
        # Config values go through ConfigParser interpolation: escape '%'.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision (None for an empty database)."""
    return MigrationContext.configure(conn).get_current_revision()


def check_revision(current: str | None, *, url: str = "database") -> None:
    """Refuse a database whose schema is newer than (unknown to) this code."""
    if current is not None and current not in known_revisions():
        raise SchemaVersionError(
            f"{url}: schema revision {current} is newer than this code "
            f"(which knows up to {head_revision()}); install a newer piwheels"
        )


def check_schema(conn: Connection) -> None:
    """For the master: raise SchemaVersionError unless the schema is exactly current."""
    current = current_revision(conn)
    check_revision(current)
    if current != head_revision():
        raise SchemaVersionError(
            f"database schema is at revision {current or 'none'}, this code needs "
            f"{head_revision()}; run piw-initdb"
        )


def _display(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _maintenance_url(url: str) -> str:
    return make_url(url).set(database="postgres").render_as_string(hide_password=False)


def _database_exists(url: str) -> bool:
    name = make_url(url).database
    engine = create_engine(_maintenance_url(url))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
    except OperationalError as exc:
        raise DatabaseError(f"cannot connect to {_display(url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()
    return found is not None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


def _role_exists(conn: Connection, user: str) -> bool:
    return (
        conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :u"), {"u": user}).first()
        is not None
    )


def _quote_ident(name: str) -> str:
    if not name or len(name) > 63 or "\x00" in name:
        raise UsageError(f"not a usable role name: {name!r:.80}")
    return '"' + name.replace('"', '""') + '"'


def role_sql(dbname: str, user: str, *, exists: bool, password: str | None = None) -> list[str]:
    """The statements that create *user* (unless it exists) and set its grants."""
    role = _quote_ident(user)
    db = _quote_ident(dbname)
    stmts: list[str] = []
    if not exists:
        stmts.append(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
    if password is not None:
        literal = "'" + password.replace("'", "''") + "'"
        stmts.append(f"ALTER ROLE {role} PASSWORD {literal}")
    stmts += [
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"REVOKE ALL ON SCHEMA public FROM {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ]
    for table, rights in WRITES.items():
        stmts.append(f"GRANT {', '.join(rights)} ON {_quote_ident(table)} TO {role}")
    return stmts


def create_role(conn: Connection, user: str = DEFAULT_USER, password: str | None = None) -> None:
    """Create the master's role on *conn*'s database (if missing) and (re)apply its grants."""
    dbname = conn.execute(text("SELECT current_database()")).scalar_one()
    for stmt in role_sql(dbname, user, exists=_role_exists(conn, user), password=password):
        conn.execute(text(stmt))


def plan(url: str, user: str = DEFAULT_USER) -> list[str]:
    """What :func:`upgrade` would do to the database at *url*, one step per line."""
    steps: list[str] = []
    head = head_revision()
    name = make_url(url).database
    if not _database_exists(url):
        steps.append(f"create database {name}")
        current = None
        role_exists = False
        engine = create_engine(_maintenance_url(url))
        try:
            with engine.connect() as conn:
                role_exists = _role_exists(conn, user)
        finally:
            engine.dispose()
    else:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                current = current_revision(conn)
                role_exists = _role_exists(conn, user)
        finally:
            engine.dispose()
        check_revision(current, url=_display(url))
    if current != head:
        steps.append(f"upgrade schema from revision {current or 'none (empty)'} to {head}")
    if not role_exists:
        steps.append(f"create role {user}")
    return steps


def sql_script(url: str, user: str = DEFAULT_USER) -> str:
    """The SQL :func:`upgrade` would run (migrations rendered offline, then the grants)."""
    current: str | None = None
    role_exists = False
    if _database_exists(url):
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                current = current_revision(conn)
                role_exists = _role_exists(conn, user)
        finally:
            engine.dispose()
        check_revision(current, url=_display(url))
    buf = io.StringIO()
    head = head_revision()
    if current != head:
        cfg = alembic_config(url, output=buf)
        command.upgrade(cfg, f"{current}:head" if current else "head", sql=True)
    dbname = make_url(url).database or ""
    for stmt in role_sql(dbname, user, exists=role_exists):
        buf.write(stmt + ";\n")
    return buf.getvalue()


def _ask_terminal(question: str) -> bool:
    if sys.stdin is None or not sys.stdin.isatty():
        raise UsageError(
            "refusing to change the database without confirmation: no terminal to ask on "
            "(run with --yes to proceed, or --dry-run to see the plan)"
        )
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def upgrade(
    url: str,
    yes: bool = False,
    dry_run: bool = False,
    *,
    user: str = DEFAULT_USER,
    password: str | None = None,
    out: io.TextIOBase | None = None,
    ask: Callable[[str], bool] | None = None,
) -> list[str]:
    """Create or upgrade the database at *url* and the master's role; return the steps done.

    With *dry_run*, print the plan and the SQL and change nothing.  Without
    *yes*, ask (*ask*, default: on the terminal) before changing anything.
    """
    stream = out if out is not None else sys.stdout
    steps = plan(url, user)
    if dry_run:
        stream.write(f"plan for {_display(url)}:\n")
        for step in steps or ["nothing to change (grants are re-applied)"]:
            stream.write(f"  - {step}\n")
        stream.write("\n-- SQL (database creation aside):\n")
        stream.write(sql_script(url, user) if _database_exists(url) else _fresh_sql(url, user))
        return []
    if steps and not yes:
        stream.write(f"piw-initdb will change {_display(url)}:\n")
        for step in steps:
            stream.write(f"  - {step}\n")
        if not (ask or _ask_terminal)("Proceed?"):
            raise UsageError("cancelled; nothing was changed")
    if not _database_exists(url):
        _create_database(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            # Serialise concurrent piw-initdb runs on the same database.
            conn.execute(text("SELECT pg_advisory_xact_lock(424242)"))
            current = current_revision(conn)
            check_revision(current, url=_display(url))
            command.upgrade(alembic_config(connection=conn), "head")
            conn.execute(
                text("UPDATE configuration SET schema_version = :v"), {"v": head_revision()}
            )
            create_role(conn, user, password)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"{_display(url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()
    return steps


def _fresh_sql(url: str, user: str) -> str:
    buf = io.StringIO()
    command.upgrade(alembic_config(url, output=buf), "head", sql=True)
    for stmt in role_sql(make_url(url).database or "", user, exists=False):
        buf.write(stmt + ";\n")
    return buf.getvalue()


def _create_database(url: str) -> None:
    name = make_url(url).database or ""
    engine = create_engine(_maintenance_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {_quote_ident(name)}"))
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot create database {name}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask before changing")
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="print the plan and SQL; change nothing"
    )
    parser.add_argument(
        "--refresh-queue",
        action="store_true",
        help="then rebuild the whole build queue with its indexes dropped and recreated "
        "(after a bulk import or a change of build targets; the master's builds wait meanwhile)",
    )


def _initdb(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.database.dsn
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]
    steps = upgrade(
        url,
        yes=args.yes,
        dry_run=args.dry_run,
        user=settings.database.role,
        password=os.environ.get(PASSWORD_VAR),
    )
    if not args.dry_run:
        done = "; ".join(steps) if steps else "already current (grants re-applied)"
        print(f"piw-initdb: {_display(url)}: {done}")
        if args.refresh_queue:
            refresh_queue(url)
    return 0


def refresh_queue(url: str, stream: TextIO | None = None) -> int:
    """Rebuild the whole build queue as the table's owner; returns the rows queued."""
    from . import queue  # the data layer is not needed for plain schema work

    stream = stream or sys.stdout
    stream.write("piw-initdb: rebuilding the build queue (builds wait until it is done)...\n")
    stream.flush()
    start = time.monotonic()
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            count = queue.refresh(conn, rebuild=True)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"{_display(url)}: {_first_line(exc)}") from exc
    finally:
        engine.dispose()
    stream.write(
        f"piw-initdb: build queue rebuilt: {count:,} entries in {time.monotonic() - start:.1f} s\n"
    )
    return count


COMMAND = Command(
    _initdb,
    prog="piw-initdb",
    description=(
        "Create or upgrade the piwheels database and the role the master uses. "
        "Connect as a superuser: --dsn names the database to create or upgrade, "
        "--db-role the least-privilege role the master will connect as "
        f"(its password, if any, is read from ${PASSWORD_VAR})."
    ),
    sections=("database",),
    add_arguments=_arguments,
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of piw-initdb; returns the exit code."""
    return COMMAND.run(argv)
