"""The figures of a statistics report, read from the daily rollups.

Every query here reads the rollups the log ingest keeps (see
:mod:`piwheels.db.stats`), never the raw hit tables, so a report's time
grows with the days and projects of its period, not with its downloads:
``daily_totals`` (daily series, totals, records), ``monthly_package_stats``
plus the ``daily_package_stats`` of partial months (top projects),
``daily_client_stats`` (every share in one pass), ``daily_web_stats`` and
``hourly_totals``.  The one exception is :func:`package_clients`, the
clients behind a spike's few driving packages on one day (``piw-report
spike --date`` and the daily spike job ask it; a report does not): no
rollup keeps project x client detail (it would cost the ingest a row per
project and client), so it reads that day's rows (the BRIN index on
``accessed_at`` narrows the scan to the day's blocks) in one pass.

Downloads, searches and hits never include bots.  A *period* is a half-open
range of UTC days ``[start, end)``.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import UsageError

__all__ = [
    "BANDWIDTH_GROUPS",
    "DIMENSIONS",
    "Figures",
    "Period",
    "bandwidth",
    "collect",
    "daily_series",
    "day_summary",
    "hourly_downloads",
    "milestones",
    "package_clients",
    "package_clients_all",
    "parse_period",
    "shares",
    "shares_all",
    "thresholds_for",
    "top",
    "totals",
]

SECONDS_PER_DAY = 86_400
#: A year of build time is 365.25 days.
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY

#: Share dimensions: name -> (column of daily_client_stats, extra condition).
DIMENSIONS: dict[str, tuple[str, str]] = {
    "distro": ("distro_name", ""),
    "os_release": ("distro_name || ' ' || distro_version", ""),
    "os": ("os_name", ""),
    "arch": ("arch", ""),
    "python": ("py_version", ""),
    "python_minor": ("substring(py_version FROM '^[0-9]+[.][0-9]+')", ""),
    "installer": ("installer_name", ""),
    "pip_version": ("installer_version", "AND installer_name = 'pip'"),
    "setuptools_version": ("setuptools_version", ""),
}

#: Bandwidth keys (the ``(source, client kind)`` of a rollup row, bots apart).
BANDWIDTH_KEYS = (
    "download-pip",
    "download-uv",
    "download-other-installer",
    "download-direct",
    "metadata",
    "index",
    "index_root",
    "project",
    "json",
    "page",
    "other",
    "bot",
)
#: The articles' four kinds of bandwidth (and two more no article names).
BANDWIDTH_GROUPS: dict[str, tuple[str, ...]] = {
    "pip downloads": ("download-pip", "download-uv", "download-other-installer", "metadata"),
    "index pages": ("index", "index_root"),
    "web site": ("project", "json", "page"),
    "direct downloads": ("download-direct",),
    "other requests": ("other",),
    "bots": ("bot",),
}


# -- periods -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """UTC days ``[start, end)`` with a label; *unit* says how :meth:`previous` steps."""

    start: date
    end: date
    label: str
    unit: str = "days"  # quarter, month, year or days

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def previous(self) -> Period:
        """The period of the same kind just before this one."""
        if self.unit == "quarter":
            q = (self.start.month - 1) // 3 + 1
            y, q = (self.start.year, q - 1) if q > 1 else (self.start.year - 1, 4)
            return quarter(y, q)
        if self.unit == "month":
            y, m = self.start.year, self.start.month - 1
            if m == 0:
                y, m = y - 1, 12
            return month(y, m)
        if self.unit == "year":
            return year(self.start.year - 1)
        start = self.start - timedelta(days=self.days)
        return Period(start, self.start, f"{start} to {self.start - timedelta(days=1)}")

    def each_day(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]


def _month_start(y: int, m: int) -> date:
    return date(y + (m - 1) // 12, (m - 1) % 12 + 1, 1)


def quarter(y: int, q: int) -> Period:
    start = date(y, 3 * q - 2, 1)
    return Period(start, _month_start(y, 3 * q + 1), f"{y}Q{q}", "quarter")


def month(y: int, m: int) -> Period:
    start = date(y, m, 1)
    return Period(start, _month_start(y, m + 1), start.strftime("%Y-%m"), "month")


def year(y: int) -> Period:
    return Period(date(y, 1, 1), date(y + 1, 1, 1), str(y), "year")


def _date(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{what}: not a date (YYYY-MM-DD): {value!r:.40}") from None


def parse_period(
    *,
    period: str | None = None,
    month_: str | None = None,
    year_: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> Period:
    """The period named by exactly one of: a quarter (2021Q4), a month, a year, or dates."""
    given = [x for x in (period, month_, year_) if x is not None]
    if start is not None or end is not None:
        given.append("dates")
    if len(given) != 1:
        raise UsageError("give one of --period YYYYQn, --month YYYY-MM, --year YYYY, --from/--to")
    if period is not None:
        m = re.fullmatch(r"(\d{4})[Qq]([1-4])", period)
        if not m:
            raise UsageError(f"--period: expected a quarter like 2021Q4, not {period!r:.40}")
        return quarter(int(m[1]), int(m[2]))
    if month_ is not None:
        m = re.fullmatch(r"(\d{4})-(\d{2})", month_)
        if not m or not 1 <= int(m[2]) <= 12:
            raise UsageError(f"--month: expected a month like 2021-12, not {month_!r:.40}")
        return month(int(m[1]), int(m[2]))
    if year_ is not None:
        if not re.fullmatch(r"\d{4}", year_):
            raise UsageError(f"--year: expected a year like 2021, not {year_!r:.40}")
        return year(int(year_))
    if start is None or end is None:
        raise UsageError("--from and --to go together")
    d0, d1 = _date(start, "--from"), _date(end, "--to")
    if d1 < d0:
        raise UsageError(f"--to {d1} is before --from {d0}")
    return Period(d0, d1 + timedelta(days=1), f"{d0} to {d1}")


# -- queries -----------------------------------------------------------------------------


def _p(period: Period) -> dict[str, date]:
    return {"start": period.start, "end": period.end}


@dataclass
class Totals:
    downloads: int = 0
    seconds_saved: float = 0.0
    searches: int = 0
    project_hits: int = 0
    json_hits: int = 0
    web_hits: int = 0
    downloads_all: int = 0
    seconds_saved_all: float = 0.0


def totals(conn: Connection, period: Period) -> Totals:
    """The period's downloads, time saved and hits; all-time downloads up to its end."""
    row = conn.execute(
        text(
            """
            SELECT coalesce(sum(downloads) FILTER (WHERE day >= :start), 0),
                   coalesce(sum(seconds_saved) FILTER (WHERE day >= :start), 0),
                   coalesce(sum(searches) FILTER (WHERE day >= :start), 0),
                   coalesce(sum(project_hits) FILTER (WHERE day >= :start), 0),
                   coalesce(sum(json_hits) FILTER (WHERE day >= :start), 0),
                   coalesce(sum(downloads), 0), coalesce(sum(seconds_saved), 0)
            FROM daily_totals WHERE day < :end
            """
        ),
        _p(period),
    ).one()
    web = conn.execute(
        text(
            "SELECT coalesce(sum(hits), 0) FROM daily_web_stats WHERE source = 'web' "
            "AND kind <> 'bot' AND day >= :start AND day < :end"
        ),
        _p(period),
    ).scalar_one()
    return Totals(
        int(row[0]), float(row[1]), int(row[2]), int(row[3]), int(row[4]), int(web),
        int(row[5]), float(row[6]),
    )  # fmt: skip


