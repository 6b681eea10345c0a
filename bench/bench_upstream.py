"""Benchmark: following a PyPI-sized upstream.

A stand-in upstream (tests/upstream/server.py, in its own process) serves a
root of 600,000 projects x scale, of which 50,000 x scale changed since the
store's last pass (each gained a release 1.1).  Measured, on this machine:

- the root: fetch + parse, and the diff against the stored serials;
- changed projects processed per second (fetch, diff, apply to the
  in-memory store), next to the raw loopback HTTP request rate against the
  same server (keep-alive http.client, same number of threads);
- peak memory (max RSS) of this process, which plays the master.

Aims (issue 6): diff under 10 s, 500 projects/s.

    python bench/bench_upstream.py --scale 0.05
"""

from __future__ import annotations

import argparse
import http.client
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from piwheels.upstream.client import SimpleClient  # noqa: E402
from piwheels.upstream.events import KnownProject, KnownRelease  # noqa: E402
from piwheels.upstream.follower import Follower  # noqa: E402
from piwheels.upstream.memory import MemoryStore  # noqa: E402


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_rate(index_url: str, names: list[str], threads: int) -> float:
    """Keep-alive GETs of project pages per second, no parsing: the machine's limit."""
    parts = urlsplit(index_url)
    chunks = [names[i::threads] for i in range(threads)]

    def run(chunk: list[str]) -> None:
        conn = http.client.HTTPConnection(parts.netloc, timeout=30)
        for name in chunk:
            conn.request(
                "GET",
                f"{parts.path}{name}/",
                headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            )
            conn.getresponse().read()
        conn.close()

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(names) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 600k projects, 50k changed")
    parser.add_argument("--workers", type=int, default=4, help="fetch threads (default 4)")
    parser.add_argument(
        "--no-info", action="store_true", help="do not fetch the project JSON for new releases"
    )
    args = parser.parse_args()
    total = max(10, int(600_000 * args.scale))
    changed = max(1, int(50_000 * args.scale))

    print(f"upstream: {total:,} projects, {changed:,} changed, {args.workers} fetch threads")
    t = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.upstream.server",
            "--generate",
            str(total),
            "--extra-release",
            str(changed),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        index_url = proc.stdout.readline().strip()
        base = index_url.rsplit("/simple/", 1)[0]
        print(f"  stand-in server ready in {time.perf_counter() - t:.1f} s")
        client = SimpleClient(
            index_url, json_url=None if args.no_info else base + "/pypi/{name}/json", timeout=60
        )

        t = time.perf_counter()
        root = client.get_root()
        fetch = time.perf_counter() - t
        assert root is not None
        print(f"root fetch + parse:      {fetch:8.2f} s  ({len(root.projects):,} projects)")

        # The store as it was before the changes: every project known at its
        # serial, the changed ones one serial back with only release 1.0.
        store = MemoryStore()
        store.serials = dict(root.projects)
        store.last_serial = (root.serial or 0) - changed
        changed_names = [f"gen-{i:07d}" for i in range(changed)]
        for name in changed_names:
            store.serials[name] -= 1
            store.known[name] = KnownProject(
                name,
                store.serials[name],
                {"1.0": KnownRelease("1.0", frozenset({f"{name.replace('-', '_')}-1.0.tar.gz"}))},
            )
        del root
        rss_seeded = max_rss_mib()

        follower = Follower(client, store, workers=args.workers, fetch_info=not args.no_info)
        t = time.perf_counter()
        start = follower.run_once(max_projects=0)
        start_time = time.perf_counter() - t
        assert start.started and start.projects_changed == changed, start
        print(f"diff against store:      {start.diff_seconds:8.2f} s  (aim < 10 s)")
        print(f"pass start (fetch+diff+todo): {start_time:5.2f} s")

        t = time.perf_counter()
        run = follower.run_once()
        elapsed = time.perf_counter() - t
        assert run.complete and run.projects_done == changed, run
        assert run.events["NewRelease"] == changed, run.events
        rate = changed / elapsed
        requests = 1 if args.no_info else 2
        print(
            f"changed projects:        {rate:8.0f} /s  ({changed:,} in {elapsed:.1f} s, "
            f"{requests} requests each; aim 500/s)"
        )
        follower.close()

        sample = changed_names[: min(changed, 20_000)]
        raw1 = raw_rate(index_url, sample, 1)
        rawn = raw_rate(index_url, sample, args.workers)
        print(f"raw loopback HTTP:       {raw1:8.0f} req/s (1 connection)")
        print(f"raw loopback HTTP:       {rawn:8.0f} req/s ({args.workers} connections)")
        print(
            f"ratio: follower requests/s vs raw ({args.workers} connections): "
            f"{rate * requests / rawn:.2f}"
        )
        print(
            f"peak memory (max RSS):   {max_rss_mib():8.0f} MiB  (after seeding: {rss_seeded:.0f})"
        )
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
