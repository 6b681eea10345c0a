"""The bulk project loader (the full rewrite's read) against the per-project loader."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from piwheels.db import builds, packages, projects
from piwheels.web.writer import SiteWriter
from tests.conftest import TEMPLATE_DB
from tests.db import factories as f
from tests.db.test_projects import _varied

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_site() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_site

        yield bench_site
    finally:
        sys.path.remove(str(BENCH))


def test_bulk_equals_per_project_on_bench_data(db_conn: Any, bench_site: Any) -> None:
    # The shape the benchmark measures: 10 versions x 3 targets, dependencies, downloads.
    bench_site.fill_database(db_conn, 12)
    names = [f"project-{i}" for i in range(12)]
    bulk = projects.get_projects_data(db_conn, names)
    assert list(bulk) == sorted(names)
    for name, data in bulk.items():
        assert data == projects.get_project_data(db_conn, name), name
    one = bulk["project-3"]
    assert len(one.versions) == 10 and len(one.files) == 30
    assert one.files[0].apt_dependencies == ("libc6", "libffi8")
    assert all(s.status == "built" for v in one.versions for s in v.builds.values())
    assert one.downloads_all == 30


def test_bulk_equals_per_project_on_every_state(db_conn: Any) -> None:
    names = _varied(db_conn)
    bulk = projects.get_projects_data(db_conn, names)
    for name, data in bulk.items():
        assert data == projects.get_project_data(db_conn, name), name


def test_newest_build_serves_a_target_two_files_serve(db_conn: Any) -> None:
    # Two pure wheels of one version (built on different targets) both serve both
    # targets: whichever order the rows come in, the newest build's file serves them.
    cp39 = f.abi(db_conn, "cp39")
    cp311 = f.abi(db_conn, "cp311")
    f.version(db_conn, "pure", "1.0")
    f.build(db_conn, "pure", "1.0", cp39, tags="py3-none-any")
    newer = f.build(db_conn, "pure", "1.0", cp311, tags="py2.py3-none-any")
    for data in (
        projects.get_projects_data(db_conn, ["pure"])["pure"],
        projects.get_project_data(db_conn, "pure"),
    ):
        (version,) = data.versions
        assert {abi: s.build_id for abi, s in version.builds.items()} == {
            cp39: newer,
            cp311: newer,
        }
        served = {fd.filename: fd.builder_abis for fd in version.files}
        assert served == {
            "pure-1.0-py2.py3-none-any.whl": (cp39, cp311),
            "pure-1.0-py3-none-any.whl": (),
        }


def test_bulk_reads_a_chunk_in_a_fixed_number_of_queries(
    db_conn: Any, bench_site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_site.fill_database(db_conn, 30)
    calls: list[str] = []
    real = projects._fetch

    def counting(cur: Any, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        calls.append(query)
        return real(cur, query, params)

    monkeypatch.setattr(projects, "_fetch", counting)
    counts = []
    for n in (1, 30):
        calls.clear()
        got = projects.get_projects_data(db_conn, [f"project-{i}" for i in range(n)])
        assert len(got) == n
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0


def test_loader_feeds_write_all(new_database: Any, bench_site: Any, tmp_path: Path) -> None:
    # In this process (engine) and in a pool (URL, a connection per worker): same pages.
    url = new_database(template=TEMPLATE_DB, prefix="piwload")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            bench_site.fill_database(conn, 7)
        names = [f"project-{i}" for i in range(7)] + ["never-was"]
        one = SiteWriter(tmp_path / "one")
        loader = projects.ProjectLoader(engine=engine)
        assert one.write_all(names, load_many=loader, chunk_size=3) == 7
        two = SiteWriter(tmp_path / "two")
        pooled = projects.ProjectLoader(url)
        assert two.write_all(names, load_many=pooled, chunk_size=3, workers=2) == 7
    finally:
        engine.dispose()
    for rel in ("simple/project-6/index.json", "project/project-0/json/index.json"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def _idle(conn: Any) -> bool:
    """True if *conn*'s server session is not in a transaction."""
    status = conn.connection.dbapi_connection.get_transaction_status()
    return bool(status == psycopg2.extensions.TRANSACTION_STATUS_IDLE)


@pytest.fixture
def kept(new_database: Any) -> Iterator[tuple[Engine, Connection, list[str]]]:
    """An engine on a fresh database of varied projects, a connection in autocommit on it
    (as the site process keeps one), and the projects' names."""
    engine = create_engine(new_database(template=TEMPLATE_DB, prefix="piwsnap"))
    try:
        with engine.begin() as conn:
            names = _varied(conn)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield engine, conn, names
    finally:
        engine.dispose()


def test_batch_in_autocommit_reads_one_snapshot(
    kept: tuple[Engine, Connection, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes committed while a batch is being read (between its queries) show in none of
    # its pages: the batch reads one snapshot, and then leaves no transaction open.
    engine, conn, names = kept
    before = projects.get_projects_batch(conn, names)
    assert _idle(conn)
    real = projects._fetch
    calls: list[str] = []

    def meanwhile(cur: Any, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows = real(cur, query, params)
        calls.append(query)
        if len(calls) == 1:  # after the first query: every table the later ones read
            with engine.begin() as other:
                cp39 = f.abi(other, "cp39")
                f.version(other, "alpha", "4.0")
                f.build(other, "alpha", "4.0", cp39, tags="cp39-cp39-linux_armv7l")
                f.version(other, "eta", "1.0")
                f.build(other, "eta", "1.0", cp39, tags="cp39-cp39-linux_armv7l")
                builds.request_retry(other, "alpha", "3.0a1")
                packages.add_alias(other, "Alpha")
                packages.set_status(other, "zeta", "active")
                other.execute(
                    text(
                        "INSERT INTO daily_package_stats (day, package, downloads) "
                        "VALUES (current_date, 'beta', 40)"
                    )
                )
        return rows

    monkeypatch.setattr(projects, "_fetch", meanwhile)
    during = projects.get_projects_batch(conn, names)
    monkeypatch.setattr(projects, "_fetch", real)
    assert len(calls) > 2
    assert during == before
    assert _idle(conn)
    after, published = projects.get_projects_batch(conn, names)
    assert after["alpha"].versions[0].version == "4.0"
    assert "Alpha" in after["alpha"].aliases
    assert after["beta"].downloads_all == before[0]["beta"].downloads_all + 40
    assert after["zeta"].status == "active" and before[0]["zeta"].status == "quarantined"
    assert "eta" in published - before[1]


def test_batch_error_leaves_no_transaction_open(
    kept: tuple[Engine, Connection, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read that fails half-way ends its transaction, so the kept connection can read again.
    _, conn, names = kept
    real = projects._fetch

    def failing(cur: Any, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if "FROM versions" in query:
            cur.execute("SELECT 1 / 0")  # a server error: the transaction is aborted
        return real(cur, query, params)

    monkeypatch.setattr(projects, "_fetch", failing)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        projects.get_projects_batch(conn, names)
    assert _idle(conn)
    monkeypatch.setattr(projects, "_fetch", real)
    assert "alpha" in projects.get_projects_batch(conn, names)[0]


@pytest.mark.parametrize("build_id", [0, 7, 12345, 99_999_999, 10**12 + 5])
def test_render_log_url_is_the_layout_one(build_id: int) -> None:
    from piwheels.web import layout, render

    assert render._log_url(build_id) == layout.log_url(build_id)
