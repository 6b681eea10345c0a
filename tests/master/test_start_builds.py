"""db.builds.start_builds (the dispatcher's batch of starts) equals start_build one by one."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from piwheels.db import builds, queue
from piwheels.errors import BuildError, InvalidName
from tests.db import factories as f


def _state(conn: Connection) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        text(
            "SELECT package, version, abi, builder_id, status, attempt, env_version "
            "FROM builds ORDER BY build_id"
        )
    )
    queued = conn.execute(text("SELECT abi, package, version FROM build_queue ORDER BY 1, 2, 3"))
    return [tuple(r) for r in rows] + [("queue",)] + [tuple(r) for r in queued]


def _singly(conn: Connection, wanted: list[tuple[str, str, str, int | None]]) -> list[int | None]:
    out: list[int | None] = []
    for p, v, a, b in wanted:
        try:
            out.append(builds.start_build(conn, p, v, a, b))
        except BuildError:
            out.append(None)
    return out


def test_start_builds_equals_start_build_one_by_one(db_conn: Connection) -> None:
    t1, t2 = f.abi(db_conn, "cp311"), f.abi(db_conn, "cp313", "linux_aarch64")
    for name in ("a", "b", "c", "d"):
        f.version(db_conn, name, "1.0")
    f.build(db_conn, "c", "1.0", t1, failure="timeout")  # a past failure: attempt 2
    busy = builds.start_build(db_conn, "d", "1.0", t2, "other")  # being built: refused
    builder = builds.register_builder(db_conn, "pi-1")
    wanted: list[tuple[str, str, str, int | None]] = [
        ("a", "1.0", t1, builder),
        ("A", "1.0", t2, builder),  # the same release again (another spelling): refused
        ("b", "1.0", t2, None),
        ("c", "1.0", t1, builder),
        ("d", "1.0", t1, builder),
        ("nosuch", "1.0", t1, builder),  # no such release: refused
        ("b", "2.0", t1, builder),  # no such version: refused
        ("a", "1.0", "cp99-nothing", builder),  # refused (and already taken above)
    ]
    sp = db_conn.begin_nested()
    got = builds.start_builds(db_conn, wanted)
    after_batch = _state(db_conn)
    sp.rollback()
    sp = db_conn.begin_nested()
    single = _singly(db_conn, wanted)
    after_single = _state(db_conn)
    sp.rollback()
    assert after_batch == after_single
    assert [g is None for g in got] == [s is None for s in single]
    assert [g is None for g in got] == [False, True, False, False, True, True, True, True]
    ids = builds.start_builds(db_conn, wanted)
    assert builds.get_build(db_conn, ids[3]).attempt == 2  # type: ignore[arg-type,union-attr]
    assert busy not in ids
    # Started releases leave the queue of every target.
    for t in (t1, t2):
        left = {(q.package, q.version) for q in queue.next_builds(db_conn, t, 100)}
        assert not left & {("a", "1.0"), ("b", "1.0"), ("c", "1.0")}
    assert builds.start_builds(db_conn, []) == []


def test_start_builds_unknown_target_refused(db_conn: Connection) -> None:
    f.abi(db_conn, "cp311")
    f.version(db_conn, "a", "1.0")
    assert builds.start_builds(db_conn, [("a", "1.0", "nope", None)]) == [None]
    assert db_conn.execute(text("SELECT count(*) FROM builds")).scalar_one() == 0


@pytest.mark.parametrize("bad", [("", "1.0"), ("a/b", "1.0"), ("a", ""), ("a", "1 .0")])
def test_start_builds_bad_names_raise_and_start_nothing(
    db_conn: Connection, bad: tuple[str, str]
) -> None:
    t = f.abi(db_conn, "cp311")
    f.version(db_conn, "a", "1.0")
    with pytest.raises(InvalidName):
        builds.start_builds(db_conn, [("a", "1.0", t, None), (bad[0], bad[1], t, None)])
    assert db_conn.execute(text("SELECT count(*) FROM builds")).scalar_one() == 0
