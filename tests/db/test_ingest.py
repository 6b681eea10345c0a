"""Hit ingest through COPY: every value arrives exactly as given, bad batches write nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from piwheels.db import downloads
from piwheels.db.downloads import ClientInfo, Hit
from piwheels.errors import ProtocolError

AT = datetime(2024, 3, 4, 10, 30, tzinfo=UTC)
ODD = ClientInfo(
    distro_name="Tab\there",
    distro_version="back\\slash",
    os_name="new\nline",
    os_version="\\N",  # the text COPY uses for NULL, as a real value
    arch="cr\r",
)
PLAIN = ClientInfo(distro_name="Debian", py_version="3.11.2")


def _hits() -> list[Hit]:
    out = []
    for i in range(40):
        out.append(
            Hit(
                AT + timedelta(seconds=i // 3),  # repeated times, as in a log
                f"Odd_Name.{i % 3}-1.0-py3-none-any.whl" if i % 2 else "a\\b-1.0-py3-none-any.whl",
                f"{i % 5:032x}" if i % 4 else "10.0.0.0/24",
                "pip" if i % 3 else "uv",
                i * 10,
                ODD if i % 2 else ClientInfo(**PLAIN.__dict__),  # equal, not identical
            )
        )
    return out


def test_download_rows_arrive_exactly(db_conn):
    hits = _hits()
    assert downloads.add_downloads(db_conn, iter(hits)) == len(hits)  # any iterable
    rows = db_conn.execute(
        text(
            "SELECT accessed_at, client, kind, bytes_sent, package, filename, distro_name, "
            "distro_version, os_name, os_version, arch, py_version, installer_name "
            "FROM downloads ORDER BY bytes_sent"
        )
    ).all()
    assert len(rows) == len(hits)
    for h, r in zip(hits, rows, strict=True):
        info = h.info
        assert tuple(r) == (
            h.accessed_at,
            h.client,
            h.kind,
            h.bytes_sent,
            downloads._package_of(h.target),
            h.target,
            info.distro_name,
            info.distro_version,
            info.os_name,
            info.os_version,
            info.arch,
            info.py_version,
            None,
        )
    assert {r.package for r in rows} == {"odd-name-0", "odd-name-1", "odd-name-2", "a\\b"}


def test_other_hit_tables(db_conn):
    hits = _hits()
    assert downloads.add_searches(db_conn, hits) == 40
    assert downloads.add_web_hits(db_conn, hits[:7]) == 7
    assert downloads.add_json_hits(db_conn, []) == 0
    pages = db_conn.execute(text("SELECT page FROM web_hits ORDER BY bytes_sent")).scalars().all()
    assert pages == [h.target for h in hits[:7]]
    odd = db_conn.execute(
        text("SELECT count(*) FROM searches WHERE os_version = '\\N' AND arch = E'cr\\r'")
    ).scalar_one()
    assert odd == 20


@pytest.mark.parametrize(
    "bad",
    [
        Hit(AT, "x-1.0-py3-none-any.whl", client="198.51.100.4"),
        Hit(AT, "x-1.0-py3-none-any.whl", client="ab" * 16 + "\t"),
        Hit(AT, "x-1.0-py3-none-any.whl", kind="crawler"),
    ],
)
def test_one_bad_hit_refuses_the_batch(db_conn, bad):
    hits = _hits()
    hits.insert(17, bad)
    with pytest.raises(ProtocolError):
        downloads.add_downloads(db_conn, hits)
    assert db_conn.execute(text("SELECT count(*) FROM downloads")).scalar_one() == 0


def test_bots_change_neither_demand_nor_figures(db_conn):
    """A crawler's downloads count nowhere: not in the queue's demand, not in the figures."""
    from piwheels.db import figures, queue, stats

    from . import factories as f

    target = f.abi(db_conn)
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", target, tags="py3-none-any")
    wheel = "foo-1.0-py3-none-any.whl"
    now = db_conn.execute(text("SELECT now()")).scalar_one()
    yesterday = now - timedelta(days=1)

    def state() -> tuple[object, ...]:
        queue.refresh_demand(db_conn)
        demand = db_conn.execute(text("SELECT demand FROM packages WHERE name = 'foo'"))
        return (demand.scalar_one(), figures.download_totals(db_conn))

    downloads.add_downloads(db_conn, [Hit(yesterday, wheel, "ab" * 8, "pip", 10)])
    stats.rollup_day(db_conn, yesterday.date())
    before = state()
    assert before[0] == 1 and before[1][0] == 1
    # Bots: one on the rolled-up day (rolled up again), one now (read raw, and the last hour).
    downloads.add_downloads(db_conn, [Hit(yesterday, wheel, "cd" * 8, "bot", 10)])
    stats.rollup_day(db_conn, yesterday.date())
    downloads.add_downloads(db_conn, [Hit(now - timedelta(minutes=1), wheel, "cd" * 8, "bot", 10)])
    assert state() == before
    # The same download by pip does count, in the last hour and in the totals.
    downloads.add_downloads(db_conn, [Hit(now - timedelta(minutes=1), wheel, "ef" * 8, "pip", 10)])
    after = state()[1]
    assert (after[0], after[1], after[3]) == (2, 2, 1)
    assert after[2] == 2 * before[1][2]


def _rollups(conn) -> tuple[list, list]:
    return (
        conn.execute(text("SELECT * FROM daily_totals ORDER BY day")).all(),
        conn.execute(text("SELECT * FROM monthly_package_stats ORDER BY month, package")).all(),
    )


def test_day_and_month_rollups_match_the_daily_rows(db_conn):
    """store_batch keeps daily_totals and monthly_package_stats; rollup_day gives the same."""
    from datetime import date

    from piwheels.db.stats import rollup_day, store_batch
    from piwheels.stats import queries

    start = date(2024, 1, 25)
    days = [start + timedelta(days=i) for i in range(14)]  # across a month's end
    for n, day in enumerate(days):
        dl, se = [], []
        for i in range(n % 5 + 3):
            pkg = f"pkg{(i * 7 + n) % 6}"
            kind = "bot" if i == 2 else ("uv" if i % 2 else "pip")
            dl.append(
                f"{day}T{i:02d}:00:00+00\t{i:016x}\t{kind}\t{100 + i}\t{pkg}\t{pkg}-1.0.whl"
                + "\t\\N" * 10
                + "\n"
            )
            se.append(f"{day}T{i:02d}:00:00+00\t{i:016x}\t{kind}\t10\t{pkg}" + "\t\\N" * 10 + "\n")
        store_batch(
            db_conn, {"downloads": "".join(dl).encode(), "searches": "".join(se[:2]).encode()}
        )
    kept = _rollups(db_conn)
    expect_days = db_conn.execute(
        text(
            "SELECT day, sum(downloads), sum(searches) FROM daily_package_stats "
            "GROUP BY day ORDER BY day"
        )
    ).all()
    assert [(r.day, r.downloads, r.searches) for r in kept[0]] == [tuple(r) for r in expect_days]
    assert len(kept[0]) == len(days)
    assert {r.month for r in kept[1]} == {date(2024, 1, 1), date(2024, 2, 1)}
    for day in days:
        rollup_day(db_conn, day)
    assert _rollups(db_conn) == kept
    # A period of a whole month and parts of two others: months plus days, exactly.
    for period in (
        queries.Period(date(2024, 1, 28), date(2024, 2, 6), "part"),
        queries.Period(date(2024, 1, 1), date(2024, 2, 1), "january"),
        queries.Period(date(2024, 1, 26), date(2024, 1, 29), "days"),
    ):
        brute = db_conn.execute(
            text(
                "SELECT package, sum(downloads) AS n FROM daily_package_stats "
                "WHERE day >= :s AND day < :e GROUP BY package HAVING sum(downloads) > 0 "
                "ORDER BY n DESC, package"
            ),
            {"s": period.start, "e": period.end},
        ).all()
        assert queries.top(db_conn, period, "downloads", 10) == [tuple(r) for r in brute]
        series = queries.daily_series(db_conn, period.start, period.end, exclude=["pkg1"])
        for d, v in series.items():
            assert (
                v.downloads
                == db_conn.execute(
                    text(
                        "SELECT coalesce(sum(downloads), 0) FROM daily_package_stats "
                        "WHERE day = :d AND package <> 'pkg1'"
                    ),
                    {"d": d},
                ).scalar_one()
            )
