#!/usr/bin/env python3
"""Benchmark the site writer, and resolution from the index it writes.

1. Full rewrite: write every project's four pages (simple HTML + JSON, project page, project
   JSON API, and the .gz twins of those over the threshold) for synthetic projects (scale 1.0 =
   100,000 projects, 10 versions, 3 files each): the render-only rate of each page kind, what
   gzip costs at levels 1, 6 and 9, and the rewrite rate in one process and in a pool
   (``SiteWriter.write_all``), each beside the raw rate of writing files of the same names
   and sizes on the same disk (plain open/write/close, in one process and in as many as the
   pool: the physical limit) and the ratio.
2. Latency from a finished build to its pages being replaced (render + atomic write of one
   project): median and 99th percentile.
3. ``uv pip compile`` of a package with 20 dependencies from this index served by a private
   nginx, with and without ``.metadata`` files, beside the same HTTP requests made one by one
   with http.client (the loopback floor).

Usage: python bench/bench_site.py --scale 0.01 [--dir DIR] [--fsync] [--workers N] [--no-uv]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from piwheels.web import render
from piwheels.web.model import AbiStatus, FileData, ProjectData, VersionData
from piwheels.web.nginx import PrivateNginx
from piwheels.web.render import SiteConfig
from piwheels.web.writer import SiteWriter

ABIS = ("cp39", "cp311", "cp313")
CONFIG = SiteConfig(base_url="https://piwheels.example", preinstalled=frozenset({"libc6"}))


def synthetic_project(i: int, versions: int = 10, generation: int = 0) -> ProjectData:
    """A project like a busy one on the farm: *versions* versions, one wheel per ABI each.

    Another *generation* changes every hash and count, so all four pages change.
    """
    name = f"project-{i}"
    dist = name.replace("-", "_")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    vs = []
    for v in range(versions, 0, -1):
        version = f"{v}.0.{i % 7}"
        files = tuple(
            FileData(
                filename=f"{dist}-{version}-{abi}-{abi}-linux_armv7l.whl",
                size=100_000 + i + v,
                sha256=hashlib.sha256(f"{generation}{name}{version}{abi}".encode()).hexdigest(),
                upload_time=when + timedelta(days=v),
                abi_tag=abi,
                platform_tag="linux_armv7l",
                requires_python=">=3.9",
                metadata_sha256=hashlib.sha256(f"m{name}{version}{abi}".encode()).hexdigest(),
                builder_abis=(abi,),
                import_ok=True,
                apt_dependencies=("libc6", "libffi8"),
                pip_dependencies=("numpy>=1.20", 'typing-extensions; python_version < "3.11"'),
            )
            for abi in ABIS
        )
        builds = {abi: AbiStatus("built", i * 100 + v * 3 + k) for k, abi in enumerate(ABIS)}
        vs.append(VersionData(version, when + timedelta(days=v), builds=builds, files=files))
    return ProjectData(
        name=name,
        display_name=name,
        summary=f"Synthetic project number {i} for the site benchmark",
        versions=tuple(vs),
        downloads_30d=i % 1000 + generation,
        downloads_all=i * 10 + generation,
    )


PAGE_KINDS = (
    ("simple html ", "simple/{}/index.html", lambda p: render.render_simple_project_html(p)),
    ("simple json ", "simple/{}/index.json", lambda p: render.render_simple_project_json(p)),
    ("project html", "project/{}/index.html", lambda p: render.render_project_html(p, CONFIG)),
    ("project json", "project/{}/json/index.json", lambda p: render.render_project_json(p, CONFIG)),
)


def raw_write(root: str, files: list[tuple[str, int]], fsync: bool, atomic: bool = False) -> int:
    """The physical floor: plain open/write/close of files with these names and sizes.

    With *atomic*, each goes to a new temporary file renamed over the old one, as the site
    writer must (creating a file is the dear part on ext4).
    """
    buf = b"x" * max((n for _, n in files), default=0)
    made: set[str] = set()
    for rel, n in files:
        path = f"{root}/{rel}"
        head = os.path.dirname(path)
        if head not in made:
            os.makedirs(head, exist_ok=True)
            made.add(head)
        target, path = path, (f"{path}.tmp" if atomic else path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, buf[:n])
        if fsync:
            os.fsync(fd)
        os.close(fd)
        if atomic:
            os.replace(path, target)
    return len(files)


def raw_write_pool(root: str, files: list[tuple[str, int]], fsync: bool, workers: int) -> float:
    """raw_write split over *workers* processes (one project's files stay together)."""
    per = -(-len(files) // workers // 8) * 8  # a project's 8 files never straddle two parts
    parts = [files[i : i + per] for i in range(0, len(files), per)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_noop, range(workers)))  # start the workers outside the timing
        t0 = time.perf_counter()
        list(pool.map(raw_write, [root] * len(parts), parts, [fsync] * len(parts)))
        return time.perf_counter() - t0


def _noop(_: int) -> None:
    return None


def _spin(n: int) -> int:
    return sum(range(n))


def cpu_speedup(workers: int) -> float:
    """How much faster *workers* processes run pure CPU work than one: what the pool can gain
    on this machine right now (other load takes cores away)."""
    n = 5_000_000
    one = timed(lambda: [_spin(n) for _ in range(workers)])
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_noop, range(workers)))
        many = timed(lambda: list(pool.map(_spin, [n] * workers)))
    return one / many


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_rewrite(base: Path, count: int, fsync: bool, workers: int) -> list[ProjectData]:
    print(f"== full rewrite: {count} projects x 10 versions x 3 files, 4 pages each")
    t0 = time.perf_counter()
    projects = [synthetic_project(i) for i in range(count)]
    print(f"  (building the synthetic projects: {count / (time.perf_counter() - t0):.0f}/s)")

    # Render only, per page kind.
    sizes: dict[str, list[int]] = {}
    pages: dict[str, list[bytes]] = {}
    total_render = 0.0
    for label, _, fn in PAGE_KINDS:
        t0 = time.perf_counter()
        out = [fn(p) for p in projects]
        dt = time.perf_counter() - t0
        total_render += dt
        pages[label] = out
        sizes[label] = [len(x) for x in out]
        print(
            f"  render {label}: {count / dt:9.0f} pages/s, "
            f"{sum(sizes[label]) / count / 1024:5.1f} KiB each"
        )
    print(f"  render all four : {count / total_render:9.0f} projects/s")

    # gzip: what the .gz twins cost at each level.
    threshold = SiteWriter(base / "probe", CONFIG).gzip_threshold
    big = [x for out in pages.values() for x in out if len(x) >= threshold]
    raw_bytes = sum(len(x) for x in big)
    gz_sizes = {}
    for level in (1, 6, 9):
        t0 = time.perf_counter()
        gz_sizes[level] = sum(len(zlib.compress(x, level)) for x in big)
        dt = time.perf_counter() - t0
        print(
            f"  gzip level {level}: {count / dt:9.0f} projects/s "
            f"({len(big) / count:.0f} twins each), {gz_sizes[level] / raw_bytes:.1%} of the bytes"
        )
    del pages
    shutil.rmtree(base / "probe", ignore_errors=True)

    # The files a rewrite writes: 4 pages and a twin for each one over the threshold.
    site = SiteWriter(base / "site", CONFIG, fsync=fsync)
    gz_ratio = gz_sizes[site.gzip_level] / raw_bytes
    files: list[tuple[str, int]] = []
    for i, p in enumerate(projects):
        for label, pattern, _ in PAGE_KINDS:
            n = sizes[label][i]
            files.append((pattern.format(p.name), n))
            if n >= site.gzip_threshold:
                files.append((pattern.format(p.name) + ".gz", int(n * gz_ratio)))
    nbytes = sum(n for _, n in files)
    mb = nbytes / 1e6
    print(
        f"  bytes per rewrite: {mb:.1f} MB in {len(files)} files "
        f"({nbytes / count / 1024:.1f} KiB per project, twins at gzip level {site.gzip_level})"
    )

    # Generation 1 changes every page, so each rewrite below replaces all of them.
    changed = [synthetic_project(i, generation=1) for i in range(count)]
    first = timed(lambda: site.write_all(projects))
    one = timed(lambda: site.write_all(changed))
    start = timed(lambda: site.write_all(changed[:1], workers=workers))
    pool = timed(lambda: site.write_all(projects, workers=workers))
    same1 = timed(lambda: site.write_all(projects))
    samen = timed(lambda: site.write_all(projects, workers=workers))
    raw_root = str(base / "raw")
    raw_write(raw_root, files, fsync)  # the first pass makes the directories
    raw1 = timed(lambda: raw_write(raw_root, files, fsync))
    rawn = raw_write_pool(raw_root, files, fsync, workers)
    atomic1 = timed(lambda: raw_write(raw_root, files, fsync, atomic=True))
    shutil.rmtree(raw_root, ignore_errors=True)

    def line(label: str, seconds: float) -> str:
        return f"  {label}: {count / seconds:9.0f} projects/s ({mb / seconds:6.1f} MB/s)"

    print(line("first write, 1 process             ", first))
    print(line("rewrite all changed, 1 process     ", one))
    print(line(f"rewrite all changed, pool of {workers}     ", pool))
    print(line("rewrite unchanged, 1 process       ", same1))
    print(line(f"rewrite unchanged, pool of {workers}       ", samen))
    print(line("raw write, same files, 1 process   ", raw1))
    print(line(f"raw write, same files, {workers} processes ", rawn))
    print(line("raw temp+rename, same files, 1 proc", atomic1))
    print(f"  (starting the pool of {workers}: {start * 1000:.0f} ms, included above)")
    print(f"  ratio rewrite / raw write, 1 process : {raw1 / one:.2f}")
    print(f"  ratio rewrite / raw write, {workers} processes: {rawn / pool:.2f}")
    print(f"  ratio rewrite / raw temp+rename, 1 process: {atomic1 / one:.2f}")
    print(f"  aim: 2,000 projects/s; pool reaches {count / pool / 2000:.0%} of it")
    print(
        f"  (machine check: pure CPU work in {workers} processes runs "
        f"{cpu_speedup(workers):.2f}x as fast as in one)"
    )
    return projects


