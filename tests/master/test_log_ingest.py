"""LogIngest: batches stored once, acknowledged after commit, NACK while PostgreSQL is down."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from piwheels import protocols
from piwheels.db import initdb
from piwheels.db.downloads import store_log_batch as store_batch
from piwheels.db.stats import prune_batches, rollup_day
from piwheels.logger.batch import encode as encode_batch
from piwheels.logger.classify import AccessRecord
from piwheels.master.log_ingest import LogIngest
from piwheels.pgcluster import Cluster
from piwheels.transport import DEALER, Context, encode
from tests.peer import ScriptedPeer, wait_for
from tests.stats.pipeline import log_records, make_env, run_logger, running_ingest
from tests.synthetic_logs import generate

CLIENT = "0123456789abcdef"


def batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A packed batch (without batch_id) from partial records (defaults: a pip download of foo)."""
    base = {
        "time": datetime(2021, 10, 1, 12, tzinfo=UTC),
        "kind": "download",
        "target": "download",
        "package": "foo",
        "filename": "foo-1.0-py3-none-any.whl",
        "page": None,
        "status": 200,
        "bytes_sent": 1000,
        "client": CLIENT,
        "distro_name": "Debian GNU/Linux",
        "distro_version": "12",
        "os_name": "Linux",
        "os_version": "6.1",
        "arch": "armv7l",
        "py_impl": "CPython",
        "py_version": "3.11.2",
        "installer_name": "pip",
        "installer_version": "23.0.1",
        "setuptools_version": "66.1.1",
        "ci": False,
    }
    full = [{**base, **r} for r in rows]
    return encode_batch(AccessRecord(**r) for r in full)


@pytest.fixture
def engine(new_database: Callable[..., str]) -> Iterator[Engine]:
    eng = create_engine(new_database(template="piwheels_template"))
    yield eng
    eng.dispose()


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.close()


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_resent_batch_is_stored_once(engine: Engine, context: Context, tmp_short: Path) -> None:
    task = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log", tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,),
        identity=b"logger-a",
    )  # fmt: skip
    try:
        records = batch([{}, {"kind": "index", "target": "index", "filename": None}])
        peer.send("BATCH", {"batch_id": 1, **records})
        peer.expect("ACK", {"batch_id": 1, "stored": 2})
        peer.send("BATCH", {"batch_id": 1, **records})
        peer.expect("ACK", {"batch_id": 1, "stored": 2})
        assert count(engine, "downloads") == 1
        assert count(engine, "searches") == 1
        assert task.duplicates == 1
        # Another logger's batch 1 is another batch.
        other = ScriptedPeer(
            context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,),
            identity=b"logger-b",
        )  # fmt: skip
        other.send("BATCH", {"batch_id": 1, **records})
        other.expect("ACK", {"batch_id": 1, "stored": 2})
        other.close()
        assert count(engine, "downloads") == 2
    finally:
        peer.close()
        task.close()


def test_resend_after_a_master_restart_is_stored_once(
    engine: Engine, context: Context, tmp_short: Path
) -> None:
    """Stored, then the master stops before its ACK: a new master skips the resend."""
    records = batch([{}, {}, {"kind": "index", "target": "index", "filename": None}])
    first = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log1", tmp_short))
    try:
        # What do_BATCH commits before it answers; the ACK is never sent.
        with engine.begin() as conn:
            res = store_batch(
                conn, records["tables"], records["extra"], source=b"logger-a", batch_id=7
            )
        assert (res.stored, res.duplicate) == (3, False)
    finally:
        first.close()
    assert count(engine, "downloads") == 2
    # A new master (nothing in memory) on the same database gets the resend.
    second = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log2", tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=second.address, drive=(second,),
        identity=b"logger-a",
    )  # fmt: skip
    try:
        peer.send("BATCH", {"batch_id": 7, **records})
        peer.expect("ACK", {"batch_id": 7, "stored": 3})
        assert second.duplicates == 1
        assert second.stored == 0
        assert count(engine, "downloads") == 2
        assert count(engine, "searches") == 1
        with engine.connect() as conn:
            total = conn.execute(text("SELECT sum(downloads) FROM daily_totals")).scalar_one()
        assert total == 2
        # The next batch of the same logger is stored as usual.
        peer.send("BATCH", {"batch_id": 8, **records})
        peer.expect("ACK", {"batch_id": 8, "stored": 3})
        assert count(engine, "downloads") == 4
    finally:
        peer.close()
        second.close()


