"""Benchmark: a quarterly report over 50,000,000 download rows (at --scale 1.0).

    python bench/bench_report.py --scale 0.01      # 500,000 downloads
    python bench/bench_report.py                   # 50,000,000 downloads

Fills a private PostgreSQL cluster (or --dsn) through the ingest's own
``store_batch`` (one batch per day: downloads over one quarter and searches,
COPYed and added to every rollup), with builds and files so time saved is
real, then times the report: reading every figure (``queries.collect`` and
the spike scan), and writing Markdown, HTML, JSON and charts, with a
breakdown per step (calls and seconds; nested steps are part of their
parent).  Beside it, the raw limit: one sequential scan (count) of the
quarter's downloads, what a report without rollups would have to read at
least once.  The report reads only rollups, so its time should not grow
with the rows: compare two scales.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import resource
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from piwheels.db import abis, builds, initdb, versions  # noqa: E402
from piwheels.db.files import FileRecord  # noqa: E402
from piwheels.db.stats import rollup_day, store_batch  # noqa: E402
from piwheels.stats import charts, queries, report, spike  # noqa: E402

FULL = 50_000_000
START = date(2021, 10, 1)
DAYS = 92
PACKAGES = 5000
DISTROS = [("Raspbian GNU/Linux", "10"), ("Raspbian GNU/Linux", "11"), ("Debian GNU/Linux", "12"),
           ("Ubuntu", "22.04")]  # fmt: skip
ARCHS = ["armv7l", "armv6l", "aarch64"]
PYS = ["3.7.3", "3.9.2", "3.11.2", "2.7.16"]
KINDS = ["pip"] * 8 + ["uv", "direct"]


def rows(n: int, d: date, rng: random.Random, files: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """*n* downloads on day *d* and about half as many searches, as a batch's COPY text."""
    dl, se = [], []
    for _ in range(n):
        pkg, fname = files[min(int(rng.paretovariate(1.1)) - 1, len(files) - 1)]
        dn, dv = rng.choice(DISTROS)
        kind = rng.choice(KINDS)
        inst = "pip" if kind == "pip" else ("uv" if kind == "uv" else "\\N")
        when = f"{d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00+00"
        head = f"{when}\t{rng.getrandbits(64):016x}"
        tail = (
            f"{dn}\t{dv}\tLinux\t\\N\t{rng.choice(ARCHS)}\tCPython\t{rng.choice(PYS)}\t{inst}"
            "\t23.0.1\t66.1.1\n"
        )
        dl.append(f"{head}\t{kind}\t{rng.randrange(10_000, 5_000_000)}\t{pkg}\t{fname}\t{tail}")
        if rng.random() < 0.5:
            se.append(f"{head}\t{kind}\t3000\t{pkg}\t{tail}")
    return "".join(dl).encode(), "".join(se).encode()


