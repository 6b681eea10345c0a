"""Spike analysis: which packages (and which clients) drive a day's rise in downloads.

A day's *baseline* is the median of the daily downloads of the
:data:`BASELINE_DAYS` days before it (quiet days count as zero; days before
the first day with any downloads are left out, and a day with fewer than
:data:`MIN_HISTORY` days of baseline is never flagged); its
*excess* is its downloads minus that.  Each package's excess is measured the
same way against its own median; the packages with the largest positive
excess, each explaining at least :data:`MIN_SHARE` of the day's excess (at
most :data:`MAX_DRIVERS`), are the *drivers*, each with its share of the excess.
A day is a *spike* when its downloads exceed ``factor`` x its baseline.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import queries

__all__ = ["BASELINE_DAYS", "SpikeReport", "analyse", "flag_spike", "scan"]

BASELINE_DAYS = 14
MIN_SHARE = 0.05
MAX_DRIVERS = 10
#: Days with fewer than this many days of history before them are never flagged.
MIN_HISTORY = 7


@dataclass
class Driver:
    package: str
    downloads: int
    baseline: float
    excess: float
    share: float  # of the day's excess


@dataclass
class SpikeReport:
    day: date
    downloads: int
    baseline: float
    excess: float
    ratio: float
    drivers: list[Driver]
    python: dict[str, int] = field(default_factory=dict)
    installers: dict[str, int] = field(default_factory=dict)
    distros: dict[str, int] = field(default_factory=dict)
    series: dict[date, int] = field(default_factory=dict)
    series_without: dict[date, int] = field(default_factory=dict)

    @property
    def packages(self) -> list[str]:
        return [d.package for d in self.drivers]

    def summary(self) -> str:
        names = ", ".join(f"{d.package} ({d.share:.0%})" for d in self.drivers)
        return (
            f"{self.day}: {self.downloads:,} downloads, {self.ratio:.1f}x the baseline of "
            f"{self.baseline:,.0f}; driven by {names or 'no single package'}"
        )


def _first_day(conn: Connection) -> date | None:
    """The first day with any downloads: days before it are not part of a baseline."""
    return conn.execute(text("SELECT min(day) FROM daily_totals")).scalar_one()


def _baseline_days(conn: Connection, day: date, days: int, first: date | None = None) -> list[date]:
    if first is None:
        first = _first_day(conn)
    out = [day - timedelta(days=days - i) for i in range(days)]
    return [d for d in out if first is not None and d >= first]


def _flag(
    series: dict[date, queries.Day], day: date, base_days: list[date], factor: float
) -> tuple[bool, float, int]:
    n = series[day].downloads
    if len(base_days) < MIN_HISTORY:
        return False, 0.0, n
    base = statistics.median([series[d].downloads for d in base_days])
    return base > 0 and n > factor * base, float(base), n


def analyse(
    conn: Connection,
    day: date,
    *,
    baseline_days: int = BASELINE_DAYS,
    after_days: int = 7,
    min_share: float = MIN_SHARE,
    details: bool = True,
) -> SpikeReport:
    """Compare *day* with its baseline and name what drives the difference.

    With *details*, also the clients behind the drivers (Python versions,
    installers, distributions: read from the raw downloads of those packages
    that day, the one statistic no rollup keeps) and the series without
    them; without, only rollups are read (what a report lists).
    """
    start = day - timedelta(days=baseline_days)
    series = queries.daily_series(conn, start, day + timedelta(days=after_days + 1))
    totals = {d: v.downloads for d, v in series.items()}
    base_days = _baseline_days(conn, day, baseline_days)
    baseline = statistics.median([totals[d] for d in base_days]) if base_days else 0.0
    downloads = totals.get(day, 0)
    excess = downloads - baseline
    rows = conn.execute(
        text(
            """
            SELECT package, day, downloads FROM daily_package_stats
            WHERE day >= :start AND day <= :day AND package IN (
                SELECT package FROM daily_package_stats WHERE day = :day AND downloads > 0)
            """
        ),
        {"start": start, "day": day},
    )
    per_pkg: dict[str, dict[date, int]] = {}
    for pkg, d, n in rows:
        per_pkg.setdefault(pkg, {})[d] = int(n)
    excesses = []
    for pkg, by_day in per_pkg.items():
        base = statistics.median([by_day.get(d, 0) for d in base_days]) if base_days else 0
        ex = by_day.get(day, 0) - base
        if ex > 0:
            excesses.append((ex, pkg, by_day.get(day, 0), base))
    excesses.sort(key=lambda e: (-e[0], e[1]))
    drivers: list[Driver] = []
    if excess > 0:
        for ex, pkg, n, base in excesses[:MAX_DRIVERS]:
            if ex / excess < min_share:
                break
            drivers.append(Driver(pkg, n, base, ex, ex / excess))
    report = SpikeReport(
        day=day,
        downloads=downloads,
        baseline=baseline,
        excess=excess,
        ratio=downloads / baseline if baseline else float("inf") if downloads else 0.0,
        drivers=drivers,
        series=totals,
    )
    if drivers and details:
        names = report.packages
        clients = queries.package_clients_all(
            conn, names, day, ("py_version", "installer_name", "distro_name")
        )
        report.python = clients["py_version"]
        report.installers = clients["installer_name"]
        report.distros = clients["distro_name"]
        without = queries.daily_series(
            conn, start, day + timedelta(days=after_days + 1), exclude=names
        )
        report.series_without = {d: v.downloads for d, v in without.items()}
    elif not drivers:
        report.series_without = dict(totals)
    return report


def is_spike(conn: Connection, day: date, factor: float) -> tuple[bool, float, int]:
    """(spike?, baseline, downloads) for *day*, from the daily totals alone."""
    start = day - timedelta(days=BASELINE_DAYS)
    series = queries.daily_series(conn, start, day + timedelta(days=1))
    return _flag(series, day, _baseline_days(conn, day, BASELINE_DAYS), factor)


def scan(
    conn: Connection, start: date, end: date, *, factor: float = 2.0, details: bool = False
) -> list[SpikeReport]:
    """Every spike day in ``[start, end)``, analysed (with *details*: see :func:`analyse`).

    The daily totals of the period and its first baseline are read once;
    only flagged days are analysed further.  Without *details* (a report's
    list of spikes: days, baselines and driving packages) only rollups are
    read, so a spike of a million downloads costs no more than a quiet day.
    """
    series = queries.daily_series(conn, start - timedelta(days=BASELINE_DAYS), end)
    first = _first_day(conn)
    out = []
    d = start
    while d < end:
        base_days = _baseline_days(conn, d, BASELINE_DAYS, first)
        flagged, _base, _n = _flag(series, d, base_days, factor)
        if flagged:
            out.append(analyse(conn, d, details=details))
        d += timedelta(days=1)
    return out


def flag_spike(
    conn: Connection, day: date, *, factor: float = 2.0, log: logging.Logger | None = None
) -> SpikeReport | None:
    """The daily job: if *day* is a spike, log a warning naming its packages and return it."""
    flagged, _base, _n = is_spike(conn, day, factor)
    if not flagged:
        return None
    report = analyse(conn, day)
    (log or logging.getLogger("piwheels.stats.spike")).warning(
        "download spike on %s", report.summary()
    )
    return report
