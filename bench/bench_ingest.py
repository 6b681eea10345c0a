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
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000,000 lines")
    ap.add_argument("--dsn", help="a superuser URL of a server to use instead of a private one")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
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
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable, "-c", _LOGGER, str(log), "--log-endpoint", address,
                "--secret-file", str(tmp / "secret"), "--batch-size", str(args.batch_size),
                "--max-pending", "8", "--workers", str(args.workers),
            ],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        t_send = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        logger_rss = int(proc.stderr.rsplit("RSS", 1)[1].split()[0])
        # The rollups are current at every ACK (one statement per batch): nothing is left.
        days = len(task.touched)
        t_total = time.perf_counter() - t0
        stored = task.stored
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
            t3 = time.perf_counter()
            rows = 0
            for table, data in dumps.items():
                cur.copy_expert(f"COPY raw_{table} FROM STDIN", io.StringIO(data))
                rows += data.count("\n")
            raw.commit()
            t_copy = time.perf_counter() - t3
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
        print(f"raw COPY of the same {rows:,} rows: {t_copy:.2f} s, {copy_rate:,.0f} rows/s; "
              f"ingest/raw COPY = {rate / copy_rate:.2f}")  # fmt: skip
        print(f"raw read of the log: {nlines / t_read:,.0f} lines/s; "
              f"ingest/raw read = {rate / (nlines / t_read):.3f}")  # fmt: skip
        print(
            f"peak RSS: logger {logger_rss / 1024:.0f} MiB, master side (this process) "
            f"{master_rss / 1024:.0f} MiB (before ingest {rss_before / 1024:.0f} MiB)"
        )
        print("aim: 100,000 lines/s end to end")
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