class Steps:
    """Seconds and calls per wrapped function (a breakdown of the report's time)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a: object, **kw: object) -> object:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)

    def print(self) -> None:
        for label, sec in self.seconds.items():
            print(f"  {label:<34} {self.calls[label]:>4} calls {sec:8.3f} s")


def instrument() -> Steps:
    steps = Steps()
    for name in ("totals", "daily_series", "hourly_downloads", "top", "top_by_month",
                 "shares_all", "shares_by_month", "bandwidth", "yearly", "bot_requests",
                 "package_clients_all"):  # fmt: skip
        steps.wrap(queries, name, f"  queries.{name}")
    steps.wrap(queries, "collect", "queries.collect (all of the above)")
    steps.wrap(spike, "analyse", "  spike.analyse")
    steps.wrap(spike, "scan", "spike.scan")
    steps.wrap(charts, "_matplotlib", "charts: import matplotlib")
    steps.wrap(charts.Charts, "finish", "charts: draw every chart (processes, 1 per CPU)")
    for name in ("to_markdown", "to_html", "figures_json"):
        steps.wrap(report, name, f"report.{name}")
    return steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 50,000,000 downloads")
    ap.add_argument("--dsn", help="a superuser URL of a server to use instead of a private one")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    n = int(FULL * args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="piwbench-", dir="/tmp"))
    cluster = None
    if args.dsn:
        admin = args.dsn
    else:
        from piwheels.pgcluster import Cluster

        cluster = Cluster(tmp / "pg", fsync=False)
        cluster.start()
        admin = cluster.url()
    url = make_url(admin).set(database=f"piwbench_report_{os.getpid()}")
    url_s = url.render_as_string(hide_password=False)
    try:
        initdb.upgrade(url_s, yes=True)
        engine = create_engine(url_s)
        t0 = time.perf_counter()
        files = [(f"pkg{i}", f"pkg{i}-1.0-cp39-cp39-linux_armv7l.whl") for i in range(PACKAGES)]
        with engine.begin() as conn:
            abis.add_abi(conn, "cp39", "linux_armv7l")
            versions.add_versions(conn, [versions.NewVersion(p, "1.0") for p, _f in files])
            for i, (pkg, fname) in enumerate(files[:500]):
                bid = builds.start_build(conn, pkg, "1.0", "cp39-linux_armv7l", "bench")
                builds.finish_build(
                    conn, bid, "success", timedelta(seconds=30 + i % 600),
                    files=[FileRecord(filename=fname, size=1000, sha256=f"{i:064x}")],
                )  # fmt: skip
        t_gen = t_store = 0.0
        for i in range(DAYS):
            # A slow rise over the quarter, as downloads grow.
            k = n // DAYS + (i - DAYS // 2) * n // (DAYS * DAYS * 2)
            day = START + timedelta(days=i)
            tg = time.perf_counter()
            dl, se = rows(k, day, rng, files)
            ts = time.perf_counter()
            with engine.begin() as conn:
                store_batch(conn, {"downloads": dl, "searches": se})
            t_store += time.perf_counter() - ts
            t_gen += ts - tg
        with engine.connect() as conn:
            # As autovacuum would after a bulk load: plans need statistics.
            conn.execute(text("ANALYZE"))
            conn.commit()
        t_fill = time.perf_counter() - t0
        # Re-check of one day from the raw rows (the daily job's rollup).
        t1 = time.perf_counter()
        with engine.begin() as conn:
            rollup_day(conn, START + timedelta(days=DAYS // 2))
        t_rollup = time.perf_counter() - t1
        period = queries.quarter(2021, 4)
        with engine.connect() as conn:
            t2 = time.perf_counter()
            conn.execute(
                text("SELECT count(*) FROM downloads WHERE accessed_at >= :s AND accessed_at < :e"),
                {"s": period.start, "e": period.end},
            ).scalar_one()
            t_scan = time.perf_counter() - t2
            t3 = time.perf_counter()
            figures = queries.collect(conn, period)
            spikes = spike.scan(conn, period.start, period.end)
            t_query = time.perf_counter() - t3
            steps = instrument()
            t4 = time.perf_counter()
            c4 = time.process_time()
            k4 = resource.getrusage(resource.RUSAGE_CHILDREN)
            report.write_report(conn, period, tmp / "report")
            t_write = time.perf_counter() - t4
            c_write = time.process_time() - c4
        engine.dispose()
        print(f"downloads: {n:,} rows over {DAYS} days; filled in {t_fill:.1f} s "
              f"(rows generated {t_gen:.1f} s, stored with every rollup by store_batch "
              f"{t_store:.1f} s = {n / t_store:,.0f} downloads/s); rollup_day of one day "
              f"again {t_rollup:.2f} s")  # fmt: skip
        print(f"figures read (collect + spike scan): {t_query:.2f} s "
              f"({figures.totals.downloads:,} downloads, {len(spikes)} spike days)")  # fmt: skip
        k5 = resource.getrusage(resource.RUSAGE_CHILDREN)
        kids = (k5.ru_utime + k5.ru_stime) - (k4.ru_utime + k4.ru_stime)
        print(f"whole report written (figures, Markdown, HTML, JSON, charts): {t_write:.2f} s "
              f"wall; CPU {c_write:.2f} s in the report process + {kids:.2f} s in chart "
              f"workers ({os.cpu_count()} CPUs, load average "
              f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})")  # fmt: skip
        print("breakdown of the whole report (nested steps are part of their parent):")
        steps.print()
        print(f"raw limit: one sequential count of the quarter's downloads {t_scan:.2f} s; "
              f"report figures / raw scan = {t_query / t_scan:.2f}")  # fmt: skip
        print("aim: under 5 s for the quarterly report")
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
