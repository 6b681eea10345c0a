#!/usr/bin/env python3
"""Benchmark the site writer, and resolution from the index it writes.

1. Full rewrite: write every project's four pages (simple HTML + JSON, project page, project
   JSON API) for synthetic projects (scale 1.0 = 100,000 projects, 10 versions, 3 files each),
   beside the raw rate of writing files of the same names and sizes on the same disk (plain
   open/write/close: the physical limit) and the render-only rate.
2. Latency from a finished build to its pages being replaced (render + atomic write of one
   project): median and 99th percentile.
3. ``uv pip compile`` of a package with 20 dependencies from this index served by a private
   nginx, with and without ``.metadata`` files, beside the same HTTP requests made one by one
   with http.client (the loopback floor).

Usage: python bench/bench_site.py --scale 0.01 [--dir DIR] [--fsync]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from piwheels.web import render
from piwheels.web.model import AbiStatus, FileData, ProjectData, VersionData
from piwheels.web.nginx import PrivateNginx
from piwheels.web.render import SiteConfig
from piwheels.web.writer import SiteWriter

ABIS = ("cp39", "cp311", "cp313")
CONFIG = SiteConfig(base_url="https://piwheels.example", preinstalled=frozenset({"libc6"}))


def synthetic_project(i: int, versions: int = 10) -> ProjectData:
    """A project like a busy one on the farm: *versions* versions, one wheel per ABI each."""
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
                sha256=hashlib.sha256(f"{name}{version}{abi}".encode()).hexdigest(),
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
        downloads_30d=i % 1000,
        downloads_all=i * 10,
    )


def bench_rewrite(base: Path, count: int, fsync: bool) -> None:
    print(f"== full rewrite: {count} projects x 10 versions x 3 files, 4 pages each")
    projects = [synthetic_project(i) for i in range(count)]
    t0 = time.perf_counter()
    sizes = []
    for p in projects:
        pages = (
            render.render_simple_project_html(p),
            render.render_simple_project_json(p),
            render.render_project_html(p, CONFIG),
            render.render_project_json(p, CONFIG),
        )
        sizes.append(tuple(len(x) for x in pages))
    render_s = time.perf_counter() - t0
    total = sum(sum(s) for s in sizes)
    site = SiteWriter(base / "site", CONFIG, fsync=fsync)
    t0 = time.perf_counter()
    for p in projects:
        site.write_project(p)
    ours = time.perf_counter() - t0
    gz = sum(1 for _ in (base / "site").rglob("*.gz"))

    raw = base / "raw"
    buf = b"x" * max(max(s) for s in sizes)
    t0 = time.perf_counter()
    for p, s in zip(projects, sizes, strict=True):
        for rel, n in zip(
            (
                f"simple/{p.name}/index.html",
                f"simple/{p.name}/index.json",
                f"project/{p.name}/index.html",
                f"project/{p.name}/json/index.json",
            ),
            s,
            strict=True,
        ):
            path = raw / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(buf[:n])
                if fsync:
                    os.fsync(f.fileno())
    raw_s = time.perf_counter() - t0
    mb = total / 1e6
    print(
        f"  page bytes: {mb:.1f} MB ({total / count / 1024:.1f} KiB per project), "
        f"{gz} .gz twins written"
    )
    print(f"  render only      : {count / render_s:9.0f} projects/s")
    print(
        f"  render+atomic write (SiteWriter): {count / ours:9.0f} projects/s "
        f"({mb / ours:.1f} MB/s of pages)"
    )
    print(
        f"  raw write, same names and sizes : {count / raw_s:9.0f} projects/s "
        f"({mb / raw_s:.1f} MB/s)"
    )
    print(f"  ratio SiteWriter / raw: {raw_s / ours:.2f}")
    shutil.rmtree(raw, ignore_errors=True)

    print("== latency: finished build -> pages replaced (render + write of one project)")
    samples = []
    n = min(count, 500)
    for p in projects[:n]:
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
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    base = Path(tempfile.mkdtemp(prefix="piw-bench-site-", dir=args.dir))
    os.chmod(base, 0o755)
    try:
        bench_rewrite(base, max(1, int(100_000 * args.scale)), args.fsync)
        bench_uv(base, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
