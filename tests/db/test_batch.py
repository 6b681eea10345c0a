"""Batch APIs (add_versions, update_versions, finish_builds) equal their one-by-one forms."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from piwheels.db import builds, packages, queue, versions
from piwheels.db._common import canonical
from piwheels.db.builds import BuildResult
from piwheels.db.files import Dependency, FileRecord
from piwheels.db.versions import NewVersion
from piwheels.errors import BuildError, InvalidName, InvalidWheel

from . import factories as f

# Everything the batch functions write, without the columns that hold now().
SNAPSHOT = {
    "packages": "SELECT name, display_name, skip_reason, status FROM packages",
    "aliases": "SELECT alias, package FROM package_aliases",
    "versions": (
        "SELECT package, version, sort_key, valid, prerelease, released_at, yanked, "
        "yank_reason, skip_reason, has_sdist, upstream_wheel_serves, upstream_wheel_tags, "
        "requires_python FROM versions"
    ),
    "exclusions": "SELECT * FROM version_exclusions",
    "builds": "SELECT * FROM builds",
    "files": "SELECT * FROM files",
    "dependencies": "SELECT * FROM dependencies",
    "queue": "SELECT * FROM build_queue",
}


def snapshot(conn: Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        name: sorted((tuple(r) for r in conn.execute(text(sql))), key=repr)
        for name, sql in SNAPSHOT.items()
    }


def both_ways(
    conn: Connection, batch: Callable[[], object], single: Callable[[], object]
) -> tuple[object, object]:
    """Run *batch* and *single* from the same starting state; return their results.

    Asserts that both leave the database in the same state.
    """
    sp = conn.begin_nested()
    got_batch = batch()
    after_batch = snapshot(conn)
    sp.rollback()
    sp = conn.begin_nested()
    got_single = single()
    after_single = snapshot(conn)
    sp.rollback()
    assert after_batch == after_single
    return got_batch, got_single


WHEN = datetime(2024, 5, 1, tzinfo=UTC)

ROWS = [
    NewVersion("Foo_Bar", "1.0", released_at=WHEN),
    NewVersion("foo.bar", "2.0rc1", released_at=WHEN + timedelta(days=1)),
    NewVersion("foo-bar", "1.0"),  # repeated (another spelling): not new the second time
    NewVersion("old", "2004d"),  # legacy version string
    NewVersion("modern", "1.0", requires_python=">=3.10"),
    NewVersion("wheely", "1.0", upstream_wheel_tags=["cp39-cp39-manylinux_2_17_armv7l"]),
    NewVersion("served", "1.0", upstream_wheel_serves=True),
    NewVersion("nosdist", "1.0", has_sdist=False),
    NewVersion("yanked", "1.0", yanked=True, yank_reason="broken"),
    NewVersion("skipped", "1.0", skip_reason="too big"),
    NewVersion("existing", "1.0"),
    NewVersion("existing", "2.0"),
]


@pytest.fixture
def targets(db_conn):
    return [
        f.abi(db_conn, "cp39", glibc="2.36"),
        f.abi(db_conn, "cp311"),
        f.abi(db_conn, "cp313", "linux_aarch64"),
    ]


def _one_by_one(conn: Connection, rows: list[NewVersion]) -> list[tuple[str, str]]:
    out = []
    for r in rows:
        if versions.add_version(
            conn,
            r.package,
            r.version,
            released_at=r.released_at,
            requires_python=r.requires_python,
            has_sdist=r.has_sdist,
            upstream_wheel_tags=r.upstream_wheel_tags,
            upstream_wheel_serves=r.upstream_wheel_serves,
            yanked=r.yanked,
            yank_reason=r.yank_reason,
            skip_reason=r.skip_reason,
        ):
            out.append((canonical(r.package), r.version))
    return out


def test_add_versions_equals_one_by_one(db_conn, targets):
    versions.add_version(db_conn, "existing", "1.0")
    got_batch, got_single = both_ways(
        db_conn,
        lambda: versions.add_versions(db_conn, ROWS),
        lambda: _one_by_one(db_conn, ROWS),
    )
    assert got_batch == got_single
    assert ("foo-bar", "1.0") in got_batch and ("existing", "1.0") not in got_batch
    assert len(got_batch) == len(ROWS) - 2


def test_add_versions_is_idempotent_and_queues(db_conn, targets):
    cp39, cp311, _ = targets
    new = versions.add_versions(db_conn, ROWS)
    before = snapshot(db_conn)
    assert versions.add_versions(db_conn, ROWS) == []
    assert snapshot(db_conn) == before
    assert ("modern", "1.0") in new
    queued = {(q.package, q.version) for q in queue.next_builds(db_conn, cp39, 100)}
    # Requires-Python, upstream wheels, no sdist, yanks and skips keep releases out.
    assert queued == {
        ("foo-bar", "1.0"),
        ("foo-bar", "2.0rc1"),
        ("old", "2004d"),
        ("existing", "1.0"),
        ("existing", "2.0"),
    }
    assert ("modern", "1.0") in {
        (q.package, q.version) for q in queue.next_builds(db_conn, cp311, 100)
    }
    assert versions.add_versions(db_conn, []) == []


@pytest.mark.parametrize(
    "bad",
    [NewVersion("ok", "1.0 beta"), NewVersion("-bad", "1.0"), NewVersion("ok", "v" * 201)],
)
def test_add_versions_refuses_everything_on_one_bad_row(db_conn, targets, bad):
    before = snapshot(db_conn)
    with pytest.raises(InvalidName):
        versions.add_versions(db_conn, [NewVersion("good", "1.0"), bad, NewVersion("good", "2.0")])
    assert snapshot(db_conn) == before


def test_update_versions_equals_refresh_and_single_updates(db_conn, targets):
    cp39, cp311, _ = targets
    versions.add_versions(db_conn, ROWS)
    f.build(db_conn, "foo-bar", "1.0", cp39, tags="py3-none-any")
    f.build(db_conn, "existing", "1.0", cp311, failure="timeout")
    f.build(db_conn, "existing", "2.0", cp39, failure="compile_error")
    # Change the facts behind the data layer's back, so the queue is stale.
    db_conn.execute(text("UPDATE versions SET yanked = true WHERE package = 'old'"))
    db_conn.execute(text("UPDATE versions SET skip_reason = '' WHERE package = 'skipped'"))
    db_conn.execute(text("UPDATE packages SET priority = 5 WHERE name = 'existing'"))
    db_conn.execute(text("UPDATE builds SET retry_after = now() - interval '1 s'"))
    pairs = [tuple(r) for r in db_conn.execute(text("SELECT package, version FROM versions"))]
    pairs.append(("no-such", "1.0"))  # unknown releases are no error
    got_batch, got_single = both_ways(
        db_conn,
        lambda: queue.update_versions(db_conn, pairs + pairs[:3]),  # repeats count once
        lambda: sum(queue.update_version(db_conn, p, v) for p, v in pairs),
    )
    assert got_batch == got_single
    sp = db_conn.begin_nested()
    queue.update_versions(db_conn, pairs)
    incremental = snapshot(db_conn)["queue"]
    queue.refresh(db_conn)
    assert snapshot(db_conn)["queue"] == incremental
    assert got_batch == len(incremental)
    sp.rollback()
    assert queue.update_versions(db_conn, []) == 0


def test_update_versions_drops_rows_of_deleted_releases(db_conn, targets):
    f.version(db_conn, "gone", "1.0")
    db_conn.execute(text("DELETE FROM build_queue"))
    queue.update_versions(db_conn, [("gone", "1.0")])
    assert queue.queue_sizes(db_conn) == {t: 1 for t in targets}
    db_conn.execute(text("UPDATE versions SET removed_at = now()"))
    assert queue.update_versions(db_conn, [("gone", "1.0")]) == 0
    assert queue.queue_sizes(db_conn) == {}


def test_prepared_statement_survives_rollbacks(db_engine):
    with db_engine.connect() as conn:
        with conn.begin():
            sp = conn.begin_nested()
            assert queue.update_versions(conn, [("nothing", "1.0")]) == 0
            sp.rollback()
            assert queue.update_versions(conn, [("nothing", "1.0")]) == 0
        with conn.begin():
            assert queue.update_versions(conn, [("nothing", "2.0")]) == 0


def _start(conn: Connection, targets: list[str]) -> list[int]:
    ids = []
    for i in range(6):
        f.version(conn, f"p{i}", "1.0")
        ids.append(builds.start_build(conn, f"p{i}", "1.0", targets[i % 2], "b1"))
    return ids


def _results(ids: list[int]) -> list[BuildResult]:
    dep = (Dependency("apt", "libfoo1"), Dependency("pip", "numpy"))
    return [
        BuildResult(
            ids[0],
            "success",
            timedelta(seconds=30),
            files=(f.wheel("p0", "1.0", "py3-none-any", dependencies=dep),),
        ),
        BuildResult(
            ids[1],
            "success",
            timedelta(seconds=40),
            files=(
                f.wheel("p1", "1.0", "cp311-cp311-linux_armv7l", dependencies=dep),
                f.wheel("p1", "1.0", "cp39-abi3-linux_armv7l"),
            ),
            log_path="p1/1.0.log",
        ),
        BuildResult(ids[2], "failed", timedelta(seconds=5), "timeout"),
        BuildResult(ids[3], "failed", timedelta(seconds=5), "compile_error"),
        BuildResult(ids[4], "success", timedelta(seconds=1)),  # no wheel at all
        BuildResult(ids[5], "failed", timedelta(seconds=5), "builder_lost"),
    ]


def _finish_singly(conn: Connection, results: list[BuildResult]) -> list[builds.Build]:
    return [
        builds.finish_build(
            conn, r.build_id, r.status, r.duration, r.failure_class, r.files, r.log_path
        )
        for r in results
    ]


def test_finish_builds_equals_one_by_one(db_conn, targets):
    ids = _start(db_conn, targets)
    results = _results(ids)
    got_batch, got_single = both_ways(
        db_conn,
        lambda: builds.finish_builds(db_conn, results),
        lambda: _finish_singly(db_conn, results),
    )
    assert got_batch == got_single
    assert [b.build_id for b in got_batch] == ids  # type: ignore[attr-defined]
    done = builds.finish_builds(db_conn, results)
    assert done[2].retry_after is not None and done[3].retry_after is None
    # The pure wheel covers every target; the failures are back (later) or out.
    sizes = queue.queue_sizes(db_conn)
    assert sum(sizes.values()) > 0
    for t in targets:
        assert ("p0", "1.0") not in {
            (q.package, q.version) for q in queue.next_builds(db_conn, t, 100)
        }
    assert builds.finish_builds(db_conn, []) == []


def test_finish_builds_refuses_everything_on_one_bad_result(db_conn, targets):
    ids = _start(db_conn, targets)
    good = _results(ids)
    bad_cases: list[tuple[list[BuildResult], type[Exception], str]] = [
        ([*good[:2], BuildResult(10**9, "success", timedelta(1))], BuildError, "no such build"),
        ([good[0], good[0]], BuildError, "twice"),
        ([good[0], BuildResult(ids[1], "exploded", timedelta(1))], BuildError, "success or failed"),
        (
            [good[0], BuildResult(ids[1], "failed", timedelta(1), "made_up")],
            BuildError,
            "failure class",
        ),
        (
            [
                good[0],
                BuildResult(
                    ids[1], "success", timedelta(1), files=(FileRecord("../x.whl", 1, "0" * 64),)
                ),
            ],
            InvalidWheel,
            "not a safe",
        ),
        (
            # Two builds claiming one file name with different content.
            [
                good[0],
                BuildResult(
                    ids[1],
                    "success",
                    timedelta(1),
                    files=(FileRecord(good[0].files[0].filename, 5, "1" * 64),),
                ),
            ],
            InvalidWheel,
            "never replaced",
        ),
    ]
    for batch, exc, match in bad_cases:
        before = snapshot(db_conn)
        with pytest.raises(exc, match=match):
            builds.finish_builds(db_conn, batch)
        assert snapshot(db_conn) == before, match
    builds.finish_builds(db_conn, good[:1])
    before = snapshot(db_conn)
    with pytest.raises(BuildError, match="already finished"):
        builds.finish_builds(db_conn, good[1:3] + good[:1])
    assert snapshot(db_conn) == before


def test_abandon_builds_fails_them_all(db_conn, targets):
    ids = _start(db_conn, targets)
    builder = builds.get_build(db_conn, ids[0]).builder_id  # type: ignore[union-attr]
    assert sorted(builds.abandon_builds(db_conn, builder)) == sorted(ids)
    assert {builds.get_build(db_conn, i).failure_class for i in ids} == {"builder_lost"}  # type: ignore[union-attr]


def test_concurrent_batches_overlap_without_deadlock(db_url):
    engine = create_engine(db_url, pool_size=4)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)
    rows = [NewVersion(f"batch-{i % 7}", f"{i}.0") for i in range(60)]

    def writer(order: list[NewVersion]) -> None:
        try:
            barrier.wait(10)
            for _ in range(3):
                with engine.begin() as conn:
                    versions.add_versions(conn, order)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(rows,)),
        threading.Thread(target=writer, args=(rows[::-1],)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        with engine.connect() as conn:
            assert sum(len(versions.get_versions(conn, f"batch-{i}")) for i in range(7)) == 60
    finally:
        with engine.begin() as conn:
            for i in range(7):
                packages.delete_package(conn, f"batch-{i}")
        engine.dispose()


def test_deleting_releases_targets_and_projects_clears_their_queue_rows(db_conn, targets):
    versions.add_versions(
        db_conn, [NewVersion("keep", "1.0"), NewVersion("drop", "1.0"), NewVersion("drop", "2.0")]
    )
    assert sum(queue.queue_sizes(db_conn).values()) == 9
    versions.delete_version(db_conn, "drop", "1.0")
    packages.delete_package(db_conn, "drop")  # cascades to its versions
    assert {
        tuple(r) for r in db_conn.execute(text("SELECT DISTINCT package FROM build_queue"))
    } == {("keep",)}
    db_conn.execute(text("DELETE FROM abis WHERE abi = :a"), {"a": targets[0]})
    assert queue.queue_sizes(db_conn) == {targets[1]: 1, targets[2]: 1}


def test_release_deleted_during_recompute_leaves_no_orphan(new_database):
    """The recomputation locks its releases, so a concurrent delete waits for it."""
    # A database of its own: lock waits of other tests must not be counted here.
    engine = create_engine(new_database(template="piwheels_template"), pool_size=4)
    recompute = None
    with engine.begin() as conn:
        f.abi(conn, "cp312", "linux_riscv64")
        versions.add_versions(conn, [NewVersion("racing", "1.0")])
        # The recomputation below must insert its row (not find it there).
        conn.execute(text("DELETE FROM build_queue WHERE package = 'racing'"))
    try:
        recompute = engine.connect()
        tx = recompute.begin()
        assert queue.update_versions(recompute, [("racing", "1.0")]) == 1
        done = threading.Event()

        def delete() -> None:
            with engine.begin() as conn:
                versions.delete_version(conn, "racing", "1.0")
            done.set()

        thread = threading.Thread(target=delete)
        thread.start()
        # Wait until the delete is blocked on the recomputation's row lock.
        with engine.connect() as watcher:
            for _ in range(600):
                waiting = watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                # pg_stat_activity is read once per transaction: end it to look again.
                watcher.rollback()
                if waiting or done.is_set():
                    break
                time.sleep(0.05)
        assert not done.is_set() and waiting == 1
        tx.commit()
        recompute.close()
        recompute = None
        thread.join(30)
        assert done.is_set()
        with engine.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM build_queue WHERE package = 'racing'")
            ).scalar_one()
            assert left == 0
    finally:
        if recompute is not None:
            # A failed check must not leave the lock held: the cleanup would wait forever.
            recompute.close()
        engine.dispose()


def test_without_savepoint_same_outcome_and_no_savepoint_statements(db_conn, targets):
    """savepoint=False inside the caller's transaction: the same rows, two statements fewer."""
    from sqlalchemy import event

    ids = _start(db_conn, targets)
    results = _results(ids)
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(db_conn, "before_cursor_execute", seen)
    try:
        got_plain, got_nosp = both_ways(
            db_conn,
            lambda: builds.finish_builds(db_conn, results),
            lambda: builds.finish_builds(db_conn, results, savepoint=False),
        )
        assert got_plain == got_nosp
        sp = db_conn.begin_nested()
        f.version(db_conn, "fresh", "1.0")
        statements.clear()
        builds.finish_builds(db_conn, results, savepoint=False)
        started = builds.start_builds(
            db_conn, [("fresh", "1.0", targets[0], None)], savepoint=False
        )
        assert started[0] is not None
        assert statements and [s for s in statements if s in ("SAVEPOINT", "RELEASE")] == []
        sp.rollback()
    finally:
        event.remove(db_conn, "before_cursor_execute", seen)


def test_without_savepoint_an_error_leaves_the_whole_transaction_to_roll_back(db_conn, targets):
    ids = _start(db_conn, targets)
    good = _results(ids)
    before = snapshot(db_conn)
    sp = db_conn.begin_nested()  # the caller's own all-or-nothing transaction
    builds.finish_builds(db_conn, good[:1], savepoint=False)
    with pytest.raises(BuildError, match="no such build"):
        builds.finish_builds(
            db_conn, [good[1], BuildResult(10**9, "success", timedelta(1))], savepoint=False
        )
    sp.rollback()
    assert snapshot(db_conn) == before
