"""Farm-wide figures for the home page, the search index and the monitors.

Totals come from the daily rollups plus the raw hits of days not rolled up
yet, so they are current without scanning the whole history.  Bots are never
counted: the rollups leave them out and the raw parts skip ``kind = 'bot'``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..web.model import HomeStats, SearchEntry
from .queue import queue_sizes

# Days after the last rolled-up day are counted from the raw downloads table
# (they are few: the log ingest rolls up today as it goes).
_DOWNLOADS = """
WITH last AS (SELECT coalesce(max(day), DATE '1970-01-01') AS day FROM daily_totals),
rolled AS (
    SELECT coalesce(sum(downloads), 0) AS all_time,
           coalesce(sum(downloads) FILTER (WHERE day > current_date - 30), 0) AS recent,
           coalesce(sum(seconds_saved), 0) AS saved
    FROM daily_totals
),
fresh AS (
    SELECT count(*) AS n,
           coalesce(sum(extract(epoch FROM b.duration)), 0) AS saved
    FROM downloads d
    LEFT JOIN files f ON f.filename = d.filename
    LEFT JOIN builds b ON b.build_id = f.build_id
    WHERE d.accessed_at >= (SELECT day FROM last) + 1 AND d.kind <> 'bot'
)
SELECT rolled.all_time + fresh.n AS all_time,
       rolled.recent + fresh.n AS recent,
       rolled.saved + fresh.saved AS saved,
       (SELECT count(*) FROM downloads
        WHERE accessed_at > now() - interval '1 hour' AND kind <> 'bot') AS hour
FROM rolled, fresh
"""


def download_totals(conn: Connection) -> tuple[int, int, timedelta, int]:
    """(all time, last 30 days, time saved, last hour) downloads."""
    row = conn.execute(text(_DOWNLOADS)).one()
    return int(row.all_time), int(row.recent), timedelta(seconds=float(row.saved)), int(row.hour)


def published_names(conn: Connection) -> list[str]:
    """Projects with at least one published wheel (the simple index root)."""
    rows = conn.execute(
        text(
            """
            SELECT DISTINCT b.package FROM files f JOIN builds b ON b.build_id = f.build_id
            JOIN packages p ON p.name = b.package
            WHERE p.removed_at IS NULL AND p.status <> 'quarantined'
            ORDER BY b.package
            """
        )
    )
    return [r[0] for r in rows]


def project_names(conn: Connection) -> list[str]:
    """Every project known and not removed (project pages, sitemaps)."""
    rows = conn.execute(text("SELECT name FROM packages WHERE removed_at IS NULL ORDER BY name"))
    return [r[0] for r in rows]


def search_entries(conn: Connection) -> list[SearchEntry]:
    """Each published project with its downloads (30 days, all time)."""
    rows = conn.execute(
        text(
            """
            WITH pub AS (
                SELECT DISTINCT b.package FROM files f JOIN builds b ON b.build_id = f.build_id
            )
            SELECT pub.package,
                   coalesce(sum(s.downloads) FILTER (WHERE s.day > current_date - 30), 0),
                   coalesce(sum(s.downloads), 0)
            FROM pub LEFT JOIN daily_package_stats s ON s.package = pub.package
            GROUP BY pub.package ORDER BY pub.package
            """
        )
    )
    return [SearchEntry(name, int(recent), int(total)) for name, recent, total in rows]


def builds_last_hour(conn: Connection) -> dict[str, int]:
    """Builds finished in the last hour, by target."""
    rows = conn.execute(
        text(
            """
            SELECT abi, count(*) FROM builds
            WHERE status IN ('success', 'failed')
              AND started_at + coalesce(duration, interval '0') > now() - interval '1 hour'
            GROUP BY abi
            """
        )
    )
    return {abi: int(n) for abi, n in rows}


def home_stats(conn: Connection) -> HomeStats:
    """The figures on the home page."""
    all_time, recent, saved, _hour = download_totals(conn)
    row = conn.execute(
        text(
            """
            SELECT (SELECT count(DISTINCT b.package) FROM files f
                    JOIN builds b ON b.build_id = f.build_id) AS built,
                   (SELECT count(*) FROM files) AS wheels,
                   (SELECT count(*) FROM packages WHERE removed_at IS NULL) AS total,
                   now() AS updated
            """
        )
    ).one()
    return HomeStats(
        packages_built=int(row.built),
        wheels=int(row.wheels),
        downloads_all=all_time,
        downloads_30d=recent,
        time_saved=saved,
        builds_last_hour=sum(builds_last_hour(conn).values()),
        packages_total=int(row.total),
        updated=row.updated,
    )


def master_figures(conn: Connection) -> dict[str, object]:
    """The database part of the master's STATS message."""
    all_time, recent, saved, hour = download_totals(conn)
    row = conn.execute(
        text(
            """
            SELECT (SELECT count(DISTINCT b.package) FROM files f
                    JOIN builds b ON b.build_id = f.build_id) AS built,
                   (SELECT count(*) FROM files) AS files,
                   (SELECT last_serial FROM upstream_state LIMIT 1) AS serial
            """
        )
    ).one()
    return {
        "queue": queue_sizes(conn),
        "builds_last_hour": builds_last_hour(conn),
        "packages_built": int(row.built),
        "files_count": int(row.files),
        "downloads_last_hour": hour,
        "downloads_30d": recent,
        "downloads_all": all_time,
        "time_saved": saved,
        "upstream_serial": None if row.serial is None else int(row.serial),
    }
