"""Benchmark: a quarterly report over 50,000,000 download rows (at --scale 1.0).

    python bench/bench_report.py --scale 0.01          # 500,000 downloads
    python bench/bench_report.py --scale 1 --keep DIR   # 50M, kept in DIR for re-runs
    python bench/bench_report.py --scale 1 --keep DIR --explain  # re-run, no fill

Fills a private PostgreSQL cluster (or --dsn) with one quarter of downloads
made by PostgreSQL itself (``generate_series``, set-based: no row passes
through Python), searches and page hits, plus one day with a spike of three
projects; each day is then rolled up by ``rollup_day``, the ingest's own
rollup statement, so the rollups are real.  Builds and files make time
saved real.  With ``--keep DIR`` the cluster is kept in DIR and a later run
with the same scale skips the fill.

Then the report is timed, in this process (``write_report`` with its phase
timings: queries, spike scan, waiting for matplotlib, drawing every chart
as PNG and SVG, writing Markdown/HTML/JSON; CPU seconds of this process and
of the chart workers) and as the ``piw-report`` command (a fresh process:
Python and library imports included; wall, CPU and peak RSS).  Then the
spike day's analysis with its clients (``piw-report spike --date``, the one
query that reads the raw downloads: that day's rows).  Beside
it, the raw limit: one sequential count of the quarter's downloads, what a
report without rollups would have to read at least once.  ``--explain``
prints the plan of every query the report makes (relations read, rows,
milliseconds) and flags any that reads a raw hit table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, event, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from piwheels.db import abis, builds, initdb, versions  # noqa: E402
from piwheels.db.files import FileRecord  # noqa: E402
from piwheels.db.stats import rollup_day, store_batch  # noqa: E402
from piwheels.protocols import LOG_TABLES  # noqa: E402
from piwheels.stats import queries, report, spike  # noqa: E402

FULL = 50_000_000
START = date(2021, 10, 1)
DAYS = 92
SPIKE_DAY = 60
PACKAGES = 5000
DISTROS = [("Raspbian GNU/Linux", "10"), ("Raspbian GNU/Linux", "11"), ("Debian GNU/Linux", "12"),
           ("Ubuntu", "22.04")]  # fmt: skip
ARCHS = ["armv7l", "armv6l", "aarch64"]
PYS = ["3.7.3", "3.9.2", "3.11.2", "2.7.16"]
RAW_TABLES = frozenset(LOG_TABLES)

# One day of downloads, made by PostgreSQL itself (set-based: no row passes
# through Python).  The same shapes as a logger's rows: a Pareto choice of
# package (a few projects take most downloads), clients spread over distros,
# architectures and Pythons, a few bots, a time within the day.
_DOWNLOADS_SQL = f"""
INSERT INTO downloads ({", ".join(LOG_TABLES["downloads"])})
SELECT t, lpad(to_hex((random() * 4503599627370496)::bigint), 16, '0'), kind,
       10000 + (random() * 4990000)::int, 'pkg' || p,
       'pkg' || p || '-1.0-cp39-cp39-linux_armv7l.whl',
       (ARRAY[{", ".join(f"'{d}'" for d, _v in DISTROS)}])[dv],
       (ARRAY[{", ".join(f"'{v}'" for _d, v in DISTROS)}])[dv], 'Linux', NULL,
       (ARRAY[{", ".join(f"'{a}'" for a in ARCHS)}])[1 + floor(random() * {len(ARCHS)})::int],
       'CPython',
       (ARRAY[{", ".join(f"'{p}'" for p in PYS)}])[1 + floor(random() * {len(PYS)})::int],
       CASE WHEN kind IN ('pip', 'uv') THEN kind END,
       CASE WHEN kind IN ('pip', 'uv') THEN '23.0.1' END, '66.1.1'
FROM (
    SELECT CAST(:day AS timestamp) AT TIME ZONE 'UTC'
               + floor(random() * 86400) * interval '1 second' AS t,
           CASE WHEN i <= :spike THEN 3001 + floor(random() * 3)::int
                ELSE least(floor(power(1.0 - random(), -1.0 / 1.1)), {PACKAGES})::int - 1
           END AS p,
           1 + floor(random() * {len(DISTROS)})::int AS dv,
           (ARRAY['pip', 'uv', 'direct', 'bot'])[
               width_bucket(random(), ARRAY[0, 0.78, 0.88, 0.98]::float8[])] AS kind
    FROM generate_series(1, :n) AS i
) s
"""
# Searches (index page hits: a fifth of downloads, of the same packages and
# clients), and a few page hits.
_SEARCHES_SQL = f"""
INSERT INTO searches ({", ".join(LOG_TABLES["searches"])})
SELECT accessed_at, client, kind, 3000, package, {", ".join(LOG_TABLES["searches"][5:])}
FROM downloads
WHERE accessed_at >= CAST(:day AS timestamp) AT TIME ZONE 'UTC'
  AND accessed_at < (CAST(:day AS timestamp) + interval '1 day') AT TIME ZONE 'UTC'
  AND random() < 0.2
