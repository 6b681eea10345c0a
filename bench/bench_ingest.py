"""Benchmark: a synthetic access log end to end (piw-logger -> LogIngest -> PostgreSQL).

    python bench/bench_ingest.py --scale 0.05      # 50,000 lines
    python bench/bench_ingest.py                   # 1,000,000 lines

Runs the real piw-logger (a process) against a LogIngest task (in this
process) on a private PostgreSQL cluster (or --dsn), then rolls up every
day.  Prints lines per second for the whole path and for its parts, beside
the machine's raw limit for storing the same rows (rollups included: they are
updated in each batch's transaction) (COPY of the exported hit
rows into empty copies of the tables, and reading the log's lines), the
ratios, and the peak memory (RSS) of the logger and of the master side.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from piwheels.db import initdb  # noqa: E402
from piwheels.master.env import MasterEnv  # noqa: E402
from piwheels.master.log_ingest import LogIngest  # noqa: E402
from piwheels.settings import Settings  # noqa: E402
from piwheels.transport import Context  # noqa: E402

FULL = 1_000_000
DAYS = 30
TABLES = ("downloads", "searches", "project_hits", "json_hits", "web_hits")

_LOGGER = """
import resource, sys
from piwheels.logger.main import COMMAND
rc = COMMAND.run(sys.argv[1:], system_config=None, user_config=None, environ={})
me = resource.getrusage(resource.RUSAGE_SELF)
print("RSS", me.ru_maxrss, "CPU", me.ru_utime + me.ru_stime, file=sys.stderr)
sys.exit(rc)
"""


def make_log(workdir: Path, lines: int, seed: int) -> Path:
    path = workdir / f"bench-ingest-{lines}-{seed}.log"
    if not path.exists():
        subprocess.run(
            [
                sys.executable, str(ROOT / "tests" / "synthetic_logs.py"), "--days", str(DAYS),
                "--lines-per-day", str(max(1, lines // DAYS)), "--seed", str(seed),
                "--spike-days", str(DAYS // 2), "-o", str(path),
            ],
            check=True,
            cwd=ROOT,
        )  # fmt: skip
    return path


def _stat(pid: int) -> list[str]:
    # Fields after the command name: [0] state, [1] ppid, ... [11] utime, [12] stime,
    # [13] cutime, [14] cstime (children waited for).
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one PostgreSQL backend so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeCPU:
    """CPU seconds of a process and its descendants, sampled from /proc while they run
    (the parser workers are the forkserver's children: no rusage reaches us)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.ticks: dict[int, int] = {}

    def sample(self) -> None:
        todo = [self.root]
        while todo:
            pid = todo.pop()
            try:
                fields = _stat(pid)
                for tid in os.listdir(f"/proc/{pid}/task"):
                    todo += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
            except OSError:
                continue
            used = int(fields[11]) + int(fields[12])
            self.ticks[pid] = max(self.ticks.get(pid, 0), used)

    def seconds(self, exclude: int | None = None) -> float:
        ticks = sum(t for pid, t in self.ticks.items() if pid != exclude)
        return ticks / os.sysconf("SC_CLK_TCK")


def _thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process."""
    fields = _stat_path(Path(f"/proc/self/task/{native_id}/stat"))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _master_cpu(task: LogIngest) -> float:
    """CPU seconds of the master side: the ingest task's thread and its storing thread."""
    cpu = _thread_cpu(task.native_id)  # type: ignore[arg-type]
    if task.store_thread is not None:
        cpu += _thread_cpu(task.store_thread)
    return cpu


def _stat_path(path: Path) -> list[str]:
    return path.read_text().rsplit(")", 1)[1].split()


def _cluster_cpu(postmaster: int) -> float:
    """CPU seconds of a whole PostgreSQL server: the postmaster, its live children, and
    (through its cutime/cstime) the children that exited."""
    fields = _stat(postmaster)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = _stat(int(entry))
            except OSError:
                continue
            if int(f[1]) == postmaster:
                ticks += int(f[11]) + int(f[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _pg_cpu(postmaster: int) -> float:
    """As :func:`_cluster_cpu`, from the postmaster's children list (cheap enough to sample)."""
    fields = _stat(postmaster)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for child in children:
        try:
            f = _stat(int(child))
        except OSError:
            continue
        ticks += int(f[11]) + int(f[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def steady_figures(
    samples: list[tuple[float, ...]], nlines: int, lo: float = 0.1, hi: float = 0.9
) -> dict[str, float] | None:
    """Rate and CPU use (cores) of each process between *lo* and *hi* of the records stored.

    Each sample is (seconds, logger main CPU, parser workers' CPU, master thread CPU,
    PostgreSQL CPU, records stored).  Start-up (interpreters, workers, the first batches
    in flight) and the drain at the end are outside the window.
    """
    final = samples[-1][5]
    if final <= 0:
        return None
    inside = [s for s in samples if lo * final <= s[5] <= hi * final]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    a, b = inside[0], inside[-1]
    dt = b[0] - a[0]
    names = ("main", "workers", "master", "postgres")
    out = {name: (b[i] - a[i]) / dt for i, name in enumerate(names, 1)}
    out["rate"] = (b[5] - a[5]) / dt * nlines / final
    out["seconds"] = dt
    first = next((s[0] for s in samples if s[5] > 0), samples[-1][0])
    out["first_ack"] = first
    return out


def stage_breakdown(log: Path, admin_url: Any, batch_size: int) -> None:
    """Each stage alone, in this process, on a fresh database: CPU (or wall) us per line."""
    from sqlalchemy import text

    from piwheels import protocols, transport
    from piwheels.db.downloads import store_log_batch
    from piwheels.db.stats import rollup_day
    from piwheels.logger.anonymise import Anonymiser
    from piwheels.logger.batch import BatchEncoder
    from piwheels.logger.classify import Classifier
    from piwheels.logger.parse import LogParser, MalformedLine
    from piwheels.logger.reader import LogReader

    logging.disable(logging.WARNING)  # the log's garbage lines are not figures
    secret = b"bench-secret-0123456789abcdef"
    lines = log.read_bytes().splitlines(keepends=True)
    n = len(lines)
    cpu = time.process_time
    out: list[tuple[str, float, str]] = []

    t = cpu()
    texts = [line.decode("utf-8", "replace") for line in lines]
    parse = LogParser().parse
    parsed = []
    for line in texts:
        try:
            parsed.append(parse(line))
        except MalformedLine:
            pass
    out.append(("parse (LogParser, incl. decode)", cpu() - t, "cpu"))
    t = cpu()
    client = Anonymiser("hash", secret).client
    for p in parsed:
        client(p.addr, p.time)
    t_anon = cpu() - t
    t = cpu()
    classify = Classifier(Anonymiser("hash", secret)).classify
    records = [classify(p) for p in parsed]
    out.append(("classify (routes, user agents)", cpu() - t - t_anon, "cpu"))
    out.append(("anonymise (hash per address per day)", t_anon, "cpu"))
    t = cpu()
    enc = BatchEncoder()
    for i in range(0, len(records), batch_size):
        enc.extend(records[i : i + batch_size])
        enc.take()
    out.append(("encode (AccessRecord -> COPY rows)", cpu() - t, "cpu"))
    t = cpu()
    reader = LogReader(Anonymiser("hash", secret))
    enc = BatchEncoder()
    payloads = []
    for i in range(0, n, batch_size):
        enc.add_lines(lines[i : i + batch_size], reader)
        payloads.append(enc.take())
    out.append(("fast path: all four (add_lines, as workers run)", cpu() - t, "cpu"))
    t = cpu()
    wire = []
    for i, payload in enumerate(payloads, 1):
        # As the parser workers do: encoded unchecked (the master checks every batch).
        wire.append(transport.encode("BATCH", {"batch_id": i, **payload}))
    out.append(("encode (CBOR, in the parser workers)", cpu() - t, "cpu"))
    t = cpu()
    batches = []
    for payload_bytes in wire:
        _msg, data = transport.decode(payload_bytes)
        batches.append(transport._check(protocols.logger, "BATCH", data, sending=False))
    out.append(("master check (CBOR, one regex per table, sums)", cpu() - t, "cpu"))

    url = make_url(admin_url).set(database=f"piwbench_stages_{os.getpid()}")
    url_s = url.render_as_string(hide_password=False)
    initdb.upgrade(url_s, yes=True)
    engine = create_engine(url_s)
    try:
        timings: dict[str, float] = {}
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            conn.commit()
            b0, t = _backend_cpu(pid), cpu()
            for data in batches:
                with conn.begin():
                    store_log_batch(
                        conn,
                        data["tables"],
                        data["extra"],
                        source=b"bench",
                        batch_id=data["batch_id"],
                        rollup=data.get("rollup"),
                        timings=timings,
                    )
            t_master, b_store = cpu() - t, _backend_cpu(pid) - b0
            out.append(("COPY into the hit tables", timings["copy"], "wall"))
            out.append(("tally of the rollups (master, Python)", timings["tally"], "cpu"))
            out.append(("rollup upserts (one statement)", timings["statement"], "wall"))
            out.append(("  master process CPU for all three", t_master, "cpu"))
            out.append(("  PostgreSQL backend CPU for all three", b_store, "cpu"))
            day = conn.execute(
                text(
                    "SELECT (accessed_at AT TIME ZONE 'UTC')::date FROM downloads "
                    "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
                )
            ).scalar_one()
            rows = conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM downloads d WHERE {r}) + "
                    "(SELECT count(*) FROM searches d WHERE {r}) + "
                    "(SELECT count(*) FROM project_hits d WHERE {r}) + "
                    "(SELECT count(*) FROM json_hits d WHERE {r}) + "
                    "(SELECT count(*) FROM web_hits d WHERE {r})".format(
                        r="(accessed_at AT TIME ZONE 'UTC')::date = :d"
                    )
                ),
                {"d": day},
            ).scalar_one()
            conn.commit()
            b0, t0 = _backend_cpu(pid), time.perf_counter()
            rollup_day(conn, day)
            conn.commit()
            t_roll, b_roll = time.perf_counter() - t0, _backend_cpu(pid) - b0
    finally:
        engine.dispose()
    print(f"per stage, {n:,} lines, each stage alone in one process:")
    for name, secs, kind in out:
        print(f"  {name:50s} {secs / n * 1e6:7.2f} us/line ({kind})")
    print(
        f"rollup_day (recompute one day from the raw hits), {day}: {rows:,} hit rows, "
        f"{t_roll:.2f} s wall, {b_roll:.2f} s PostgreSQL CPU"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000,000 lines")
    ap.add_argument("--dsn", help="a superuser URL of a server to use instead of a private one")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=5000,
        help="lines per batch ([logger] batch_size; 5000: ~0.3 aggregates per line, not ~0.45)",
    )
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--max-pending", type=int, default=8, help="batches unacknowledged at most")
    ap.add_argument(
        "--no-stages", action="store_true", help="skip the per-stage breakdown (in this process)"
    )
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "piwbench")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = make_log(args.workdir, int(FULL * args.scale), args.seed)
    with open(log, "rb") as f:
        nlines = sum(1 for _ in f)
    cluster = None
    tmp = Path(tempfile.mkdtemp(prefix="piwbench-", dir="/tmp"))
    if args.dsn:
        admin = args.dsn
    else:
        from piwheels.pgcluster import Cluster

        cluster = Cluster(tmp / "pg", fsync=False)
        cluster.start()
        admin = cluster.url()
    url = make_url(admin).set(database=f"piwbench_ingest_{os.getpid()}")
    url_s = url.render_as_string(hide_password=False)
    try:
        initdb.upgrade(url_s, yes=True)
        engine = create_engine(url_s)
        context = Context()
        address = f"ipc://{tmp}/log"
        env = MasterEnv(
            settings=Settings(), addresses={"logger": address}, output_path=tmp, engine=engine
        )
        task = LogIngest(context, env, rollup_interval=3600)
        task.start()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        postmaster = cluster.pid if cluster is not None else None
        pg0 = _cluster_cpu(postmaster) if postmaster else 0.0
        cpu0 = _master_cpu(task)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable, "-c", _LOGGER, str(log), "--log-endpoint", address,
                "--secret-file", str(tmp / "secret"), "--batch-size", str(args.batch_size),
                "--max-pending", str(args.max_pending), "--workers", str(args.workers), "-v",
            ],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        tree = TreeCPU(proc.pid)
        samples: list[tuple[float, ...]] = []
        while True:
            tree.sample()
            samples.append(
                (
                    time.perf_counter() - t0,
                    tree.ticks.get(proc.pid, 0) / os.sysconf("SC_CLK_TCK"),
                    tree.seconds(exclude=proc.pid),
                    _master_cpu(task) - cpu0,
                    _pg_cpu(postmaster) - pg0 if postmaster else 0.0,
                    task.stored,
                )
            )
            try:
                _out, err = proc.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
        t_send = time.perf_counter() - t0
        cpu_master = _master_cpu(task) - cpu0
        cpu_pg = _cluster_cpu(postmaster) - pg0 if postmaster else None
        if proc.returncode != 0:
            print(err, file=sys.stderr)
            return 1
        logger_rss = int(err.rsplit("RSS", 1)[1].split()[0])
        # The logger's own CPU exactly (it reports it), its workers' as last sampled.
        cpu_logger = float(err.rsplit("CPU", 1)[1].split()[0])
        cpu_workers = tree.seconds(exclude=proc.pid)
        # The rollups are current at every ACK (one statement per batch): nothing is left.
        days = len(task.touched)
        t_total = time.perf_counter() - t0
        stored = task.stored
        batches, groups = task.batches, task.groups
        task.quit()
        task.join(30)
        context.close()
        master_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        # Raw limits: read the log's lines; COPY the very rows stored into empty copies.
        t2 = time.perf_counter()
        with open(log, "rb") as f:
            for _ in f:
                pass
        t_read = time.perf_counter() - t2
        dumps = {}
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for table in TABLES:
                buf = io.StringIO()
                cur.copy_expert(f"COPY {table} TO STDOUT", buf)
                dumps[table] = buf.getvalue()
                cur.execute(f"CREATE TABLE raw_{table} (LIKE {table} INCLUDING ALL)")
            raw.commit()
            pg1 = _cluster_cpu(postmaster) if postmaster else 0.0
            t3 = time.perf_counter()
            rows = 0
            for table, data in dumps.items():
                cur.copy_expert(f"COPY raw_{table} FROM STDIN", io.StringIO(data))
                rows += data.count("\n")
            raw.commit()
            t_copy = time.perf_counter() - t3
            cpu_pg_copy = _cluster_cpu(postmaster) - pg1 if postmaster else None
        finally:
            raw.close()
        engine.dispose()
        rate = nlines / t_total
        copy_rate = rows / t_copy
        print(f"log: {nlines:,} lines ({log.stat().st_size / 2**20:.1f} MiB), {days} days")
        print(f"stored: {stored:,} records ({rows:,} hit rows; the rest bandwidth-only)")
        print(f"end to end (parse, classify, send, store, roll up): {t_total:.2f} s, "
              f"{rate:,.0f} lines/s")  # fmt: skip
        print(f"  logger until every ACK: {t_send:.2f} s, {nlines / t_send:,.0f} lines/s")
        print(f"  rollups: in each batch's transaction ({days} days touched)")
        print(f"  {batches:,} batches of {args.batch_size:,} lines, {groups:,} transactions")
        print(f"raw COPY of the same {rows:,} rows: {t_copy:.2f} s, {copy_rate:,.0f} rows/s; "
              f"ingest/raw COPY = {rate / copy_rate:.2f}")  # fmt: skip
        print(f"raw read of the log: {nlines / t_read:,.0f} lines/s; "
              f"ingest/raw read = {rate / (nlines / t_read):.3f}")  # fmt: skip
        print(
            f"peak RSS: logger {logger_rss / 1024:.0f} MiB, master side (this process) "
            f"{master_rss / 1024:.0f} MiB (before ingest {rss_before / 1024:.0f} MiB)"
        )
        us = 1e6 / nlines
        pg_text = f"{cpu_pg * us:.1f}" if cpu_pg is not None else "n/a (--dsn)"
        copy_text = f"{cpu_pg_copy * 1e6 / rows:.1f}" if cpu_pg_copy is not None else "n/a"
        print(
            f"CPU per line: logger {(cpu_logger + cpu_workers) * us:.1f} us "
            f"(main {cpu_logger * us:.1f} + parser workers {cpu_workers * us:.1f}), "
            f"master (ingest and storing threads) {cpu_master * us:.1f} us, "
            f"PostgreSQL (whole server) {pg_text} us; raw COPY: PostgreSQL {copy_text} us/row"
        )
        steady = steady_figures(samples, nlines)
        if steady is not None:
            cores = sum(steady[k] for k in ("main", "workers", "master", "postgres"))
            print(
                f"steady state (10%-90% of the records stored, {steady['seconds']:.2f} s): "
                f"{steady['rate']:,.0f} lines/s; first ACK after {steady['first_ack']:.2f} s"
            )
            print(
                f"  CPU in use (cores): logger main {steady['main']:.2f}, parser workers "
                f"{steady['workers']:.2f} ({args.workers} processes), master threads "
                f"{steady['master']:.2f}, PostgreSQL {steady['postgres']:.2f}; all {cores:.2f} "
                f"of {os.cpu_count()} (load average {os.getloadavg()[0]:.1f})"
            )
        waited = err.rsplit("waited ", 1)[-1].split("\n", 1)[0] if "waited " in err else "?"
        print(f"  logger waited {waited}")
        store_idle = task.store_wall - task.store_cpu
        print(
            f"  master: {task.store_wall:.2f} s in store transactions ({task.store_cpu:.2f} s "
            f"of the storing thread's CPU, {store_idle:.2f} s waiting for PostgreSQL), "
            f"{cpu_master:.2f} s CPU in all (both threads), of {t_send:.2f} s"
        )
        print("aim: 100,000 lines/s end to end")
        if not args.no_stages:
            stage_breakdown(log, admin, args.batch_size)
    finally:
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