@dataclass
class Day:
    downloads: int = 0
    seconds_saved: float = 0.0
    searches: int = 0
    project_hits: int = 0
    json_hits: int = 0


def daily_series(
    conn: Connection, start: date, end: date, *, exclude: Sequence[str] = ()
) -> dict[date, Day]:
    """Per day in ``[start, end)`` (every day present, zero if quiet), minus *exclude* packages.

    The day totals come from ``daily_totals``; excluded packages' own rows
    (read by package) are taken off them.
    """
    p = {"start": start, "end": end, "exclude": list(exclude)}
    rows = conn.execute(
        text(
            """
            SELECT day, downloads, seconds_saved, searches, project_hits, json_hits
            FROM daily_totals WHERE day >= :start AND day < :end
            """
        ),
        p,
    )
    out = {start + timedelta(days=i): Day() for i in range((end - start).days)}
    for d, dl, saved, se, ph, jh in rows:
        out[d] = Day(int(dl), float(saved), int(se), int(ph), int(jh))
    if exclude:
        less = conn.execute(
            text(
                """
                SELECT day, sum(downloads), sum(seconds_saved), sum(searches),
                       sum(project_hits), sum(json_hits)
                FROM daily_package_stats
                WHERE package = ANY(:exclude) AND day >= :start AND day < :end
                GROUP BY day
                """
            ),
            p,
        )
        for d, dl, saved, se, ph, jh in less:
            v = out[d]
            out[d] = Day(
                v.downloads - int(dl),
                v.seconds_saved - float(saved),
                v.searches - int(se),
                v.project_hits - int(ph),
                v.json_hits - int(jh),
            )
    return out


