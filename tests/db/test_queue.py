"""Every rule of the build queue, on real PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from piwheels.db import abis, builds, packages, queue, versions
from piwheels.errors import BuildError, DatabaseError

from . import factories as f


def queued(conn, target: str) -> list[tuple[str, str]]:
    return [(q.package, q.version) for q in queue.next_builds(conn, target, 100)]


@pytest.fixture
def two(db_conn):
    """Two targets: cp39 and cp311 on armv7l."""
    return f.abi(db_conn, "cp39"), f.abi(db_conn, "cp311")


def test_new_version_is_queued_for_every_target(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    for target in two:
        assert queued(db_conn, target) == [("foo", "1.0")]


def test_package_skip(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    packages.skip_package(db_conn, "foo", "binary only")
    assert queued(db_conn, two[0]) == []
    packages.skip_package(db_conn, "foo", "")
    assert queued(db_conn, two[0]) == [("foo", "1.0")]


def test_version_skip(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    f.version(db_conn, "foo", "2.0")
    versions.skip_version(db_conn, "foo", "1.0", "broken")
    assert queued(db_conn, two[0]) == [("foo", "2.0")]


def test_abi_level_skips(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0")
    f.version(db_conn, "bar", "1.0")
    packages.skip_package_abi(db_conn, "foo", cp39, "needs newer python")
    assert queued(db_conn, cp39) == [("bar", "1.0")]
    assert ("foo", "1.0") in queued(db_conn, cp311)
    versions.skip_version_abi(db_conn, "bar", "1.0", cp311, "crashes compiler")
    assert queued(db_conn, cp311) == [("foo", "1.0")]
    abis.skip_abi(db_conn, cp311, "builders down")
    assert queued(db_conn, cp311) == []
    abis.skip_abi(db_conn, cp311, "")
    assert queued(db_conn, cp311) == [("foo", "1.0")]
    abis.set_enabled(db_conn, cp311, False)
    assert queued(db_conn, cp311) == []


def test_yanked_and_removed(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    f.version(db_conn, "foo", "2.0")
    f.version(db_conn, "foo", "3.0")
    versions.yank_version(db_conn, "foo", "1.0", "bad")
    versions.remove_version(db_conn, "foo", "2.0")
    assert queued(db_conn, two[0]) == [("foo", "3.0")]
    versions.unyank_version(db_conn, "foo", "1.0")
    assert ("foo", "1.0") in queued(db_conn, two[0])
    packages.remove_package(db_conn, "foo")
    assert queued(db_conn, two[0]) == []


def test_deleted_version_leaves_queue(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    versions.delete_version(db_conn, "foo", "1.0")
    assert queued(db_conn, two[0]) == []


def test_project_status(db_conn, two):
    f.version(db_conn, "foo", "1.0")
    packages.set_status(db_conn, "foo", "quarantined", "malware report")
    assert queued(db_conn, two[0]) == []
    packages.set_status(db_conn, "foo", "archived")
    assert queued(db_conn, two[0]) == [("foo", "1.0")]


def test_no_sdist_no_build(db_conn, two):
    f.version(db_conn, "foo", "1.0", has_sdist=False)
    assert queued(db_conn, two[0]) == []


def test_requires_python_excludes_targets(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0", requires_python=">=3.10")
    assert queued(db_conn, cp39) == []
    assert queued(db_conn, cp311) == [("foo", "1.0")]
    # A target added later is checked too.
    cp38 = f.abi(db_conn, "cp38")
    assert queued(db_conn, cp38) == []
    cp313 = f.abi(db_conn, "cp313")
    assert queued(db_conn, cp313) == [("foo", "1.0")]


def test_pure_wheel_covers_every_target(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp39, tags="py3-none-any")
    assert queued(db_conn, cp39) == []
    assert queued(db_conn, cp311) == []
    # And a target added afterwards is covered as well.
    assert queued(db_conn, f.abi(db_conn, "cp313")) == []
    assert queued(db_conn, f.abi(db_conn, "cp313", "linux_aarch64")) == []


def test_abi3_wheel_covers_newer_pythons_on_its_platform(db_conn):
    cp38 = f.abi(db_conn, "cp38")
    cp311 = f.abi(db_conn, "cp311")
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp311, tags="cp39-abi3-linux_armv7l")
    assert queued(db_conn, cp311) == []
    assert queued(db_conn, f.abi(db_conn, "cp313")) == []
    # Not older Pythons, nor another platform.
    assert queued(db_conn, cp38) == [("foo", "1.0")]
    assert queued(db_conn, f.abi(db_conn, "cp311", "linux_aarch64")) == [("foo", "1.0")]


def test_compiled_wheel_covers_only_its_target(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp39, tags="cp39-cp39-linux_armv7l")
    assert queued(db_conn, cp39) == []
    assert queued(db_conn, cp311) == [("foo", "1.0")]


def test_in_progress_build_holds_the_version_everywhere(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0")
    build_id = builds.start_build(db_conn, "foo", "1.0", cp39, "b1")
    assert queued(db_conn, cp311) == []
    with pytest.raises(BuildError, match="already being built"):
        builds.start_build(db_conn, "foo", "1.0", cp311, "b2")
    builds.finish_build(
        db_conn,
        build_id,
        "success",
        timedelta(seconds=3),
        files=[f.wheel("foo", "1.0", "cp39-cp39-linux_armv7l")],
    )
    assert queued(db_conn, cp311) == [("foo", "1.0")]


def test_upstream_wheel_skips_unless_configured(db_conn, two):
    cp39 = two[0]
    f.version(db_conn, "foo", "1.0", upstream_wheel_tags=["cp311-cp311-manylinux_2_17_armv7l"])
    f.version(db_conn, "bar", "1.0", upstream_wheel_serves=True)
    # Coverage by manylinux needs the target's glibc.
    glibc_target = f.abi(db_conn, "cp311", "linux_armv6l", glibc="2.36")
    assert queued(db_conn, glibc_target) == [("foo", "1.0")]  # armv6l: not served
    armv7 = f.abi(db_conn, "cp312", "linux_armv7l", glibc="2.36")
    f.version(db_conn, "baz", "1.0", upstream_wheel_tags=["cp312-cp312-manylinux_2_17_armv7l"])
    assert ("baz", "1.0") not in queued(db_conn, armv7)
    assert ("bar", "1.0") not in queued(db_conn, cp39)
    db_conn.execute(text("UPDATE configuration SET build_when_upstream_wheel = true"))
    queue.refresh(db_conn)
    assert ("baz", "1.0") in queued(db_conn, armv7)
    assert ("bar", "1.0") in queued(db_conn, cp39)


def test_order_priority_then_demand_then_newest(db_conn, two):
    cp39 = two[0]
    f.version(db_conn, "old", "1.0", days_ago=300)
    f.version(db_conn, "new", "1.0", days_ago=1)
    f.version(db_conn, "popular", "1.0", days_ago=500)
    assert queued(db_conn, cp39)[:2] == [("new", "1.0"), ("old", "1.0")]
    db_conn.execute(
        text(
            "INSERT INTO daily_package_stats (day, package, downloads, searches) "
            "VALUES (:d, 'popular', 50, 10), (:old, 'old', 1000, 0)"
        ),
        {"d": date.today() - timedelta(days=2), "old": date.today() - timedelta(days=90)},
    )
    assert queue.refresh_demand(db_conn) == 1  # 'old' demand is outside the 30 days
    assert queued(db_conn, cp39) == [("popular", "1.0"), ("new", "1.0"), ("old", "1.0")]
    packages.set_priority(db_conn, "old", 10)
    assert queued(db_conn, cp39)[0] == ("old", "1.0")


def test_transient_failures_back_off_then_stop(db_conn, two):
    cp39, cp311 = two
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp39, failure="timeout")
    # Waiting for the backoff: not handed out now, but still planned.
    assert queued(db_conn, cp39) == []
    assert queue.queue_sizes(db_conn)[cp39] == 1
    first = db_conn.execute(text("SELECT retry_after - now() FROM builds")).scalar_one()
    db_conn.execute(text("UPDATE builds SET retry_after = now() - interval '1 s'"))
    queue.update_version(db_conn, "foo", "1.0")
    [entry] = queue.next_builds(db_conn, cp39, 5)
    assert entry.attempt == 2
    f.build(db_conn, "foo", "1.0", cp39, failure="builder_lost")
    second = db_conn.execute(
        text("SELECT retry_after - now() FROM builds WHERE attempt = 2")
    ).scalar_one()
    assert second > first  # exponential backoff
    db_conn.execute(text("UPDATE builds SET retry_after = now() - interval '1 s'"))
    queue.update_version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp39, failure="disk_full")  # third attempt: the limit
    db_conn.execute(text("UPDATE builds SET retry_after = now() - interval '1 s'"))
    queue.update_version(db_conn, "foo", "1.0")
    assert queue.queue_sizes(db_conn).get(cp39, 0) == 0
    assert queued(db_conn, cp311) == [("foo", "1.0")]  # other target unaffected
    builds.request_retry(db_conn, "foo", "1.0", cp39)
    assert queued(db_conn, cp39) == [("foo", "1.0")]


def test_compile_failure_waits_for_new_environment_or_request(db_conn, two):
    cp39 = two[0]
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", cp39, failure="compile_error")
    assert queue.queue_sizes(db_conn).get(cp39, 0) == 0
    abis.new_environment(db_conn, cp39)
    assert queued(db_conn, cp39) == [("foo", "1.0")]
    f.build(db_conn, "foo", "1.0", cp39, failure="compile_error")
    assert queued(db_conn, cp39) == []
    builds.request_retry(db_conn, "foo", "1.0")
    assert queued(db_conn, cp39) == [("foo", "1.0")]


def test_full_refresh_equals_incremental(db_conn, two):
    cp39, cp311 = two
    for i in range(5):
        f.version(db_conn, f"p{i}", "1.0", requires_python=">=3.10" if i == 2 else "")
    f.build(db_conn, "p0", "1.0", cp39, tags="py3-none-any")
    f.build(db_conn, "p1", "1.0", cp311, failure="compile_error")
    versions.yank_version(db_conn, "p3", "1.0")
    before = db_conn.execute(text("SELECT * FROM build_queue ORDER BY 1, 2, 3")).all()
    queue.refresh(db_conn)
    after = db_conn.execute(text("SELECT * FROM build_queue ORDER BY 1, 2, 3")).all()
    assert before == after
    assert len(after) == 4  # p1@cp39, p2@cp311, p4 x 2


def test_deleting_a_build_requeues(db_conn, two):
    cp39 = two[0]
    f.version(db_conn, "foo", "1.0")
    build_id = f.build(db_conn, "foo", "1.0", cp39, tags="py3-none-any")
    assert queued(db_conn, cp39) == []
    assert builds.delete_build(db_conn, build_id) == ["foo-1.0-py3-none-any.whl"]
    assert queued(db_conn, cp39) == [("foo", "1.0")]


def _queue_shape(conn) -> tuple[list, list, list]:
    """build_queue's indexes, constraints and grants, as the catalogue has them."""
    indexes = conn.execute(
        text(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid = 'build_queue'::regclass ORDER BY 1"
        )
    ).all()
    constraints = conn.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'build_queue'::regclass ORDER BY 1"
        )
    ).all()
    grants = conn.execute(
        text(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_name = 'build_queue' ORDER BY 1, 2"
        )
    ).all()
    return indexes, constraints, grants