"""
# New rows are in no BRIN range until summarised (autovacuum would, later):
# without this every day's range read would also read every page since.
_SUMMARISE_SQL = f"""
SELECT brin_summarize_new_values(i.indexrelid::regclass)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
WHERE a.amname = 'brin'
  AND i.indrelid IN ({", ".join(f"'{t}'::regclass" for t in LOG_TABLES)})
"""
_HITS_SQL = [
    f"""
    INSERT INTO {table} (accessed_at, client, kind, bytes_sent, {col})
    SELECT CAST(:day AS timestamp) AT TIME ZONE 'UTC'
               + floor(random() * 86400) * interval '1 second',
           lpad(to_hex((random() * 4503599627370496)::bigint), 16, '0'), 'direct', {size},
           {value}
    FROM generate_series(1, :n / {div})
    """
    for table, col, value, size, div in (
        ("project_hits", "package",
         f"'pkg' || (least(floor(power(1.0 - random(), -1.0)), {PACKAGES})::int - 1)", 20000, 50),
        ("json_hits", "package",
         f"'pkg' || (least(floor(power(1.0 - random(), -1.0)), {PACKAGES})::int - 1)", 5000, 200),
        ("web_hits", "page",
         "(ARRAY['index.html', 'faq.html', 'stats.html', 'packages.html'])"
         "[1 + floor(random() * 4)::int]", 8000, 100),
    )
]  # fmt: skip


#: Seconds per fill step, printed with the progress.
FILL_STEPS: dict[str, float] = {}


_STEPS_LOCK = threading.Lock()


def _step(name: str, t: float) -> float:
    now = time.perf_counter()
    with _STEPS_LOCK:
        FILL_STEPS[name] = FILL_STEPS.get(name, 0.0) + now - t
    return now


def fill_day(engine: Engine, day: date, n: int, spike: int, seed: int) -> None:
    """Day *day*: *n* downloads (the first *spike* of them of 3 spiking packages),
    searches and page hits made in SQL, the bandwidth of other requests through
    the ingest's ``store_batch``, then the day rolled up by ``rollup_day`` (the
    ingest's own rollup statement, reading the day's raw rows)."""
    p = {"day": day, "n": n, "spike": spike}
    t = time.perf_counter()
    with engine.begin() as conn:
        seed_v = (seed * 1000 + day.toordinal() % 1000) / 1e6
        conn.execute(text("SELECT setseed(:s)"), {"s": seed_v})
        conn.execute(text(_DOWNLOADS_SQL), p)
        t = _step("insert downloads", t)
        conn.execute(text(_SEARCHES_SQL), p)
        for sql in _HITS_SQL:
            conn.execute(text(sql), p)
        d = day.isoformat()
        store_batch(
            conn, {},
            [[d, "metadata", "pip", n // 2, n // 2 * 4000], [d, "index_root", "pip", n // 100,
             n // 100 * 900_000], [d, "other", "direct", n // 50, n // 50 * 2000]],
        )  # fmt: skip
        t = _step("insert searches, hits", t)
        conn.execute(text(_SUMMARISE_SQL))
        t = _step("BRIN summarise", t)
    with engine.begin() as conn:
        rollup_day(conn, day)
    _step("rollup_day", t)


def fill(engine: Engine, n: int, seed: int) -> int:
    """The whole quarter (with progress); returns the downloads stored."""
    files = [(f"pkg{i}", f"pkg{i}-1.0-cp39-cp39-linux_armv7l.whl") for i in range(PACKAGES)]
    with engine.begin() as conn:
        abis.add_abi(conn, "cp39", "linux_armv7l")
        versions.add_versions(conn, [versions.NewVersion(p, "1.0") for p, _f in files])
        for i, (pkg, fname) in enumerate(files[:500]):
            bid = builds.start_build(conn, pkg, "1.0", "cp39-linux_armv7l", "bench")
            builds.finish_build(
                conn,
                bid,
                "success",
                timedelta(seconds=30 + i % 600),
                files=[FileRecord(filename=fname, size=1000, sha256=f"{i:064x}")],
            )
    print(f"  500 builds and {PACKAGES:,} versions recorded", flush=True)
    # One thread per month: PostgreSQL does the work, so they use every core;
    # rollup_day recomputes its day's month, so two days of one month are
    # never rolled up at once.
    by_month: dict[int, list[int]] = {}
    for i in range(DAYS):
        by_month.setdefault((START + timedelta(days=i)).month, []).append(i)
    t0 = time.perf_counter()
    done = [0, 0]
    lock = threading.Lock()

    def month_days(days: list[int]) -> None:
        for i in days:
            # A slow rise over the quarter, as downloads grow; one spike day.
            k = n // DAYS + (i - DAYS // 2) * n // (DAYS * DAYS * 2)
            spike = 2 * k if i == SPIKE_DAY else 0
            fill_day(engine, START + timedelta(days=i), k + spike, spike, seed)
            with lock:
                done[0] += 1
                done[1] += k + spike
                el = time.perf_counter() - t0
                if done[0] % 10 == 0 or done[0] == DAYS:
                    steps = ", ".join(f"{k} {v:.0f} s" for k, v in FILL_STEPS.items())
                    print(
                        f"  filled {done[0]}/{DAYS} days, {done[1]:,} downloads, {el:.0f} s "
                        f"({done[1] / el:,.0f} downloads/s, load {os.getloadavg()[0]:.1f}; "
                        f"summed over threads: {steps})",
                        flush=True,
                    )

    with ThreadPoolExecutor(len(by_month)) as pool:
        list(pool.map(month_days, by_month.values()))
    total = done[1]
    with engine.connect() as conn:
        # As autovacuum would after a bulk load: plans need statistics.
        conn.execute(text("ANALYZE"))
        conn.commit()
    return total


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def time_report(engine: Engine, period: queries.Period, out: Path) -> dict[str, float]:
    """One report in this process: phase seconds, wall, CPU here and in chart workers."""
    timings: dict[str, float] = {}
    with engine.connect() as conn:
        k0, c0, t0 = cpu_children(), time.process_time(), time.perf_counter()
        report.write_report(conn, period, out, timings=timings)
        timings["wall"] = time.perf_counter() - t0
        timings["cpu"] = time.process_time() - c0
        timings["cpu_workers"] = cpu_children() - k0
    return timings


def time_command(dsn: str, out: Path) -> dict[str, float]:
    """``piw-report --period 2021Q4`` as its own process: wall, CPU, peak RSS."""
    code = (
        "import resource, sys, time; t = time.perf_counter(); "
        "from piwheels.stats.report_cli import COMMAND; "
        "i = time.perf_counter() - t; "
        "c = COMMAND.run(sys.argv[1:], system_config=None, user_config=None, environ={}); "
        "print('IMPORT', i, file=sys.stderr); sys.exit(c)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    k0, t0 = cpu_children(), time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", code, "--period", "2021Q4", "-o", str(out), "--dsn", dsn],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"piw-report failed: {res.stderr.strip()[-500:]}")
    imp = next(float(x.split()[1]) for x in res.stderr.splitlines() if x.startswith("IMPORT"))
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall": wall, "cpu": cpu_children() - k0, "import": imp, "rss_mib": rss}


def explain(engine: Engine, period: queries.Period) -> None:
    """Every statement of the report's queries, with its plan's relations, rows and time."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cur: Any, statement: str, params: Any, *_a: Any) -> None:
        seen.append((statement, params))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", record)
        queries.collect(conn, period)
        spike.scan(conn, period.start, period.end)
        event.remove(conn, "before_cursor_execute", record)
        print(f"EXPLAIN ANALYZE of the report's {len(seen)} statements:")
        raw_total = 0.0
        for statement, params in seen:
            plan = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
            ).scalar_one()
            top = plan[0]
            rels: dict[str, int] = {}

            def walk(node: dict[str, Any], rels: dict[str, int] = rels) -> None:
                if "Relation Name" in node:
                    name = node["Relation Name"]
                    scan = node["Node Type"].replace(" Scan", "")
                    key = f"{name}({scan})"
                    rels[key] = rels.get(key, 0) + int(node["Actual Rows"] * node["Actual Loops"])
                for sub in node.get("Plans", ()):
                    walk(sub, rels)

            walk(top["Plan"])
            ms = top["Execution Time"]
            raw = any(k.split("(")[0] in RAW_TABLES for k in rels)
            raw_total += ms if raw else 0
            first = " ".join(statement.split())[:60]
            print(
                f"  {ms:8.1f} ms {'RAW ' if raw else '    '}"
                f"{', '.join(f'{k} {v:,}' for k, v in rels.items()) or '-'}  | {first}"
            )
        print(f"  statements reading a raw hit table: {raw_total:.1f} ms in all")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 50,000,000 downloads")
    ap.add_argument("--dsn", help="a superuser URL of a server to use instead of a private one")
    ap.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the cluster in DIR; a later run of the same scale reuses it",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="reports timed (each way)")
    ap.add_argument("--explain", action="store_true", help="print every query's plan")
    args = ap.parse_args(argv)
    n = int(FULL * args.scale)
    tmp = Path(tempfile.mkdtemp(prefix="piwbench-", dir="/tmp"))
    cluster = None
    if args.dsn:
        admin = args.dsn
    else:
        from piwheels.pgcluster import Cluster

        cluster = Cluster(args.keep or tmp / "pg", fsync=False)
        cluster.start()
        admin = cluster.url()
    name = f"piwbench_report_{n}_{args.seed}" if args.keep else f"piwbench_report_{os.getpid()}"
    url = make_url(admin).set(database=name)
    url_s = url.render_as_string(hide_password=False)
    try:
        admin_engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as c:
            exists = c.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": name})
            reuse = exists.first() is not None
        admin_engine.dispose()
        initdb.upgrade(url_s, yes=True)
        engine = create_engine(url_s)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT coalesce(sum(downloads), 0) FROM daily_totals"))
            have = int(stored.scalar_one())
        if reuse and have:
            print(f"reusing {name}: {have:,} downloads rolled up")
        else:
            print(f"filling {n:,} downloads over {DAYS} days (load {load()})", flush=True)
            t0 = time.perf_counter()
            # Larger sort and temp-table memory for the fill's big per-day statements.
            fill_engine = create_engine(
                url_s, connect_args={"options": "-c work_mem=256MB -c temp_buffers=256MB"}
            )
            total = fill(fill_engine, n, args.seed)
            fill_engine.dispose()
            t_fill = time.perf_counter() - t0
            print(
                f"filled {total:,} downloads in {t_fill:.0f} s "
                f"({total / t_fill:,.0f} downloads/s with searches, hits and rollup_day)"
            )
        period = queries.quarter(2021, 4)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM downloads")).scalar_one()
            size = conn.execute(
                text("SELECT pg_size_pretty(pg_total_relation_size('downloads'))")
            ).scalar_one()
            t2 = time.perf_counter()
            conn.execute(
                text("SELECT count(*) FROM downloads WHERE accessed_at >= :s AND accessed_at < :e"),
                {"s": period.start, "e": period.end},
            ).scalar_one()
            t_scan = time.perf_counter() - t2
        print(f"downloads table: {rows:,} rows, {size}; load {load()}")
        if args.explain:
            explain(engine, period)
        dsn = url_s.replace("postgresql+psycopg2://", "postgresql://")
        runs = []
        for i in range(args.runs):
            t = time_report(engine, period, tmp / f"report{i}")
            runs.append(t)
            phases = ", ".join(
                f"{k} {t.get(k, 0):.2f}" for k in ("queries", "spikes", "import", "draw", "write")
            )
            print(
                f"report in process, run {i + 1}: {t['wall']:.2f} s wall ({phases}); CPU "
                f"{t['cpu']:.2f} s here + {t['cpu_workers']:.2f} s chart workers; "
                f"load {load()}"
            )
        cmds = []
        for i in range(args.runs):
            cmd = time_command(dsn, tmp / f"cmd{i}")
            cmds.append(cmd)
            print(
                f"piw-report command, run {i + 1}: {cmd['wall']:.2f} s wall (imports "
                f"{cmd['import']:.2f} s), CPU {cmd['cpu']:.2f} s with its chart workers, "
                f"peak RSS {cmd['rss_mib']:.0f} MiB; load {load()}"
            )
        with open(tmp / "report0" / "report.json", encoding="utf-8") as fh:
            data = json.load(fh)
        print(
            f"report: {data['totals']['downloads']:,} downloads in the quarter, "
            f"{len(data['spikes'])} spike day(s) "
            f"({', '.join(s['day'] for s in data['spikes'])})"
        )
        # piw-report spike --date: the one query that reads raw downloads (the day's rows,
        # found by the BRIN on accessed_at) for the clients behind the driving packages.
        spike_day = START + timedelta(days=SPIKE_DAY)
        with engine.connect() as conn:
            t3 = time.perf_counter()
            found = spike.analyse(conn, spike_day)
            t_spike = time.perf_counter() - t3
        print(f"spike analysis with clients, {t_spike:.2f} s: {found.summary()}")
        best = min(r["wall"] for r in runs)
        best_cmd = min(x["wall"] for x in cmds)
        print(
            f"best: in process {best:.2f} s, piw-report command {best_cmd:.2f} s; "
            f"raw limit: one sequential count of the quarter's downloads {t_scan:.2f} s "
            f"(report / raw scan = {best_cmd / t_scan:.2f})"
        )
        print("aim: under 5 s for the quarterly report")
        engine.dispose()
    finally:
        if cluster is not None and args.keep is None:
            cluster.destroy()
        elif cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
