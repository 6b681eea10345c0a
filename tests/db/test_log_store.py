"""store_log_batch: rows written once, rollups added from the batch's aggregates.

Every rollup it keeps must equal what ``rollup_day`` computes from the raw
hits, and what the previous path (staging tables and one SQL statement,
``db.stats.store_batch``) stored: hit rows and rollups alike.
"""

from __future__ import annotations

from datetime import UTC, date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError

from piwheels.db import stats
from piwheels.db.downloads import BatchRollup, LogBatch, store_log_batch, store_log_batches
from piwheels.errors import ProtocolError
from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.batch import BatchEncoder
from piwheels.logger.reader import LogReader
from tests.logger.lines import SECRET
from tests.synthetic_logs import generate

from . import factories as f

HITS = ("downloads", "searches", "project_hits", "json_hits", "web_hits")
ROLLUPS = (
    "daily_package_stats",
    "daily_totals",
    "monthly_package_stats",
    "daily_client_stats",
    "daily_web_stats",
    "hourly_totals",
)
NULLS = "\t\\N" * 10


def _odd_batch() -> dict[str, Any]:
    """Escapes, NULL and empty client fields (one rollup key), both time spellings, bots."""
    desc_a = "\tRaspbian\\tGNU\t11" + "\t\\N" * 8  # a tab inside a value
    desc_b = "\t" + "\t".join(["", "", "Linux"] + ["\\N"] * 7)
    desc_c = "\t" + "\t".join(["\\N", "\\N", "Linux"] + [""] * 7)  # same key as desc_b
    back = "ba\\\\ck\tba\\\\ck-1.0-py3-none-any.whl"  # a backslash in the name, escaped
    dl = [
        f"2024-01-31T23:59:59+00\t{'a' * 16}\tpip\t100\t{back}{desc_a}",
        f"2024-01-31 23:10:00.5+00\t{'b' * 16}\tpip\t7\t{back}{desc_b}",
        f"2024-02-01T00:00:00+00:00\t10.0.0.0/24\tuv\t5\tfoo\tfoo-1.0-py3-none-any.whl{desc_c}",
        f"2024-02-01T00:00:01+00\t\tbot\t9\tfoo\tfoo-1.0-py3-none-any.whl{NULLS}",
        f"2024-02-01T00:00:02+00\t{'c' * 16}\tdirect\t0\tfoo\tfoo-2.0-py3-none-any.whl{NULLS}",
    ]
    se = [
        f"2024-01-31T12:00:00+00\t{'a' * 16}\tpip\t50\tfoo{desc_b}",
        f"2024-01-31T12:30:00+00\t{'a' * 16}\tpip\t50\tfoo{desc_c}",
        f"2024-01-31T12:30:00+00\t{'d' * 16}\tbot\t50\tfoo{NULLS}",
    ]
    ph = [
        f"2024-01-31T01:00:00+00\t{'a' * 16}\tdirect\t300\tfoo",
        f"2024-01-31T01:00:00+00\t{'a' * 16}\tbot\t300\tfoo",
    ]
    js = [f"2024-02-01T02:00:00+00\t{'a' * 16}\tother\t30\tn\\te\\nw\\rl"]
    web = [
        f"2024-02-01T03:00:00+00\t{'e' * 16}\tdirect\t1000\tindex.html",
        f"2024-02-01T03:00:00+00\t{'e' * 16}\tdirect\t1000\tfaq\\\\x.html",
    ]
    return {
        "tables": {
            t: "".join(r + "\n" for r in rows).encode()
            for t, rows in zip(HITS, (dl, se, ph, js, web), strict=True)
        },
        "extra": [["2024-01-31", "metadata", "pip", 3, 300], ["2024-02-01", "other", "bot", 1, 9]],
    }


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """A synthetic log (JSON and combined lines, bots, a spike) as the logger batches it."""
    path: Path = tmp_path_factory.mktemp("logs") / "access.log"
    generate(path, days=3, lines_per_day=500, seed=7, fmt="mixed", start=date(2021, 10, 30))
    lines = path.read_bytes().splitlines(keepends=True)
    reader = LogReader(Anonymiser("hash", SECRET))
    enc = BatchEncoder()
    out = [_odd_batch()]
    for i in range(0, len(lines), 400):
        enc.add_lines(lines[i : i + 400], reader)
        out.append(enc.take())
    return out