def bench_latency(base: Path, projects: list[ProjectData], fsync: bool) -> None:
    print("== latency: finished build -> pages replaced (render + write of one project)")
    site = SiteWriter(base / "site", CONFIG, fsync=fsync)
    samples = []
    n = min(len(projects), 500)
    # A finished build changes the pages: write a new generation of each project.
    for p in [synthetic_project(i, generation=2) for i in range(n)]:
        t0 = time.perf_counter()
        site.write_project(p)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"  {n} samples: median {statistics.median(samples):.2f} ms, p99 {p99:.2f} ms")
    shutil.rmtree(base / "site", ignore_errors=True)


def bench_uv(base: Path, repeats: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.web.conftest import make_wheel, publish  # reuse the test wheel builder

    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        print("== uv pip compile: skipped, no uv next to", sys.executable)
        return
    print("== uv pip compile: 'top' with 20 dependencies")
    for with_meta in (True, False):
        top = base / ("meta" if with_meta else "nometa")
        top.mkdir(mode=0o755)
        os.chmod(top, 0o755)
        site = SiteWriter(top / "www", CONFIG)
        deps = [f"dep{i:02d}" for i in range(20)]
        names = []
        for name, requires in [("top", tuple(f"{d}>=1.0" for d in deps))] + [(d, ()) for d in deps]:
            files = [
                publish(site, make_wheel(name, f"{v}.0", requires), with_metadata=with_meta)
                for v in (1, 2)
            ]
            site.write_project(
                ProjectData(
                    name,
                    name,
                    versions=tuple(
                        VersionData(f.filename.split("-")[1], files=(f,)) for f in reversed(files)
                    ),
                )
            )
            names.append(name)
        site.write_root(sorted(names))
        (top / "req.in").write_text("top\n")
        server = PrivateNginx(top / "www", top / "nginx")
        server.start()
        try:
            times = []
            for r in range(repeats):
                env = dict(
                    os.environ,
                    UV_CACHE_DIR=str(top / f"cache{r}"),
                    UV_NO_CONFIG="1",
                    UV_PYTHON_DOWNLOADS="never",
                )
                start = len(server.records())
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        str(uv),
                        "pip",
                        "compile",
                        "--python",
                        sys.executable,
                        "--no-header",
                        "--index-url",
                        f"{server.url}/simple/",
                        str(top / "req.in"),
                    ],
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                times.append(time.perf_counter() - t0)
            recs = server.records()[start:]
            # The floor: the same requests, one at a time, over one keep-alive connection.
            conn = http.client.HTTPConnection(server.host, server.port)
            t0 = time.perf_counter()
            for rec in recs:
                conn.request(rec["method"], rec["uri"], headers={"Accept": rec["accept"]})
                conn.getresponse().read()
            floor = time.perf_counter() - t0
            conn.close()
        finally:
            server.stop()
        label = "with .metadata   " if with_meta else "without .metadata"
        nbytes = sum(r["bytes"] for r in recs)
        print(
            f"  {label}: median {statistics.median(times) * 1000:7.1f} ms over {repeats} runs, "
            f"{len(recs)} requests, {nbytes / 1024:.0f} KiB; same requests by http.client "
            f"{floor * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 100,000 projects")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    parser.add_argument("--fsync", action="store_true", help="fsync every file")
    parser.add_argument("--repeats", type=int, default=3, help="uv pip compile runs per case")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="processes for the pool figures"
    )
    parser.add_argument("--no-uv", action="store_true", help="skip the uv pip compile part")
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.workers < 1:
        parser.error("--workers must be positive")
    base = Path(tempfile.mkdtemp(prefix="piw-bench-site-", dir=args.dir))
    os.chmod(base, 0o755)
    try:
        projects = bench_rewrite(base, max(1, int(100_000 * args.scale)), args.fsync, args.workers)
        bench_latency(base, projects, args.fsync)
        del projects
        if not args.no_uv:
            bench_uv(base, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