@pytest.mark.parametrize("rebuild", [True, False])
def test_full_refresh_both_ways_equals_incremental(db_conn, two, rebuild):
    """Rebuilt with its indexes dropped (owner) or rewritten through them (master role):
    the same rows, and the table keeps its indexes, keys and grants."""
    cp39, cp311 = two
    for i in range(6):
        f.version(db_conn, f"p{i}", "1.0", requires_python=">=3.10" if i == 2 else "")
    f.build(db_conn, "p0", "1.0", cp39, tags="py3-none-any")
    f.build(db_conn, "p1", "1.0", cp311, failure="compile_error")
    f.build(db_conn, "p5", "1.0", cp39, failure="timeout")
    versions.yank_version(db_conn, "p3", "1.0")
    before = db_conn.execute(text("SELECT * FROM build_queue ORDER BY 1, 2, 3")).all()
    shape = _queue_shape(db_conn)
    assert len(shape[0]) == 2 and shape[2]  # the primary key, the order index; grants
    # Stale rows (what a bulk load leaves) are replaced, missing ones come back.
    db_conn.execute(text("DELETE FROM build_queue WHERE package = 'p4'"))
    db_conn.execute(
        text(
            "INSERT INTO build_queue (abi, package, version, priority, demand, released_at, "
            "not_before, attempt) VALUES (:a, 'p0', '1.0', 0, 0, now(), now(), 1)"
        ),
        {"a": cp39},
    )
    work_mem = db_conn.execute(text("SHOW work_mem")).scalar_one()
    assert queue.refresh(db_conn, rebuild=rebuild) == len(before)
    after = db_conn.execute(text("SELECT * FROM build_queue ORDER BY 1, 2, 3")).all()
    assert before == after
    assert len(after) == 6  # p1@cp39, p2@cp311, p4 x 2, p5 x 2 (one waiting for its backoff)
    assert _queue_shape(db_conn) == shape
    assert db_conn.execute(text("SHOW work_mem")).scalar_one() == work_mem  # restored
    assert set(queued(db_conn, cp311)) == {("p2", "1.0"), ("p4", "1.0"), ("p5", "1.0")}
    with pytest.raises(IntegrityError), db_conn.begin_nested():  # the primary key is back
        db_conn.execute(text("INSERT INTO build_queue SELECT * FROM build_queue LIMIT 1"))


def test_master_role_refreshes_without_ddl(db_url):
    """The master's role may not drop indexes: its full refresh goes through them,
    and asking it to rebuild is refused clearly."""
    engine = create_engine(make_url(db_url).set(username="piwheels"))
    try:
        with engine.connect() as conn, conn.begin():
            cp39 = f.abi(conn, "cp39")
            f.version(conn, "foo", "1.0")
            assert queue.refresh(conn) == 1
            assert queued(conn, cp39) == [("foo", "1.0")]
            with pytest.raises(DatabaseError, match="owns build_queue"):
                queue.refresh(conn, rebuild=True)
            assert queued(conn, cp39) == [("foo", "1.0")]  # nothing lost
            conn.rollback()
    finally:
        engine.dispose()