def _snapshot(conn: Connection, tables: tuple[str, ...]) -> dict[str, list[Any]]:
    def row(r: Any) -> tuple[Any, ...]:
        return tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)

    return {
        t: sorted((row(r) for r in conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr)
        for t in tables
    }


def _durations(conn: Connection) -> None:
    """Builds for some of the files downloaded, so time saved is not all zero."""
    target = f.abi(conn)
    for pkg in ("foo", "numpy", "requests"):
        f.version(conn, pkg, "1.0")
        f.build(conn, pkg, "1.0", target, tags="py3-none-any")
    conn.execute(text("UPDATE builds SET duration = make_interval(secs => 12.25 * build_id)"))


def test_rollups_equal_rollup_day_and_the_staging_path(
    db_conn: Connection, batches: list[dict[str, Any]]
) -> None:
    _durations(db_conn)
    with db_conn.begin_nested() as sp:
        for i, b in enumerate(batches, 1):
            stats.store_batch(db_conn, b["tables"], b["extra"], source=b"old", batch_id=i)
        old = _snapshot(db_conn, HITS + ROLLUPS)
        sp.rollback()
    timings: dict[str, float] = {}
    days: set[date] = set()
    for i, b in enumerate(batches, 1):
        res = store_log_batch(
            db_conn, b["tables"], b["extra"], source=b"new", batch_id=i, timings=timings
        )
        assert not res.duplicate
        assert res.stored == sum(v.count(b"\n") for v in b["tables"].values()) + sum(
            e[3] for e in b["extra"]
        )
        days |= stats.batch_days(b["tables"], b["extra"])
    assert set(timings) == {"copy", "tally", "statement"}
    new = _snapshot(db_conn, HITS + ROLLUPS)
    assert new == old
    assert sum(r[4] for r in new["daily_totals"]) > 0  # some time saved
    assert len(new["downloads"]) > 300
    # Recomputed from the raw hits, day by day: the same rollups.
    for day in sorted(days):
        stats.rollup_day(db_conn, day)
    assert _snapshot(db_conn, ROLLUPS) == {t: new[t] for t in ROLLUPS}


def test_a_resent_batch_is_counted_once(db_conn: Connection, batches: list[dict[str, Any]]) -> None:
    b = batches[1]
    first = store_log_batch(db_conn, b["tables"], b["extra"], source=b"L", batch_id=9)
    before = _snapshot(db_conn, HITS + ROLLUPS)
    again = store_log_batch(db_conn, b["tables"], b["extra"], source=b"L", batch_id=9)
    assert again.duplicate and again.stored == first.stored
    assert _snapshot(db_conn, HITS + ROLLUPS) == before
    # Another logger's batch with the same number is another batch.
    other = store_log_batch(db_conn, b["tables"], b["extra"], source=b"M", batch_id=9)
    assert not other.duplicate
    assert len(_snapshot(db_conn, ("downloads",))["downloads"]) == 2 * len(before["downloads"])


def test_a_row_postgresql_refuses_stores_nothing(db_conn: Connection) -> None:
    good = _odd_batch()
    bad = dict(good["tables"])
    bad["web_hits"] += f"2024-02-30T03:00:00+00\t{'e' * 16}\tdirect\t1\tx.html\n".encode()
    with pytest.raises(DataError):
        store_log_batch(db_conn, bad, good["extra"], source=b"L", batch_id=1)
    assert all(not rows for rows in _snapshot(db_conn, (*HITS, *ROLLUPS, "log_batches")).values())
    # Not recorded as stored: the corrected batch goes in under the same id.
    assert not store_log_batch(
        db_conn, good["tables"], good["extra"], source=b"L", batch_id=1
    ).duplicate


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (b"2024-01-31T01:00:00+00\taaaaaaaaaaaaaaaa\tpip\t1\tfoo", "newline"),
        (b"2024-01-31T01:00:00+00\taaaaaaaaaaaaaaaa\tpip\tfoo\n", "cells"),
        (
            b"2024-01-31T01:00:00+00\taaaaaaaaaaaaaaaa\tpip\t1\tfoo\n"
            b"2024-01-31T01:00:00+00\taaaaaaaaaaaaaaaa\tpip\t1\n",
            "cells",
        ),
    ],
)
def test_tally_refuses_malformed_rows(rows: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        BatchRollup().add_rows("project_hits", rows)


def test_tally_refuses_a_short_client_description() -> None:
    tally = BatchRollup()
    tally.add_rows(
        "searches", b"2024-01-31T01:00:00+00\taaaaaaaaaaaaaaaa\tpip\t1\tfoo\tDebian\t12\n"
    )
    with pytest.raises(ProtocolError, match="client description"):
        tally.params()


def test_empty_batch_changes_nothing_but_its_record(db_conn: Connection) -> None:
    res = store_log_batch(db_conn, {}, [], source=b"L", batch_id=1)
    assert res.stored == 0 and not res.duplicate
    assert all(not rows for rows in _snapshot(db_conn, HITS + ROLLUPS).values())
    assert store_log_batch(db_conn, {}, [], source=b"L", batch_id=1).duplicate


def test_rollup_days_cover_both_sides_of_midnight(db_conn: Connection) -> None:
    b = _odd_batch()
    store_log_batch(db_conn, b["tables"], b["extra"])
    totals = dict(
        (r.day, (r.downloads, r.searches, r.project_hits, r.json_hits))
        for r in db_conn.execute(text("SELECT * FROM daily_totals")).all()
    )
    # Bots left out; both spellings of a time land on their UTC day.
    assert totals == {date(2024, 1, 31): (2, 2, 1, 0), date(2024, 2, 1): (2, 0, 0, 1)}
    hours = db_conn.execute(
        text(
            "SELECT hour, sum(hits) FROM hourly_totals WHERE source = 'download' "
            "GROUP BY hour ORDER BY hour"
        )
    ).all()
    assert [(h.astimezone(UTC).isoformat(), n) for h, n in hours] == [
        ("2024-01-31T23:00:00+00:00", 2),
        ("2024-02-01T00:00:00+00:00", 3),
    ]
    months = db_conn.execute(
        text("SELECT month, package, downloads FROM monthly_package_stats ORDER BY 1, 2")
    ).all()
    assert [tuple(r) for r in months] == [
        (date(2024, 1, 1), "ba\\ck", 2),
        (date(2024, 1, 1), "foo", 0),
        (date(2024, 2, 1), "foo", 2),
        (date(2024, 2, 1), "n\te\nw\rl", 0),
    ]
    clients = db_conn.execute(
        text(
            "SELECT distro_name, distro_version, os_name, hits FROM daily_client_stats "
            "WHERE source = 'search' AND kind = 'pip'"
        )
    ).all()
    assert [tuple(r) for r in clients] == [("", "", "Linux", 2)]


def test_batches_stored_together_equal_one_by_one(
    db_conn: Connection, batches: list[dict[str, Any]]
) -> None:
    """One transaction for several batches (as the master groups them) stores the same;
    a batch twice in the group, or stored before, counts once."""
    group = [LogBatch(b["tables"], b["extra"], b"L", i) for i, b in enumerate(batches[:4], 1)]
    with db_conn.begin_nested() as sp:
        for b in group:
            store_log_batch(db_conn, b.tables, b.extra, source=b.source, batch_id=b.batch_id)
        one_by_one = _snapshot(db_conn, (*HITS, *ROLLUPS, "log_batches"))
        sp.rollback()
    store_log_batch(db_conn, group[0].tables, group[0].extra, source=b"L", batch_id=1)
    results = store_log_batches(db_conn, [*group, group[2]])
    assert [r.duplicate for r in results] == [True, False, False, False, True]
    assert results[0].stored == sum(v.count(b"\n") for v in group[0].tables.values()) + sum(
        e[3] for e in group[0].extra
    )
    assert results[4].stored == results[2].stored > 0
    got = _snapshot(db_conn, (*HITS, *ROLLUPS, "log_batches"))
    # stored_at differs between the two runs.
    for snap in (got, one_by_one):
        snap["log_batches"] = [r[:3] for r in snap["log_batches"]]
    assert got == one_by_one


def test_the_loggers_aggregates_store_what_the_master_tallies(
    db_conn: Connection, batches: list[dict[str, Any]]
) -> None:
    """A batch's own rollup aggregates (tallied by the logger as it makes the rows) add
    to every rollup exactly what the master's tally of the same rows adds."""
    from piwheels import protocols
    from piwheels.transport import _check

    with_rollup = [b for b in batches if "rollup" in b]
    assert len(with_rollup) == len(batches) - 1
    _durations(db_conn)
    with db_conn.begin_nested() as sp:
        for i, b in enumerate(with_rollup, 1):
            store_log_batch(db_conn, b["tables"], b["extra"], source=b"m", batch_id=i)
        tallied = _snapshot(db_conn, HITS + ROLLUPS)
        sp.rollback()
    for i, b in enumerate(with_rollup, 1):
        # As the master receives it: checked (aggregates add up to the rows) first.
        data = _check(protocols.logger, "BATCH", {"batch_id": i, **b}, sending=False)
        store_log_batch(
            db_conn, data["tables"], data["extra"], source=b"l", batch_id=i, rollup=data["rollup"]
        )
    assert _snapshot(db_conn, HITS + ROLLUPS) == tallied
    assert sum(b["rollup"]["clients"].count(b"\n") for b in with_rollup) > 0