def test_master_role_can_store_roll_up_and_prune(engine: Engine) -> None:
    """The least-privilege role piw-initdb makes can do every write of the ingest path."""
    records = batch([{}, {"kind": "index", "target": "index", "filename": None}])
    role = create_engine(engine.url.set(username=initdb.DEFAULT_USER))
    try:
        with role.begin() as conn:
            res = store_batch(
                conn, records["tables"], records["extra"], source=b"logger-r", batch_id=1
            )
            assert (res.stored, res.duplicate) == (2, False)
            rollup_day(conn, date(2021, 10, 1))
            prune_batches(conn, keep_days=2)  # DELETE on log_batches: raises without the grant
    finally:
        role.dispose()
    assert count(engine, "downloads") == 1
    with engine.connect() as conn:
        total = conn.execute(text("SELECT sum(downloads) FROM daily_totals")).scalar_one()
    assert total == 1


def test_stored_batch_ids_are_pruned(engine: Engine) -> None:
    records = batch([{}])
    with engine.begin() as conn:
        store_batch(conn, records["tables"], records["extra"], source=b"old", batch_id=1)
        store_batch(conn, records["tables"], records["extra"], source=b"new", batch_id=1)
        conn.execute(
            text("UPDATE log_batches SET stored_at = now() - interval '3 days' WHERE source = :s"),
            {"s": b"old"},
        )
    with engine.connect() as conn:
        assert prune_batches(conn, keep_days=2) == 1
        left = conn.execute(text("SELECT source FROM log_batches")).scalars().all()
    assert [bytes(x) for x in left] == [b"new"]


def test_bad_input(engine: Engine, context: Context, tmp_short: Path) -> None:
    task = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log", tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,)
    )
    try:
        # A malformed message is dropped; the task goes on.
        peer.socket.send_raw([b"\xa1\x00garbage"])
        rows = batch(
            [
                {"client": "192.0.2.1"},  # a raw address is never stored
                {"kind": "weird", "target": "weird"},  # unknown kind: skipped
                {"kind": "download", "package": None},  # a download without its package
                {"kind": "bot", "target": "project", "filename": None},  # a bot's page hit
                {"kind": "metadata", "target": "metadata", "bytes_sent": 77},
                {"kind": "bot", "target": "other", "bytes_sent": 5},
            ]
        )
        peer.send("BATCH", {"batch_id": 9, **rows})
        peer.expect("ACK", {"batch_id": 9, "stored": 4})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT client FROM downloads")).scalars().all() == [""]
            assert conn.execute(text("SELECT kind FROM project_hits")).scalars().all() == ["bot"]
            extra = conn.execute(
                text(
                    "SELECT source, kind, hits, bytes_sent FROM daily_web_stats "
                    "WHERE page = '' ORDER BY 1"
                )
            ).all()
        assert [tuple(r) for r in extra] == [("metadata", "pip", 1, 77), ("other", "bot", 1, 5)]

        def rolled() -> tuple[int, int, int]:
            with engine.connect() as conn:
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM daily_web_stats WHERE source IN ('metadata', 'other')"
                    )
                ).scalar_one()
                dl = conn.execute(text("SELECT sum(downloads) FROM daily_package_stats"))
                ph = conn.execute(
                    text("SELECT coalesce(sum(project_hits), 0) FROM daily_package_stats")
                )
                return (n, dl.scalar_one(), ph.scalar_one())

        # The rollups are current at the ACK; bots stay out of downloads and hits.
        assert rolled() == (2, 1, 0)
        # Rolling up again from the raw hits gives the same, keeping the bandwidth rows.
        task.dirty.add(date(2021, 10, 1))
        task.rollup_dirty()
        assert rolled() == (2, 1, 0)
    finally:
        peer.close()
        task.close()