def monthly(days: dict[date, Day]) -> dict[str, Day]:
    """*days* summed per month (``YYYY-MM``)."""
    out: dict[str, Day] = {}
    for d, v in sorted(days.items()):
        m = out.setdefault(d.strftime("%Y-%m"), Day())
        m.downloads += v.downloads
        m.seconds_saved += v.seconds_saved
        m.searches += v.searches
        m.project_hits += v.project_hits
        m.json_hits += v.json_hits
    return out


def hourly_downloads(conn: Connection, period: Period) -> dict[str, int]:
    """Downloads per UTC hour (``YYYY-MM-DDTHH``), hours with downloads only."""
    rows = conn.execute(
        text(
            """
            SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24'), sum(hits)
            FROM hourly_totals
            WHERE source = 'download' AND kind <> 'bot'
              AND hour >= CAST(:start AS timestamp) AT TIME ZONE 'UTC'
              AND hour < CAST(:end AS timestamp) AT TIME ZONE 'UTC'
            GROUP BY 1 ORDER BY 1
            """
        ),
        _p(period),
    )
    return {h: int(n) for h, n in rows}


_TOP_COLUMNS = {"downloads", "searches", "project_hits", "json_hits"}


def top(conn: Connection, period: Period, what: str, n: int = 10) -> list[tuple[str, int]]:
    """The *n* projects with most *what* (downloads, searches, project_hits, json_hits)."""
    if what == "pages":
        rows = conn.execute(
            text(
                """
                SELECT page, sum(hits) AS n FROM daily_web_stats
                WHERE source = 'web' AND kind <> 'bot' AND day >= :start AND day < :end
                GROUP BY page ORDER BY n DESC, page LIMIT :n
                """
            ),
            {**_p(period), "n": n},
        )
        return [(p, int(c)) for p, c in rows]
    if what not in _TOP_COLUMNS:
        raise ValueError(f"cannot rank by {what!r}")
    sql, params = _package_sums(period, what)
    rows = conn.execute(
        text(
            f"""
            SELECT package, sum(n) AS n FROM ({sql}) s
            GROUP BY package HAVING sum(n) > 0 ORDER BY n DESC, package LIMIT :n
            """
        ),
        {**params, "n": n},
    )
    return [(p, int(c)) for p, c in rows]


