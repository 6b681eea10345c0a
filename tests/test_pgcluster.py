"""The private cluster used by the demo and the suite."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from piwheels.errors import DatabaseError
from piwheels.pgcluster import Cluster


def test_cluster_start_restart_stop(tmp_short: Path) -> None:
    cluster = Cluster(tmp_short / "pg", fsync=False)
    cluster.start()
    try:
        with psycopg2.connect(cluster.dsn()) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        cluster.stop()
        assert not cluster.running
        cluster.start()  # restart on the same data keeps it
        with psycopg2.connect(cluster.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (42,)
    finally:
        cluster.destroy()
    assert not (tmp_short / "pg").exists()


def test_cluster_refuses_overlong_path(tmp_short: Path) -> None:
    cluster = Cluster(tmp_short / ("x" * 120))
    with pytest.raises(DatabaseError, match="too long"):
        cluster.init()


def test_missing_binaries_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_short: Path
) -> None:
    from piwheels import pgcluster

    monkeypatch.setattr(pgcluster.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgcluster.shutil, "which", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "pgserver", None)
    monkeypatch.delenv("PIWHEELS_PG_BINDIR", raising=False)
    with pytest.raises(DatabaseError, match="apt-get install postgresql"):
        pgcluster.find_bindir()