def test_packed_rows_checked_once_per_batch(
    engine: Engine, context: Context, tmp_short: Path
) -> None:
    """Hand-made payloads: a raw address or a bad kind is refused by the protocol (no
    answer: the batch is malformed); a row only PostgreSQL can refuse is not stored."""
    task = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log", tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,)
    )
    good = b"2021-10-01T12:00:00+00\t" + CLIENT.encode() + b"\tpip\t10\tfoo\n"
    try:
        for bad in (
            good.replace(CLIENT.encode(), b"192.0.2.1"),
            good.replace(b"\tpip\t", b"\tcrawler\t"),
            good.replace(b"\tfoo\n", b"\t\\N\n"),  # a hit without its package
            good[:-1],  # no end of row
        ):
            payload = {"batch_id": 3, "records": 2, "tables": {"json_hits": good + bad}}
            peer.socket.send_raw([encode("BATCH", {**payload, "extra": []})])
        payload = {
            "batch_id": 4,
            "records": 2,
            "tables": {"json_hits": good + good.replace(b"10-01", b"02-30")},
            "extra": [],
        }
        peer.send("BATCH", payload)
        peer.expect("ACK", {"batch_id": 4, "stored": 0})
        assert task.rejected == 1 and count(engine, "json_hits") == 0
        peer.send("BATCH", {**payload, "batch_id": 5, "tables": {"json_hits": good * 3}})
        peer.expect("ACK", {"batch_id": 5, "stored": 3})
        assert count(engine, "json_hits") == 3
    finally:
        peer.close()
        task.close()


def test_midnight_rollup_flags_a_spike(
    engine: Engine, context: Context, tmp_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [datetime(2021, 10, 20, 23, 59, tzinfo=UTC)]
    task = LogIngest(
        context,
        make_env(engine, f"ipc://{tmp_short}/log", tmp_short),
        clock=lambda: now[0],
        spike_factor=3.0,
    )
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,)
    )
    try:
        rows = []
        for d in range(20):
            day = datetime(2021, 10, 1, 12, tzinfo=UTC) + timedelta(days=d)
            rows += [{"time": day, "package": f"steady{i}"} for i in range(10)]
        spike_day = datetime(2021, 10, 20, 15, tzinfo=UTC)
        rows += [{"time": spike_day, "package": "surprise", "py_version": "2.7.16"}] * 60
        peer.send("BATCH", {"batch_id": 1, **batch(rows)})
        peer.expect("ACK")
        caplog.set_level(logging.WARNING, logger="piwheels.log_ingest")
        task._tick()
        assert task.spikes == []  # still the same day: nothing checked yet
        now[0] += timedelta(minutes=2)
        task._tick()
        assert [s.day for s in task.spikes] == [date(2021, 10, 20)]
        assert task.spikes[0].packages == ["surprise"]
        assert task.spikes[0].python == {"2.7.16": 60}
        assert any("surprise" in r.getMessage() for r in caplog.records)
        assert not task.dirty
    finally:
        peer.close()
        task.close()


def test_database_restart_loses_nothing(tmp_path: Path) -> None:
    """Stop PostgreSQL under a running ingest: NACKs, then the resends are stored once."""
    root = Path(tempfile.mkdtemp(prefix="piwtest-pg2-", dir="/tmp"))
    cluster = Cluster(root, fsync=False)
    cluster.start()
    sock_dir = Path(tempfile.mkdtemp(prefix="piw-", dir="/tmp"))
    try:
        url = cluster.url("piwheels_restart")
        admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE piwheels_restart"))
        admin.dispose()
        initdb.upgrade(url, yes=True)
        log = tmp_path / "access.log"
        truth = generate(log, days=2, lines_per_day=1500, seed=11)
        expected = len(log_records(log))
        engine = create_engine(url, pool_pre_ping=True)
        address = f"ipc://{sock_dir}/log"
        result: dict[str, Any] = {}
        with running_ingest(engine, address, tmp_path) as ingest:
            cluster.stop()
            worker = threading.Thread(
                target=lambda: result.update(
                    out=run_logger(
                        [str(log), "--batch-size", "300", "--ack-timeout", "2", "-v"],
                        address,
                        tmp_path / "secret",
                    )
                )
            )
            worker.start()
            wait_for(lambda: ingest.refused >= 2, timeout=60)
            assert ingest.stored == 0
            cluster.start()
            worker.join(120)
            assert not worker.is_alive()
        code, err = result["out"]
        assert code == 0, err
        assert "refused" in err
        with engine.connect() as conn:
            stored = sum(
                conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("downloads", "searches", "project_hits", "json_hits", "web_hits")
            )
            extra = conn.execute(
                text("SELECT coalesce(sum(hits), 0) FROM daily_web_stats WHERE page = ''")
            ).scalar_one()
            downloads = conn.execute(
                text("SELECT sum(downloads) FROM daily_package_stats")
            ).scalar_one()
        engine.dispose()
        assert stored + extra == expected
        assert downloads == truth["kinds"]["download"]
    finally:
        cluster.destroy()