def _package_sums(period: Period, what: str) -> tuple[str, dict[str, date]]:
    """SQL of ``(month, package, n)`` rows covering *period* exactly, and its parameters.

    Whole months come from ``monthly_package_stats`` (a month of a project
    in one row); the days of a month the period covers only in part come
    from ``daily_package_stats``.
    """
    m0 = _month_start(period.start.year, period.start.month)
    if m0 < period.start:
        m0 = _month_start(m0.year, m0.month + 1)
    m1 = _month_start(period.end.year, period.end.month)
    if m0 >= m1:  # no whole month: days only
        m0 = m1 = period.end
    sql = f"""
        SELECT month, package, {what} AS n FROM monthly_package_stats
        WHERE month >= :m0 AND month < :m1
        UNION ALL
        SELECT date_trunc('month', day)::date, package, {what} FROM daily_package_stats
        WHERE (day >= :start AND day < :m0) OR (day >= :m1 AND day < :end)
    """
    return sql, {**_p(period), "m0": m0, "m1": m1}


def shares(
    conn: Connection, period: Period, dimension: str, *, source: str = "download"
) -> dict[str, int]:
    """Requests by pip and uv clients per value of *dimension* ('' = unknown)."""
    return shares_all(conn, period, [dimension], source=source)[dimension]


def shares_all(
    conn: Connection, period: Period, dimensions: Sequence[str], *, source: str = "download"
) -> dict[str, dict[str, int]]:
    """:func:`shares` of each of *dimensions*, read in one pass over the client rollup."""
    values = ", ".join(f"('{d}', {DIMENSIONS[d][0]})" for d in dimensions)
    conds = " ".join(
        f"AND (v.dim <> '{d}' OR ({DIMENSIONS[d][1].removeprefix('AND ')}))"
        for d in dimensions
        if DIMENSIONS[d][1]
    )
    rows = conn.execute(
        text(
            f"""
            SELECT v.dim, coalesce(v.value, ''), sum(hits)
            FROM daily_client_stats, LATERAL (VALUES {values}) AS v(dim, value)
            WHERE source = :source AND kind IN ('pip', 'uv') {conds}
              AND day >= :start AND day < :end
            GROUP BY 1, 2
            """
        ),
        {**_p(period), "source": source},
    )
    out: dict[str, dict[str, int]] = {d: {} for d in dimensions}
    for dim, v, n in rows:
        if n:
            out[dim][str(v)] = int(n)
    return out


def shares_by_month(
    conn: Connection, period: Period, dimension: str, *, source: str = "download"
) -> dict[str, dict[str, int]]:
    """:func:`shares` per month (``YYYY-MM``)."""
    column, cond = DIMENSIONS[dimension]
    rows = conn.execute(
        text(
            f"""
            SELECT to_char(day, 'YYYY-MM'), coalesce({column}, ''), sum(hits)
            FROM daily_client_stats
            WHERE source = :source AND kind IN ('pip', 'uv') {cond}
              AND day >= :start AND day < :end
            GROUP BY 1, 2
            """
        ),
        {**_p(period), "source": source},
    )
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for m, v, n in rows:
        out[m][str(v)] = int(n)
    return dict(sorted(out.items()))


_AGENT_KEY = {"pip": "pip", "uv": "uv", "other": "other-installer", "direct": "direct"}
_SOURCE_KEY = {"search": "index", "project": "project", "json": "json", "web": "page"}


def _bandwidth_key(source: str, kind: str) -> str:
    if kind == "bot":
        return "bot"
    if source == "download":
        return f"download-{_AGENT_KEY.get(kind, 'other-installer')}"
    return _SOURCE_KEY.get(source, source)


