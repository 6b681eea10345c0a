"""Benchmark: parse + classify + anonymise a synthetic nginx log, beside raw line reading.

    python bench/bench_logparse.py --scale 0.05         # 50,000 lines
    python bench/bench_logparse.py                      # 1,000,000 lines

Prints lines per second for each stage and for the machine's raw limit on the
same file (iterating its lines in binary), the ratio of the two, and the
peak memory (RSS) of a process that runs the whole pipeline.  The log is
generated once per scale and seed and kept in --workdir for reuse.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piwheels.logger.anonymise import Anonymiser  # noqa: E402
from piwheels.logger.parse import LogParser, MalformedLine  # noqa: E402
from piwheels.logger.reader import LogReader, iter_lines, open_log  # noqa: E402

SECRET = b"bench-secret-0123456789abcdef"
FULL = 1_000_000
DAYS = 30


def make_log(workdir: Path, lines: int, seed: int, fmt: str) -> Path:
    from tests.synthetic_logs import SpikeSpec, generate

    path = workdir / f"bench-{fmt}-{lines}-{seed}.log"
    if not path.exists():
        t0 = time.perf_counter()
        generate(
            path,
            days=DAYS,
            lines_per_day=max(1, lines // DAYS),
            seed=seed,
            fmt=fmt,
            spike=SpikeSpec(days=[DAYS // 2]),
        )
        print(f"generated {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def timed(fn: Callable[[], int], repeat: int) -> tuple[int, float]:
    """Run *fn* *repeat* times; the line count and the best time."""
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return n, best


def raw_iter(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for _ in f:
            n += 1
    return n


def raw_iter_lines(path: Path) -> int:
    n = 0
    with open_log(path) as f:
        for _ in iter_lines(f):
            n += 1
    return n


def decode_json_loads(path: Path) -> int:
    # The obvious way, for comparison: json.loads on every line.
    n = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                pass
            n += 1
    return n


def parse_only(path: Path) -> int:
    p = LogParser().parse
    n = 0
    with open_log(path) as f:
        for line in iter_lines(f):
            try:
                p(line.decode("utf-8", "replace"))
            except MalformedLine:
                pass
            n += 1
    return n


def pipeline(path: Path, mode: str) -> int:
    reader = LogReader(Anonymiser(mode, SECRET if mode == "hash" else None))
    for _ in reader.read_files([path]):
        pass
    return reader.stats.lines


def fast_path(path: Path, batch: int = 2000) -> int:
    """As piw-logger's parser workers run: BatchEncoder.add_lines, a batch per chunk."""
    from piwheels.logger.batch import BatchEncoder

    reader = LogReader(Anonymiser("hash", SECRET))
    enc = BatchEncoder()
    with open(path, "rb") as f:
        lines = f.readlines()
    for i in range(0, len(lines), batch):
        enc.add_lines(lines[i : i + batch], reader)
        enc.take()
    return reader.stats.lines


def child(path: Path) -> None:
    """Run the whole pipeline alone and print its peak RSS (KiB)."""
    n = pipeline(path, "hash")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"lines": n, "maxrss_kib": rss}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000,000 lines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", choices=["json", "combined", "mixed"], default="json")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    # The synthetic log holds garbage on purpose; its warnings are not figures.
    logging.disable(logging.WARNING)
    if args.child:
        child(args.child)
        return 0
    if args.scale <= 0:
        ap.error("--scale must be positive")
    path = make_log(args.workdir, int(FULL * args.scale), args.seed, args.format)
    size = path.stat().st_size
    stages: list[tuple[str, Callable[[], int]]] = [
        ("raw: iterate lines (binary)", lambda: raw_iter(path)),
        ("raw: bounded readline (iter_lines)", lambda: raw_iter_lines(path)),
        ("reference: json.loads per line", lambda: decode_json_loads(path)),
        ("parse only", lambda: parse_only(path)),
        ("parse + classify + anonymise (hash)", lambda: pipeline(path, "hash")),
        ("parse + classify + anonymise (prefix)", lambda: pipeline(path, "prefix")),
        ("fast path: COPY rows (as the workers)", lambda: fast_path(path)),
    ]
    print(f"log: {path} ({size / 1e6:.1f} MB, format {args.format})")
    results = {}
    for name, fn in stages:
        n, secs = timed(fn, args.repeat)
        results[name] = n / secs
        print(f"{name:40s} {n:>10,d} lines {secs:8.3f} s {n / secs:>12,.0f} lines/s "
              f"{size / secs / 1e6:8.1f} MB/s")  # fmt: skip
    raw = results["raw: iterate lines (binary)"]
    full = results["parse + classify + anonymise (hash)"]
    print(f"ratio pipeline / raw line reading: {full / raw:.3f} ({raw / full:.1f}x slower)")
    print(f"pipeline vs 100,000 lines/s target: {full / 100_000:.2f}x")
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    print(f"peak RSS of a process running the pipeline: {info['maxrss_kib'] / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
