"""piw-initdb, the migrations and the master's least-privilege role."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from piwheels.db import initdb
from piwheels.db.schema import metadata
from piwheels.errors import DatabaseError, SchemaVersionError, UsageError


def test_migrated_schema_equals_declared(db_engine):
    with db_engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(ctx, metadata) == []


def test_every_table_and_column_is_commented(db_engine):
    with db_engine.connect() as conn:
        missing = conn.execute(
            text(
                """
                SELECT c.relname || '.' || coalesce(a.attname, '')
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
                     AND NOT a.attisdropped
                WHERE n.nspname = 'public' AND c.relkind = 'r'
                  AND c.relname <> 'alembic_version'
                  AND (obj_description(c.oid, 'pg_class') IS NULL
                       OR col_description(c.oid, a.attnum) IS NULL)
                """
            )
        ).all()
    assert missing == []


def _fresh_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def fresh(admin_url):
    """A database name that does not exist yet (dropped afterwards)."""
    import uuid

    name = f"piwinit_{uuid.uuid4().hex[:10]}"
    yield _fresh_url(admin_url, name)
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def test_creates_from_nothing_then_is_idempotent(fresh):
    assert initdb.plan(fresh)[0].startswith("create database")
    steps = initdb.upgrade(fresh, yes=True, user="piwheels")
    assert any("upgrade schema" in s for s in steps)
    assert initdb.plan(fresh) == []
    assert initdb.upgrade(fresh, yes=True) == []
    engine = create_engine(fresh)
    with engine.connect() as conn:
        initdb.check_schema(conn)
        assert conn.execute(text("SELECT schema_version FROM configuration")).scalar_one() == (
            initdb.head_revision()
        )
    engine.dispose()


def test_dry_run_changes_nothing(fresh, admin_url):
    out = io.StringIO()
    initdb.upgrade(fresh, dry_run=True, out=out)
    shown = out.getvalue()
    assert "create database" in shown
    assert "CREATE TABLE packages" in shown
    assert "GRANT" in shown
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        name = make_url(fresh).database
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar_one()
            == 0
        )
    engine.dispose()


def test_asks_and_a_no_changes_nothing(fresh):
    asked = []
    with pytest.raises(UsageError, match="cancelled"):
        initdb.upgrade(fresh, out=io.StringIO(), ask=lambda q: asked.append(q) or False)
    assert asked
    assert initdb.plan(fresh)[0].startswith("create database")


def test_no_terminal_refuses(fresh):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from piwheels.db.initdb import main; sys.exit(main(sys.argv[1:]))",
            "--dsn",
            fresh,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64
    assert "without confirmation" in proc.stderr
    assert "--yes" in proc.stderr


def test_refuses_database_newer_than_code(fresh):
    initdb.upgrade(fresh, yes=True)
    engine = create_engine(fresh)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer than this code"):
        initdb.upgrade(fresh, yes=True)
    assert initdb.main(["--dsn", fresh, "--yes"]) == SchemaVersionError.exit_code


def test_main_unreachable_database_is_one_line(capsys):
    # No server listens on this socket folder: one line naming the database, no traceback.
    url = "postgresql:///piwheels?host=/nonexistent-piwheels-socket"
    assert initdb.main(["--dsn", url, "--yes"]) == DatabaseError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("piw-initdb: error:") and "piwheels" in err
    assert "Traceback" not in err


# --- the master's role -------------------------------------------------------


@pytest.fixture
def master(db_url):
    """A connection to the test database as the least-privilege role."""
    engine = create_engine(make_url(db_url).set(username="piwheels"))
    conn = engine.connect()
    yield conn
    conn.close()
    engine.dispose()


@pytest.mark.parametrize(
    "stmt",
    [
        "DROP TABLE packages",
        "DROP TABLE downloads",
        "ALTER TABLE packages ADD COLUMN x int",
        "ALTER TABLE builds DROP COLUMN duration",
        "TRUNCATE downloads",
        "TRUNCATE build_queue",
        "CREATE TABLE mine (x int)",
        "CREATE INDEX ON packages (summary)",
        "DELETE FROM downloads",
        "UPDATE downloads SET client = ''",
        "INSERT INTO alembic_version VALUES ('x')",
        "UPDATE alembic_version SET version_num = 'x'",
        "DELETE FROM configuration",
        "INSERT INTO configuration (id, schema_version) VALUES (2, 'x')",
        "SELECT * FROM pg_authid",
        "DROP ROLE piwheels",
    ],
)
def test_master_role_cannot(master, stmt):
    with pytest.raises(ProgrammingError, match=r"(?i)permission denied|must be owner|must be"):
        master.execute(text(stmt))
    master.rollback()


def test_master_role_can_do_its_job(master):
    master.execute(text("SELECT count(*) FROM packages"))
    master.execute(
        text("INSERT INTO packages (name, display_name) VALUES ('rolecheck', 'RoleCheck')")
    )
    master.execute(text("UPDATE packages SET summary = 's' WHERE name = 'rolecheck'"))
    master.execute(
        text(
            "INSERT INTO downloads (accessed_at, kind, package, filename) "
            "VALUES (now(), 'pip', 'rolecheck', 'x.whl')"
        )
    )
    master.execute(text("UPDATE configuration SET max_attempts = 3"))
    master.rollback()


def test_master_role_cannot_read_outside_grants(db_url, master):
    admin = create_engine(db_url)
    with admin.begin() as conn:
        conn.execute(text("CREATE TABLE admin_notes (note text)"))
    try:
        with pytest.raises(ProgrammingError, match="permission denied"):
            master.execute(text("SELECT * FROM admin_notes"))
        master.rollback()
    finally:
        with admin.begin() as conn:
            conn.execute(text("DROP TABLE admin_notes"))
        admin.dispose()


def test_every_table_has_its_grants_decided():
    """A new table must be named in WRITES, or the master's role cannot write to it."""
    assert set(metadata.tables) == set(initdb.WRITES)


def test_refresh_queue_option_rebuilds_the_queue(new_database, capsys):
    """piw-initdb --refresh-queue brings back missing entries and drops stale ones."""
    from tests.db import factories as f

    url = new_database(template="piwheels_template")
    engine = create_engine(url)
    with engine.begin() as conn:
        target = f.abi(conn)
        for name in ("alpha", "beta"):
            f.version(conn, name, "1.0")
        expected = conn.execute(text("SELECT package FROM build_queue ORDER BY 1")).scalars().all()
        conn.execute(text("DELETE FROM build_queue WHERE package = 'alpha'"))
    assert expected == ["alpha", "beta"] and target
    assert initdb.main(["--dsn", url, "--yes", "--refresh-queue"]) == 0
    out = capsys.readouterr().out
    assert "build queue rebuilt: 2 entries" in out
    with engine.connect() as conn:
        after = conn.execute(text("SELECT package FROM build_queue ORDER BY 1")).scalars().all()
    engine.dispose()
    assert after == expected