def bandwidth(conn: Connection, period: Period) -> dict[str, dict[str, int]]:
    """Bytes sent per month (``YYYY-MM``) per :data:`BANDWIDTH_KEYS` key."""
    rows = conn.execute(
        text(
            """
            SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM'), source, kind, sum(bytes_sent)
            FROM hourly_totals
            WHERE hour >= CAST(:start AS timestamp) AT TIME ZONE 'UTC'
              AND hour < CAST(:end AS timestamp) AT TIME ZONE 'UTC'
            GROUP BY 1, 2, 3
            UNION ALL
            SELECT to_char(day, 'YYYY-MM'), source, kind, sum(bytes_sent)
            FROM daily_web_stats
            WHERE source IN ('metadata', 'index_root', 'other')
              AND day >= :start AND day < :end
            GROUP BY 1, 2, 3
            """
        ),
        _p(period),
    )
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m, source, kind, nbytes in rows:
        out[m][_bandwidth_key(source, kind)] += int(nbytes)
    return {m: dict(v) for m, v in sorted(out.items())}


def bot_requests(conn: Connection, period: Period) -> int:
    """Requests by bots (counted apart from every other figure)."""
    return int(
        conn.execute(
            text(
                """
                SELECT (SELECT coalesce(sum(hits), 0) FROM hourly_totals WHERE kind = 'bot'
                          AND hour >= CAST(:start AS timestamp) AT TIME ZONE 'UTC'
                          AND hour < CAST(:end AS timestamp) AT TIME ZONE 'UTC')
                     + (SELECT coalesce(sum(hits), 0) FROM daily_web_stats WHERE kind = 'bot'
                          AND source IN ('metadata', 'index_root', 'other')
                          AND day >= :start AND day < :end)
                """
            ),
            _p(period),
        ).scalar_one()
    )


