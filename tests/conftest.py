"""Suite-wide fixtures: one throwaway PostgreSQL cluster for the whole run.

The controlling pytest process starts the cluster once (or uses the server
named by ``PIWHEELS_TEST_DSN``, which must allow creating databases and
roles) and publishes its address in the environment, so xdist workers inherit
it.  Each worker then makes its own databases from there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DSN_VAR = "PIWHEELS_TEST_DSN"
#: Migrated database every test database is copied from (made once per run).
TEMPLATE_DB = "piwheels_template"
#: The least-privilege role piw-initdb creates in the template.
MASTER_ROLE = "piwheels"


def pytest_configure(config: pytest.Config) -> None:
    # Keep matplotlib and friends from writing into the real home.  The process
    # that makes the folder removes it; xdist workers inherit it.
    if not os.environ.get("MPLCONFIGDIR"):
        mpl_dir = tempfile.mkdtemp(prefix="piwtest-mpl-")
        os.environ["MPLCONFIGDIR"] = mpl_dir
        config._piwheels_mpl_dir = mpl_dir  # type: ignore[attr-defined]
    if hasattr(config, "workerinput"):
        return
    if not os.environ.get(DSN_VAR):
        from piwheels.pgcluster import Cluster

        root = Path(tempfile.mkdtemp(prefix="piwtest-pg-", dir="/tmp"))
        cluster = Cluster(root, fsync=False)
        cluster.start()
        config._piwheels_cluster = cluster  # type: ignore[attr-defined]
        os.environ[DSN_VAR] = cluster.url()
        os.environ["PIWHEELS_TEST_CLUSTER_OWNED"] = "1"
    _make_template(os.environ[DSN_VAR])


def _make_template(dsn: str) -> None:
    """Create the migrated template database (and the master's role) once per run."""
    from sqlalchemy import create_engine, text

    from piwheels.db import initdb

    url = dsn
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))
    engine.dispose()
    initdb.upgrade(_with_dbname(url, TEMPLATE_DB), yes=True, user=MASTER_ROLE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The README test is the longest (a fresh venv and real builds): start it first so the
    # other workers' tests run beside it rather than after it.
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_readme.py"))


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = getattr(config, "_piwheels_cluster", None)
    if cluster is not None:
        cluster.destroy()
        os.environ.pop(DSN_VAR, None)
        os.environ.pop("PIWHEELS_TEST_CLUSTER_OWNED", None)
    mpl_dir = getattr(config, "_piwheels_mpl_dir", None)
    if mpl_dir is not None:
        shutil.rmtree(mpl_dir, ignore_errors=True)
        os.environ.pop("MPLCONFIGDIR", None)


@pytest.fixture(scope="session")
def admin_url() -> str:
    """SQLAlchemy URL of a superuser connection to the test server."""
    url = os.environ[DSN_VAR]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _with_dbname(url: str, dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def new_database(admin_url: str) -> Iterator[Callable[..., str]]:
    """Factory: create an empty database (optionally from a template); return its URL.

    Every database made here is dropped at the end of the session.
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make(template: str | None = None, prefix: str = "piwtest") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        made.append(name)
        return _with_dbname(admin_url, name)

    yield make
    with engine.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    """A temporary folder with a short path (for ipc:// and Unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix="piw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def db_url(new_database: Callable[..., str]) -> str:
    """A migrated database of this worker's own (copied from the template)."""
    return new_database(template=TEMPLATE_DB, prefix="piwdb")


@pytest.fixture(scope="session")
def db_engine(db_url: str) -> Iterator[Any]:
    """An engine on :func:`db_url` (superuser)."""
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_conn(db_engine: Any) -> Iterator[Any]:
    """A connection inside a transaction that is rolled back after the test."""
    conn = db_engine.connect()
    trans = conn.begin()
    try:
        yield conn
    finally:
        trans.rollback()
        conn.close()
