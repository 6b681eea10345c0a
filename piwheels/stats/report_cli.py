"""``piw-report``: statistics reports, the daily summary and spike analysis.

::

    piw-report --period 2021Q4 -o out/          # report (Markdown + HTML + charts)
    piw-report --month 2021-12 --format html -o out/
    piw-report daily [--date D]                 # the one-line daily summary
    piw-report spike --date D [-o out/]         # what drove a day's rise
    piw-report spike --scan --from D --to D     # list spike days
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from sqlalchemy import create_engine

from ..cli import Command
from ..errors import UsageError
from ..settings import Settings
from . import queries, report, spike
from .charts import Charts

__all__ = ["COMMAND", "main"]


def _date(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{what}: not a date (YYYY-MM-DD): {value!r:.40}") from None


def _thresholds(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        out = sorted({int(v.replace("_", "")) for v in value.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"--thresholds: expected numbers like 100000,200000: {value!r:.60}")
    if not out or out[0] <= 0:
        raise UsageError("--thresholds: give positive numbers")
    return out


def _url(settings: Settings) -> str:
    from ..master.main import sqlalchemy_url

    return sqlalchemy_url(settings.database.dsn)


def run(args: argparse.Namespace, settings: Settings) -> int:
    action = args.action
    if args.factor <= 1.0:
        raise UsageError("--factor must be above 1")
    engine = create_engine(_url(settings))
    try:
        with engine.connect() as conn:
            if action == "daily":
                day = _date(args.date, "--date") or datetime.now(UTC).date() - timedelta(days=1)
                summary = queries.day_summary(conn, day)
                print(summary.line(yesterday=args.date is None))
                return 0
            if action == "spike":
                return _spike(conn, args)
            if args.date is not None or args.scan:
                raise UsageError("--date and --scan go with 'daily' or 'spike'")
            period = queries.parse_period(
                period=args.period, month_=args.month, year_=args.year,
                start=args.start, end=args.end,
            )  # fmt: skip
            formats = ("markdown", "html") if args.format == "both" else (args.format,)
            written = report.write_report(
                conn,
                period,
                Path(args.output),
                formats=formats,
                thresholds=_thresholds(args.thresholds),
                charts=not args.no_charts,
                spike_factor=args.factor,
            )
            for path in written.values():
                print(path)
            return 0
    finally:
        engine.dispose()


def _spike(conn: object, args: argparse.Namespace) -> int:
    if args.scan:
        start, end = _date(args.start, "--from"), _date(args.end, "--to")
        if start is None or end is None:
            raise UsageError("spike --scan needs --from and --to")
        found = spike.scan(conn, start, end + timedelta(days=1), factor=args.factor)  # type: ignore[arg-type]
        for s in found:
            print(s.summary())
        if not found:
            print(f"no spike between {start} and {end} (factor {args.factor})")
        return 0
    day = _date(args.date, "--date")
    if day is None:
        raise UsageError("spike needs --date D (or --scan --from D --to D)")
    s = spike.analyse(conn, day)  # type: ignore[arg-type]
    print(s.summary())
    for d in s.drivers:
        print(
            f"  {d.package}: {d.downloads:,} downloads (baseline {d.baseline:,.0f}), "
            f"{d.share:.0%} of the excess"
        )
    for title, values in (
        ("Python", s.python),
        ("installers", s.installers),
        ("distros", s.distros),
    ):
        if values:
            total = sum(values.values())
            parts = ", ".join(
                f"{k or 'unknown'} {v / total:.0%}"
                for k, v in sorted(values.items(), key=lambda kv: -kv[1])
            )
            print(f"  {title}: {parts}")
    out = Path(args.output)
    charts = Charts(out)
    days = sorted(s.series)
    charts.series(
        f"spike-{day}",
        [d.isoformat() for d in days],
        {
            "all downloads": [s.series[d] for d in days],
            "without " + (", ".join(s.packages) or "nothing"): [
                s.series_without.get(d, 0) for d in days
            ],
        },
        title=f"Downloads around {day}",
        ylabel="downloads",
    )
    print(out / f"spike-{day}.png")
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        default="report",
        choices=("report", "daily", "spike"),
        help="report (default), daily (one-line summary) or spike (analysis of a day)",
    )
    parser.add_argument("--period", metavar="YYYYQn", help="a quarter, e.g. 2021Q4")
    parser.add_argument("--month", metavar="YYYY-MM", help="a month, e.g. 2021-12")
    parser.add_argument("--year", metavar="YYYY", help="a year")
    parser.add_argument("--from", dest="start", metavar="DATE", help="first day (YYYY-MM-DD)")
    parser.add_argument("--to", dest="end", metavar="DATE", help="last day (YYYY-MM-DD)")
    parser.add_argument(
        "--format", choices=("markdown", "html", "both"), default="both", help="report format"
    )
    parser.add_argument("-o", "--output", default=".", metavar="DIR", help="output folder")
    parser.add_argument(
        "--thresholds",
        metavar="N,N,...",
        help="daily download thresholds to count days over (default: chosen from the data)",
    )
    parser.add_argument("--no-charts", action="store_true", help="write no charts")
    parser.add_argument("--date", metavar="DATE", help="the day (daily, spike)")
    parser.add_argument("--scan", action="store_true", help="spike: list spike days in --from/--to")
    parser.add_argument(
        "--factor",
        type=float,
        default=2.0,
        help="a spike is a day over FACTOR x the median of the 14 days before (default 2)",
    )


COMMAND = Command(
    run,
    prog="piw-report",
    description="Statistics reports of a piwheels farm: totals, time saved, top lists, "
    "platforms, bandwidth, charts, spikes.",
    sections=("database",),
    add_arguments=_arguments,
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