def thresholds_for(values: Iterable[int], count: int = 4) -> list[int]:
    """Round thresholds spread over the daily downloads (e.g. 100k, 200k, 250k, 300k).

    Steps of 1, 2, 2.5 and 5 times a power of ten, from about the median to
    the largest day, so the sentence "N days passed X" says something.
    """
    vals = sorted(v for v in values if v > 0)
    if not vals:
        return []
    lo, hi = vals[len(vals) // 2] * 0.9, vals[-1]
    if hi < 10:
        return [1]
    candidates = []
    for exp in range(int(math.log10(max(lo, 1))) - 1, int(math.log10(hi)) + 1):
        for step in (1, 2, 2.5, 5):
            v = int(step * 10**exp)
            if lo <= v <= hi and v > 0:
                candidates.append(v)
    if not candidates:
        candidates = [_round_down(hi)]
    if len(candidates) > count:
        idx = [round(i * (len(candidates) - 1) / (count - 1)) for i in range(count)]
        candidates = [candidates[i] for i in sorted(set(idx))]
    return candidates


def _round_down(v: float) -> int:
    exp = 10 ** int(math.log10(v))
    return int(v // exp * exp)


def milestone_values(upto: int) -> list[int]:
    """1, 2 and 5 times each power of ten up to *upto*."""
    out = []
    exp = 0
    while 10**exp <= upto:
        for step in (1, 2, 5):
            if step * 10**exp <= upto:
                out.append(step * 10**exp)
        exp += 1
    return out


def milestones(cumulative: dict[date, int], before: int, period: Period) -> list[tuple[int, date]]:
    """Milestones of total downloads passed in *period*: (milestone, day it was passed).

    *cumulative* maps each day of the period to the running total at its end;
    *before* is the total before the period.
    """
    out = []
    prev = before
    for d in sorted(cumulative):
        now = cumulative[d]
        for m in milestone_values(now):
            if prev < m <= now and m >= 1000:
                out.append((m, d))
        prev = now
    return out


def yearly(conn: Connection, end: date) -> dict[int, tuple[int, int, date | None]]:
    """Per year up to *end*: (downloads, top daily downloads, the day of that top)."""
    rows = conn.execute(
        text(
            """
            WITH d AS (SELECT day, downloads AS n FROM daily_totals WHERE day < :end)
            SELECT extract(year FROM day)::int, sum(n), max(n),
                   (array_agg(day ORDER BY n DESC, day))[1]
            FROM d GROUP BY 1 ORDER BY 1
            """
        ),
        {"end": end},
    )
    return {int(y): (int(n), int(mx), best) for y, n, mx, best in rows}


def top_by_month(conn: Connection, period: Period, n: int = 5) -> dict[str, list[tuple[str, int]]]:
    """The *n* most downloaded projects of each month of *period*."""
    sql, params = _package_sums(period, "downloads")
    rows = conn.execute(
        text(
            f"""
            SELECT to_char(m, 'YYYY-MM'), package, n FROM (
                SELECT month AS m, package, sum(n) AS n,
                       row_number() OVER (PARTITION BY month ORDER BY sum(n) DESC, package) AS r
                FROM ({sql}) s
                GROUP BY 1, 2 HAVING sum(n) > 0
            ) t WHERE r <= :n ORDER BY m, r
            """
        ),
        {**params, "n": n},
    )
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for m, pkg, c in rows:
        out[m].append((pkg, int(c)))
    return dict(out)


def package_days(
    conn: Connection, packages: Sequence[str], start: date, end: date
) -> dict[str, dict[date, int]]:
    """Daily downloads of each of *packages* in ``[start, end)``."""
    rows = conn.execute(
        text(
            "SELECT package, day, downloads FROM daily_package_stats "
            "WHERE package = ANY(:p) AND day >= :start AND day < :end"
        ),
        {"p": list(packages), "start": start, "end": end},
    )
    out: dict[str, dict[date, int]] = {p: {} for p in packages}
    for pkg, d, n in rows:
        out[pkg][d] = int(n)
    return out


#: Client columns :func:`package_clients` can break downloads down by.
CLIENT_COLUMNS = ("py_version", "installer_name", "distro_name", "arch", "distro_version")


def package_clients(
    conn: Connection, packages: Sequence[str], day: date, column: str
) -> dict[str, int]:
    """Downloads (no bots) of *packages* on *day* by a client *column* (raw table)."""
    return package_clients_all(conn, packages, day, [column])[column]


def package_clients_all(
    conn: Connection, packages: Sequence[str], day: date, columns: Sequence[str]
) -> dict[str, dict[str, int]]:
    """:func:`package_clients` for each of *columns*, in one pass over the raw rows.

    Scans the rows of *day* (the BRIN index on ``accessed_at`` finds their
    blocks; a B-tree on package would cost every stored download ~2 µs):
    no rollup keeps project x client detail.
    """
    for column in columns:
        if column not in CLIENT_COLUMNS:
            raise ValueError(f"no such client column {column!r}")
    values = ", ".join(f"('{c}', {c})" for c in columns)
    rows = conn.execute(
        text(
            f"""
            SELECT v.col, coalesce(v.value, ''), count(*)
            FROM downloads, LATERAL (VALUES {values}) AS v(col, value)
            WHERE package = ANY(:p) AND kind <> 'bot'
              AND accessed_at >= CAST(:day AS timestamp) AT TIME ZONE 'UTC'
              AND accessed_at < (CAST(:day AS timestamp) + interval '1 day') AT TIME ZONE 'UTC'
            GROUP BY 1, 2
            """
        ),
        {"p": list(packages), "day": day},
    )
    out: dict[str, dict[str, int]] = {c: {} for c in columns}
    for col, v, n in rows:
        out[col][str(v)] = int(n)
    return out


@dataclass
class DaySummary:
    day: date
    downloads: int
    seconds_saved: float
    record: bool  # a new daily record

    def line(self, *, yesterday: bool = True) -> str:
        """The one-line daily summary the project posts."""
        when = "Yesterday" if yesterday else f"On {self.day:%d %B %Y}".replace(" 0", " ")
        days = self.seconds_saved / SECONDS_PER_DAY
        rec = " (a new daily record)" if self.record else ""
        return (
            f"{when}, {self.downloads:,} packages were downloaded{rec}, "
            f"saving users over {math.floor(days):,} days of build time"
        )


def day_summary(conn: Connection, day: date) -> DaySummary:
    """Downloads and time saved on *day*, and whether it beat every earlier day."""
    row = conn.execute(
        text(
            """
            WITH d AS (SELECT day, downloads AS n, seconds_saved AS s
                       FROM daily_totals WHERE day <= :day)
            SELECT coalesce((SELECT n FROM d WHERE day = :day), 0),
                   coalesce((SELECT s FROM d WHERE day = :day), 0),
                   coalesce((SELECT max(n) FROM d WHERE day < :day), 0)
            """
        ),
        {"day": day},
    ).one()
    n, s, best = int(row[0]), float(row[1]), int(row[2])
    return DaySummary(day, n, s, n > best and best > 0)


# -- everything at once --------------------------------------------------------------------


@dataclass
class Figures:
    """Every figure of one report."""

    period: Period
    totals: Totals
    previous: Period
    days: dict[date, Day]
    previous_days: dict[date, Day]
    months: dict[str, Day]
    hours: dict[str, int]
    thresholds: list[int]
    days_over: dict[int, int]
    previous_days_over: dict[int, int]
    top: dict[str, list[tuple[str, int]]]
    top_by_month: dict[str, list[tuple[str, int]]]
    shares: dict[str, dict[str, int]]
    python_by_month: dict[str, dict[str, int]]
    bandwidth: dict[str, dict[str, int]]
    milestones: list[tuple[int, date]]
    yearly: dict[int, tuple[int, int, date | None]]
    bots: int
    best_day: tuple[date, int] | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bandwidth_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for month_bytes in self.bandwidth.values():
            for k, v in month_bytes.items():
                out[k] += v
        return dict(out)

    @property
    def bandwidth_by_group(self) -> dict[str, int]:
        by_kind = self.bandwidth_by_kind
        return {g: sum(by_kind.get(k, 0) for k in keys) for g, keys in BANDWIDTH_GROUPS.items()}


SHARE_DIMENSIONS = ("distro", "os_release", "arch", "python", "pip_version", "setuptools_version")


def collect(
    conn: Connection,
    period: Period,
    *,
    thresholds: Sequence[int] | None = None,
    top_n: int = 10,
) -> Figures:
    """Read every figure of the report for *period*."""
    tot = totals(conn, period)
    prev = period.previous()
    days = daily_series(conn, period.start, period.end)
    prev_days = daily_series(conn, prev.start, prev.end)
    values = [d.downloads for d in days.values()]
    ths = list(thresholds) if thresholds else thresholds_for(values)
    over = {t: sum(1 for v in values if v >= t) for t in ths}
    prev_over = {t: sum(1 for d in prev_days.values() if d.downloads >= t) for t in ths}
    before = tot.downloads_all - tot.downloads
    running, cumulative = before, {}
    for d in sorted(days):
        running += days[d].downloads
        cumulative[d] = running
    best = max(days.items(), key=lambda kv: (kv[1].downloads, -kv[0].toordinal()), default=None)
    return Figures(
        period=period,
        totals=tot,
        previous=prev,
        days=days,
        previous_days=prev_days,
        months=monthly(days),
        hours=hourly_downloads(conn, period),
        thresholds=ths,
        days_over=over,
        previous_days_over=prev_over,
        top={
            "downloads": top(conn, period, "downloads", top_n),
            "searches": top(conn, period, "searches", top_n),
            "project_hits": top(conn, period, "project_hits", top_n),
            "json_hits": top(conn, period, "json_hits", top_n),
            "pages": top(conn, period, "pages", top_n),
        },
        top_by_month=top_by_month(conn, period),
        shares=shares_all(conn, period, SHARE_DIMENSIONS),
        python_by_month=shares_by_month(conn, period, "python_minor"),
        bandwidth=bandwidth(conn, period),
        milestones=milestones(cumulative, before, period),
        yearly=yearly(conn, period.end),
        bots=bot_requests(conn, period),
        best_day=None if best is None or best[1].downloads == 0 else (best[0], best[1].downloads),
    )