def test_waiting_batches_are_stored_together(
    engine: Engine, context: Context, tmp_short: Path
) -> None:
    """Batches queued behind one another go in one transaction; a resend in the same group
    counts once; one bad batch in a group refuses only itself."""
    # inproc: a message is in the task's queue when send returns, so the batches sent
    # before the task runs all wait for it (over ipc one could still be in flight).
    address = f"inproc://log-{tmp_short.name}"
    task = LogIngest(context, make_env(engine, address, tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,)
    )
    good = batch([{}, {"kind": "index", "target": "index", "filename": None}])
    bad_rows = good["tables"]["downloads"].replace(b"2021-10-01", b"2021-02-30")
    bad = {**good, "tables": {**good["tables"], "downloads": bad_rows}}
    try:
        # Sent before the task runs: all five wait in its socket.
        for batch_id in (1, 2, 3, 4, 2):
            peer.send("BATCH", {"batch_id": batch_id, **good})
        for batch_id in (1, 2, 3, 4, 2):
            peer.expect("ACK", {"batch_id": batch_id, "stored": 2})
        assert (task.groups, task.batches, task.duplicates, task.stored) == (1, 4, 1, 8)
        assert count(engine, "downloads") == 4 and count(engine, "searches") == 4
        with engine.connect() as conn:
            totals = conn.execute(
                text("SELECT sum(downloads), sum(searches) FROM daily_totals")
            ).one()
        assert tuple(totals) == (4, 4)
        for batch_id, payload in ((5, good), (6, bad), (7, good), (5, good)):
            peer.send("BATCH", {"batch_id": batch_id, **payload})
        for batch_id, stored in ((5, 2), (6, 0), (7, 2), (5, 2)):
            peer.expect("ACK", {"batch_id": batch_id, "stored": stored})
        assert task.rejected == 1 and task.batches == 6 and task.duplicates == 2
        assert count(engine, "downloads") == 6
    finally:
        peer.close()
        task.close()


def test_batches_are_received_and_checked_while_a_group_is_stored(
    engine: Engine, context: Context, tmp_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The storing thread holds a group (PostgreSQL blocks its COPY on a lock): the task
    still receives and refuses a bad message, answers nothing before the commit, then
    acknowledges the held group and stores the batch that came in meanwhile."""
    task = LogIngest(context, make_env(engine, f"ipc://{tmp_short}/log", tmp_short))
    peer = ScriptedPeer(
        context, DEALER, reversed(protocols.logger), connect=task.address, drive=(task,)
    )
    good = batch([{}, {"kind": "index", "target": "index", "filename": None}])
    locker = engine.connect()
    once = threading.Lock()

    def release() -> None:
        if once.acquire(blocking=False):
            locker.rollback()

    # Should the task store in its own thread (and block), the lock goes after 8 s and
    # the test fails instead of hanging.
    safety = threading.Timer(8.0, release)
    try:
        locker.execute(text("LOCK TABLE downloads IN EXCLUSIVE MODE"))
        safety.start()
        peer.send("BATCH", {"batch_id": 1, **good})

        def blocked() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                            "'Lock' AND query LIKE 'COPY downloads%'"
                        )
                    ).scalar_one()
                )

        wait_for(blocked, drive=(task,))
        with caplog.at_level(logging.WARNING, logger="piwheels.log_ingest"):
            peer.socket.send_raw([b"\xa1\x00garbage"])
            wait_for(lambda: bool(caplog.records), drive=(task,))
        assert not peer.socket.poll(0.05)  # nothing acknowledged before the commit
        assert count(engine, "searches") == 0
        # Released by another thread: the task now waits in dispatch (batch 2 gathered).
        peer.send("BATCH", {"batch_id": 2, **good})
        threading.Timer(0.2, release).start()
        peer.expect("ACK", {"batch_id": 1, "stored": 2})
        peer.expect("ACK", {"batch_id": 2, "stored": 2})
        assert count(engine, "downloads") == 2 and count(engine, "searches") == 2
        assert (task.batches, task.stored) == (2, 4)
    finally:
        safety.cancel()
        release()
        locker.close()
        peer.close()
        task.close()
