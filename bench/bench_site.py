#!/usr/bin/env python3
"""Benchmark the site writer, and resolution from the index it writes.

1. Full rewrite: write every project's four pages (simple HTML + JSON, project page, project
   JSON API, and the .gz twins of the simple pages over the threshold) for synthetic projects
   (scale 1.0 = 100,000 projects, 10 versions, 3 files each): the render-only rate of each page
   kind, what gzip costs at levels 1, 6 and 9, and the rewrite rate in one process and in a pool
   (``SiteWriter.write_all``), with and without the read-back of skip-unchanged, with the
   project pages twinned too and without twins, each beside the raw rate of replacing the same
   files, byte for byte, on the same disk the way an atomic writer must (a new temporary file
   renamed over the old one: the physical limit; for a first write, a nameless file linked
   under its new name, as the writer makes new pages), in one process and in as many as the
   pool, and the ratio. Wall time depends on what else the machine runs; CPU time per
   project (user + system, children included) is printed beside it.
2. Latency from a finished build to its pages being replaced (render + atomic write of one
   project): median and 99th percentile.
3. The production full rewrite, from the database: the same shape of synthetic projects
   inserted (COPY) into a fresh database on a private PostgreSQL cluster (fsync off, as
   ``bench/bench_db.py`` does; or ``--dsn``), then ``piw-rebuild all``'s path timed: the bulk
   loader (``db.projects.ProjectLoader``, a chunk per fixed number of queries) feeding
   ``SiteWriter.write_all`` in one process and in the pool (each worker with its own
   connection), beside the bulk read alone, the per-project loader, and the render-only and
   raw floor figures of part 1, with ratios.  The first site is removed (untimed) before the
   pool writes the second, so a full-size run needs room for one site (at scale 1 about
   900,000 inodes and 9 GB, plus the database).
   Then the latency from a finished build to its pages being replaced through the page
   writer task with its default settings (coalescing window, site process): median and 99th
   percentile for builds one at a time, a stream of builds, and bursts for one project.
4. ``uv pip compile`` of a package with 20 dependencies from this index served by a private
   nginx, with and without ``.metadata`` files, beside the same HTTP requests made one by one
   with http.client (the loopback floor).

Usage: python bench/bench_site.py --scale 0.01 [--dir DIR] [--fsync] [--workers N]
       [--parts rewrite,latency,db,task-latency,uv] [--sample N] [--no-uv] [--no-db]
       [--latency-only] [--samples N] [--dsn SUPERUSER-URL]

``--parts`` picks the parts (default all).  ``--parts db`` runs part 3's full rewrite from the
database alone, over every project of the scale; part 1's figures it is compared with (render
only, rewrite from memory, raw floors: per-project constants) are then measured on a sample of
at most ``--sample`` projects (10,000), and said so.  ``--no-uv``, ``--no-db`` and
``--latency-only`` (= ``--parts task-latency``) still work.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import io
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url

from piwheels.db import initdb
from piwheels.db import projects as db_projects
from piwheels.db import versions as db_versions
from piwheels.master.page_writer import CHUNK_SIZE
from piwheels.web import render
from piwheels.web import writer as site_writer
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


Pages = list[tuple[str, bytes]]  # (path relative to the site, content)


#: Page kinds with a precompressed twin (SiteWriter's default: the simple pages only).
TWINNED = ("simple html ", "simple json ")


def project_pages(p: ProjectData, threshold: int, level: int) -> Pages:
    """The files the site writer writes for *p*: its four pages and the twins of its simple
    pages (those over the threshold)."""
    out: Pages = []
    for label, pattern, fn in PAGE_KINDS:
        page = fn(p)
        rel = pattern.format(p.name)
        if label in TWINNED and len(page) >= threshold:
            out.append((rel + ".gz", zlib.compress(page, level, 31)))
        out.append((rel, page))
    return out


def raw_write(
    root: str, projects: list[Pages], fsync: bool, how: str = "rename"
) -> tuple[float, float]:
    """The physical floor of a rewrite: each file written to a new temporary file and renamed
    over the old one, exactly the system calls an atomic writer cannot avoid, with the very
    bytes the writer writes (on this machine's disk the content changes the cost: uniform
    filler bytes are written several times faster than real pages) and no rendering,
    compression or checks.  Directories are made on first use.

    With *how* "exchange", the floor of the writer's inode reuse instead: the bytes go into one
    spare file (leased, emptied) that ``renameat2(RENAME_EXCHANGE)`` swaps with the page, so
    the page's old inode is the next spare and no inode is created (a new name takes the
    spare by a plain rename).  With *how* "link", the floor of a first write as the writer
    makes new pages: a nameless ``O_TMPFILE`` inode in the page's directory, filled and
    linked under the page's name (``linkat``, which refuses to replace a file).

    Returns (wall seconds, CPU seconds).
    """
    cpu0 = _cpu()
    t0 = time.perf_counter()
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    spare = f"{root}/.spare-{os.getpid()}"
    os.makedirs(root, exist_ok=True)
    # linkat(proc_fd, "N", ..., AT_SYMLINK_FOLLOW) links the inode /proc/self/fd/N points to.
    proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for files in projects:
        for rel, data in files:
            path = f"{root}/{rel}"
            head = os.path.dirname(path)
            if head not in made:
                os.makedirs(head, exist_ok=True)
                made.add(head)
            if how == "link":
                fd = os.open(head, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
                os.write(fd, data)
                if fsync:
                    os.fsync(fd)
                os.link(str(fd), path, src_dir_fd=proc_fd, follow_symlinks=True)
                os.close(fd)
                continue
            if how == "exchange":
                fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
                os.ftruncate(fd, 0)
                os.write(fd, data)
                if fsync:
                    os.fsync(fd)
                os.close(fd)
                if not site_writer._exchange(spare, path):
                    os.replace(spare, path)
                continue
            tmp = f"{path}.tmp"
            fd = os.open(tmp, flags, 0o644)
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.replace(tmp, path)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    os.close(proc_fd)
    if how == "exchange" and os.path.exists(spare):
        os.unlink(spare)
    return wall, cpu


def raw_rewrite(
    root: str, first: int, count: int, generation: int, settings: tuple[int, int, bool, str]
) -> tuple[float, float]:
    """raw_write of projects first..first+count of *generation*, rendered (untimed) in
    chunks so memory stays small; returns the summed (wall, CPU) seconds of the writes."""
    threshold, level, fsync, how = settings
    wall = cpu = 0.0
    for start in range(first, first + count, 500):
        stop = min(first + count, start + 500)
        pages = [
            project_pages(synthetic_project(i, generation=generation), threshold, level)
            for i in range(start, stop)
        ]
        w, c = raw_write(root, pages, fsync, how)
        wall += w
        cpu += c
    return wall, cpu


def raw_rewrite_pool(
    root: str, count: int, generation: int, settings: tuple[int, int, bool, str], workers: int
) -> tuple[float, float]:
    """raw_rewrite split over *workers* processes by project: (wall, CPU) seconds, the wall
    time being the longest worker's time spent writing (they write at the same time)."""
    per = -(-count // workers)
    starts = list(range(0, count, per))
    sizes = [min(per, count - s) for s in starts]
    n = len(starts)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(
            pool.map(raw_rewrite, [root] * n, starts, sizes, [generation] * n, [settings] * n)
        )
    return max(w for w, _ in done), sum(c for _, c in done)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


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


def measured(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the children it reaped meanwhile)."""
    cpu0, child0 = _cpu(), _children_cpu()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return wall, _cpu() - cpu0 + _children_cpu() - child0


def bench_rewrite(
    base: Path, count: int, fsync: bool, workers: int, sample: bool = False
) -> dict[str, float]:
    """Part 1; returns the rates and per-project CPU figures part 3 prints beside its own.

    With *sample*, only what part 3 needs (render only, the rewrite from memory in one
    process and in the pool, the raw floors), measured on *count* projects taken as a sample
    (per-project constants: the database part alone at full size need not wait for all of
    part 1's variants over every project).
    """
    if sample:
        print(
            f"== part 1's per-project constants for part 3, measured on a sample of {count} "
            "projects (render only, rewrite from memory, raw floors)"
        )
    else:
        print(f"== full rewrite: {count} projects x 10 versions x 3 files, 4 pages each")
    t0 = time.perf_counter()
    projects = [synthetic_project(i) for i in range(count)]
    print(f"  (building the synthetic projects: {count / (time.perf_counter() - t0):.0f}/s)")

    # Render only, per page kind; gzip at each level.  Pages are not kept (a full-size run
    # would need gigabytes): only their sizes and the sizes of their twins.
    site = SiteWriter(base / "site", CONFIG, fsync=fsync)
    threshold = site.gzip_threshold
    render_time = dict.fromkeys([label for label, _, _ in PAGE_KINDS], 0.0)
    gzip_time = {1: 0.0, 6: 0.0, 9: 0.0}
    gzip_bytes = {1: 0, 6: 0, 9: 0}
    page_bytes = {label: 0 for label, _, _ in PAGE_KINDS}
    twin_bytes = 0
    nfiles = nbytes = 0
    for p in projects:
        for label, _pattern, fn in PAGE_KINDS:
            # CPU time: the render figures are subtracted from the writer's CPU time below.
            t0 = time.process_time()
            page = fn(p)
            render_time[label] += time.process_time() - t0
            page_bytes[label] += len(page)
            nfiles += 1
            nbytes += len(page)
            if label in TWINNED and len(page) >= threshold:
                twin_bytes += len(page)
                nfiles += 1
                for level in gzip_time:
                    t0 = time.perf_counter()
                    n = len(zlib.compress(page, level, 31))
                    gzip_time[level] += time.perf_counter() - t0
                    gzip_bytes[level] += n
                    if level == site.gzip_level:
                        nbytes += n
    for label, _, _ in PAGE_KINDS:
        print(
            f"  render {label}: {count / render_time[label]:9.0f} pages per CPU second, "
            f"{page_bytes[label] / count / 1024:5.1f} KiB each"
        )
    print(f"  render all four : {count / sum(render_time.values()):9.0f} projects/s")
    for level in gzip_time:
        print(
            f"  gzip level {level}: {count / gzip_time[level]:9.0f} projects/s, "
            f"{gzip_bytes[level] / max(1, twin_bytes):.1%} of the bytes"
        )
    mb = nbytes / 1e6
    print(
        f"  bytes per rewrite: {mb:.1f} MB in {nfiles} files ({nfiles / count:.1f} per project,"
        f" {nbytes / count / 1024:.1f} KiB; twins at gzip level {site.gzip_level})"
    )

    # Generation 1 changes every page, so each rewrite below replaces all of them.
    changed = [synthetic_project(i, generation=1) for i in range(count)]
    figures: list[tuple[str, float, float]] = []

    def run(label: str, fn: Callable[[], object]) -> tuple[float, float]:
        wall, cpu = measured(fn)
        figures.append((label, wall, cpu))
        return wall, cpu

    first = run("first write, 1 process", lambda: site.write_all(projects))
    one = run("rewrite all changed, 1 process", lambda: site.write_all(changed))
    pool = run(
        f"rewrite all changed, pool of {workers}",
        lambda: site.write_all(projects, workers=workers),
    )
    if not sample:
        blind = SiteWriter(base / "site", CONFIG, fsync=fsync, skip_unchanged=False)
        run("  same, no read-back (skip_unchanged off)", lambda: blind.write_all(changed))
        run("rewrite unchanged, 1 process", lambda: site.write_all(changed))
        run(
            f"rewrite unchanged, pool of {workers}",
            lambda: site.write_all(changed, workers=workers),
        )
    start = timed(lambda: site.write_all(changed[:1], workers=workers))

    raw_root = str(base / "raw")
    settings = (site.gzip_threshold, site.gzip_level, fsync, "rename")
    for label, generation in (("first (new names)", 0), ("same files, 1 process", 1)):
        wall, cpu = raw_rewrite(raw_root, 0, count, generation, settings)
        figures.append((f"raw temp+rename, {label}", wall, cpu))
    raw1 = figures[-1][1:]
    # The floor of a first write as the writer makes new pages (nameless inode, linked in).
    lsettings = (*settings[:3], "link")
    wall, cpu = raw_rewrite(raw_root + "-link1", 0, count, 0, lsettings)
    figures.append(("raw nameless+link, first (new names), 1 process", wall, cpu))
    rawl1 = figures[-1][1:]
    rawln_wall, rawln_cpu = raw_rewrite_pool(raw_root + "-linkn", count, 0, lsettings, workers)
    label = f"raw nameless+link, first (new names), {workers} procs"
    figures.append((label, rawln_wall, rawln_cpu))
    shutil.rmtree(raw_root + "-link1", ignore_errors=True)
    shutil.rmtree(raw_root + "-linkn", ignore_errors=True)
    rawn_wall, rawn_cpu = raw_rewrite_pool(raw_root, count, 0, settings, workers)
    figures.append((f"raw temp+rename, same files, {workers} procs", rawn_wall, rawn_cpu))
    # The floor of the writer's inode reuse (a spare written and exchanged with the page).
    xsettings = (*settings[:3], "exchange")
    wall, cpu = raw_rewrite(raw_root, 0, count, 1, xsettings)
    figures.append(("raw spare+exchange, same files, 1 process", wall, cpu))
    rawx1 = figures[-1][1:]
    rawxn_wall, rawxn_cpu = raw_rewrite_pool(raw_root, count, 0, xsettings, workers)
    figures.append((f"raw spare+exchange, same files, {workers} procs", rawxn_wall, rawxn_cpu))
    shutil.rmtree(raw_root, ignore_errors=True)
    if not sample:
        fresh = SiteWriter(base / "site", CONFIG, fsync=fsync, reuse_inodes=False)
        fresh.write_all(projects)  # gen 0 back (not timed), then every page changes again
        run("  same, no inode reuse (temp+rename)", lambda: fresh.write_all(changed))
        twins = SiteWriter(base / "site", CONFIG, fsync=fsync, project_twins=True)
        twins.write_all(projects)  # adds the project pages' twins (not timed)
        run("  same, project pages twinned too", lambda: twins.write_all(changed))
        nogz = SiteWriter(base / "site", CONFIG, fsync=fsync, gzip_threshold=1 << 40)
        nogz.write_all(projects)  # removes the twins (not timed)
        run("  same, no .gz twins at all", lambda: nogz.write_all(changed))

    width = max(len(label) for label, _, _ in figures)
    for label, wall, cpu in figures:
        print(
            f"  {label:{width}}: {count / wall:8.0f} projects/s ({mb / wall:6.1f} MB/s), "
            f"CPU {cpu / count * 1000:6.2f} ms per project"
        )
    print(f"  (starting the pool of {workers}: {start * 1000:.0f} ms, included above)")
    print(
        f"  ratio first write / raw nameless+link of the same {nfiles / count:.0f} files per "
        f"project, 1 process: {rawl1[0] / first[0]:.2f} (wall), {rawl1[1] / first[1]:.2f} (CPU)"
    )
    print(f"  ratio rewrite / raw temp+rename, 1 process : {raw1[0] / one[0]:.2f} (wall)")
    print(
        f"  ratio rewrite / raw temp+rename, {workers} processes: {rawn_wall / pool[0]:.2f} (wall)"
    )
    print(f"  ratio rewrite / raw temp+rename, CPU per project: {raw1[1] / one[1]:.2f}")
    print(f"  ratio rewrite / raw spare+exchange, 1 process : {rawx1[0] / one[0]:.2f} (wall)")
    print(
        f"  ratio rewrite / raw spare+exchange, {workers} processes: "
        f"{rawxn_wall / pool[0]:.2f} (wall)"
    )
    print(
        f"  raw floor: {raw1[1] / nfiles * 1e6:.0f} us of CPU per atomic file replaced; "
        f"{nfiles / count:.0f} files per project caps one core at "
        f"{count / raw1[1]:.0f} projects/s"
    )
    render_cpu = sum(render_time.values()) / count * 1000
    print(
        f"  CPU per project, 1 process: render {render_cpu:.2f} ms, everything else the "
        f"writer does (gzip, read-back, files) {one[1] / count * 1000 - render_cpu:.2f} ms, "
        f"of which the raw file replacement {raw1[1] / count * 1000:.2f} ms"
    )
    print(f"  aim: 2,000 projects/s; the pool reaches {count / pool[0] / 2000:.0%} of it")
    print(
        f"  (machine check: pure CPU work in {workers} processes runs "
        f"{cpu_speedup(workers):.2f}x as fast as in one; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    rates = {
        "render CPU ms per project": render_cpu,
        "writer CPU ms per project": one[1] / count * 1000 - render_cpu,
        "render only, 1 process": count / sum(render_time.values()),
        "rewrite from memory, 1 process": count / one[0],
        f"rewrite from memory, pool of {workers}": count / pool[0],
        "raw temp+rename, 1 process": count / raw1[0],
        f"raw temp+rename, {workers} procs": count / rawn_wall,
        "raw spare+exchange, 1 process": count / rawx1[0],
        f"raw spare+exchange, {workers} procs": count / rawxn_wall,
        "raw nameless+link, first, 1 process": count / rawl1[0],
        f"raw nameless+link, first, {workers} procs": count / rawln_wall,
    }
    return rates


# --- the production path: from the database -------------------------------------------------


def _copy(conn: Connection, table: str, cols: str, rows: list[str]) -> None:
    """Raw COPY of text rows (the fastest way to fill the database; not timed)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cur = raw.cursor()
    cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", io.BytesIO("".join(rows).encode()))
    cur.close()


def fill_database(engine: Engine | Connection, count: int, streams: int = 2) -> None:
    """*count* projects shaped like :func:`synthetic_project`: 10 versions, one wheel per
    target each (three targets), two apt and two pip dependencies per wheel, downloads.

    The batches of 2,000 projects are sent over *streams* connections at once (the server's
    work per row, above all the ``files`` table's two hash-format checks, is most of the
    cost, and each connection has its own backend), each stream in one transaction with the
    foreign-key triggers off (``session_replication_role = replica``: the rows meet every
    reference by construction, and skipping the per-row lookups halves the fill).  Check
    constraints and indexes stay, so the rows are exactly those of a checked insert.

    Given a connection instead (the tests of the project loader), everything goes through
    it in its own transaction, one batch after another, with every foreign key checked:
    that is what shows the rows do meet every reference.
    """
    if isinstance(engine, Connection):
        _add_abis(engine)
        for start in range(0, count, 2000):
            _fill_batch(engine, range(start, min(count, start + 2000)), {})
        _set_build_ids(engine, count)
        return
    with engine.begin() as conn:
        _add_abis(conn)
    # 70 distinct version strings: each one's sort key (and row tail) computed once.
    keys: dict[str, str] = {}
    starts = list(range(0, count, 2000))
    errors: list[BaseException] = []

    def stream(mine: list[int]) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL session_replication_role = replica"))
                for start in mine:
                    _fill_batch(conn, range(start, min(count, start + 2000)), keys)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=stream, args=(starts[k::streams],), name=f"fill-{k}")
        for k in range(streams)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    with engine.begin() as conn:
        _set_build_ids(conn, count)


def _add_abis(conn: Connection) -> None:
    for k, abi in enumerate(ABIS):
        conn.execute(
            text(
                "INSERT INTO abis (abi, abi_tag, py_major, py_minor, platform_tag) "
                "VALUES (:a, :t, 3, :m, 'linux_armv7l')"
            ),
            {"a": f"{abi}-linux_armv7l", "t": abi, "m": (9, 11, 13)[k]},
        )


def _set_build_ids(conn: Connection, count: int) -> None:
    """New builds get ids after the synthetic ones."""
    conn.execute(
        text("SELECT setval(pg_get_serial_sequence('builds', 'build_id'), :n)"),
        {"n": (count * 10 + 10) * 3 + 3},
    )


def _fill_batch(conn: Connection, ids: range, keys: dict[str, str]) -> None:
    """COPY the rows of projects *ids* into the six tables (see :func:`fill_database`)."""
    pkgs, vers, blds, files, deps, dls = [], [], [], [], [], []
    for i in ids:
        name = f"project-{i}"
        dist = name.replace("-", "_")
        pkgs.append(f"{name}\t{name}\tSynthetic project number {i}\n")
        dls.append(f"2026-01-01\t{name}\t{i * 10}\n")
        for v in range(10, 0, -1):
            version = f"{v}.0.{i % 7}"
            key = keys.get(version)
            if key is None:
                key = keys[version] = db_versions.sort_key(version).hex()
            vers.append(f"{name}\t{version}\t\\\\x{key}\tt\tf\t2026-01-{v + 1:02d}\n")
            size = 100_000 + i + v
            for k, abi in enumerate(ABIS):
                build_id = (i * 10 + v) * 3 + k + 1
                blds.append(
                    f"{build_id}\t{name}\t{version}\t{abi}-linux_armv7l\tsuccess\t00:01:00\n"
                )
                wheel = f"{dist}-{version}-{abi}-{abi}-linux_armv7l.whl"
                sha = hashlib.sha256(wheel.encode()).hexdigest()
                files.append(
                    f"{wheel}\t{build_id}\t{size}\t{sha}\t{sha}\t{dist}\t"
                    f"{version}\t{abi}\t{abi}\tlinux_armv7l\t0\t-1\t>=3.9\tpassed\n"
                )
                deps.append(
                    f"{wheel}\tapt\tlibc6\n{wheel}\tapt\tlibffi8\n"
                    f"{wheel}\tpip\tnumpy>=1.20\n{wheel}\tpip\ttyping-extensions\n"
                )
    _copy(conn, "packages", "name, display_name, summary", pkgs)
    _copy(conn, "versions", "package, version, sort_key, valid, prerelease, released_at", vers)
    _copy(conn, "builds", "build_id, package, version, abi, status, duration", blds)
    _copy(
        conn,
        "files",
        "filename, build_id, size, sha256, metadata_sha256, name_tag, version_tag, "
        "python_tag, abi_tag, platform_tag, py_min, py_max, requires_python, import_test",
        files,
    )
    _copy(conn, "dependencies", "filename, tool, requirement", deps)
    _copy(conn, "daily_package_stats", "day, package, downloads", dls)


def bench_database(
    base: Path,
    count: int,
    workers: int,
    rates: dict[str, float] | None,
    dsn: str | None,
    latency_samples: int = 300,
    task_latency: bool = True,
    sampled: int = 0,
) -> None:
    """Part 3: the full rewrite from the database (unless *rates* is None: part 1's figures,
    measured on a sample of *sampled* projects when not 0), then the latency through the page
    writer task if *task_latency*."""
    if rates is not None:
        print(f"== full rewrite from the database (piw-rebuild all's path): {count} projects")
    else:
        print(f"== a database of {count} projects for the page writer task")
    cluster = None
    if dsn is None:
        from piwheels.pgcluster import Cluster

        cluster = Cluster(base / "pg", fsync=False)
        cluster.start()
        dsn = cluster.url()
    url = make_url(dsn).set(database="piwbench_site").render_as_string(hide_password=False)
    try:
        initdb.upgrade(url, yes=True)
        engine = create_engine(url)
        t0 = time.perf_counter()
        fill_database(engine, count)
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        print(f"  (filling the database with COPY: {count / (time.perf_counter() - t0):.0f}/s)")
        if rates is None:  # the task latency alone
            engine.dispose()
            bench_task_latency(base, url, count, latency_samples)
            return
        names = [f"project-{i}" for i in range(count)]
        sample = names[: max(1, min(count, 200))]
        chunk = CHUNK_SIZE
        server = _server_cpu_reader(cluster)
        with engine.connect() as conn:
            one_by_one = timed(lambda: [db_projects.get_project_data(conn, n) for n in sample])
            pg0 = server(conn)
            bulk_read, bulk_cpu = measured(
                lambda: [
                    db_projects.get_projects_data(conn, names[i : i + chunk])
                    for i in range(0, count, chunk)
                ]
            )
            server_cpu = server(conn) - pg0
        figures = [
            ("read only, per-project loader", len(sample) / one_by_one),
            (f"read only, bulk loader ({chunk} a chunk)", count / bulk_read),
        ]
        loader = db_projects.ProjectLoader(url)
        site = SiteWriter(base / "dbsite", CONFIG)
        with engine.connect() as conn:
            pg0 = server(conn)
        first, first_cpu = measured(
            lambda: site.write_all(names, load_many=loader, chunk_size=chunk)
        )
        with engine.connect() as conn:
            first_pg = server(conn) - pg0
        figures.append(("first write, 1 process", count / first))
        # Not used again: removed (untimed) so that a full-size run needs room for one site.
        gone = timed(lambda: shutil.rmtree(base / "dbsite"))
        # The pool: started once (its start-up timed apart), then chunks streamed to it.
        site = SiteWriter(base / "dbsite2", CONFIG)
        start = timed(
            lambda: site.write_all(names[:1], workers=workers, load_many=loader, chunk_size=chunk)
        )
        in_pool = timed(
            lambda: site.write_all(names, workers=workers, load_many=loader, chunk_size=chunk)
        )
        figures.append((f"first write, pool of {workers} (start-up included)", count / in_pool))
        if in_pool > start:
            figures.append(("  same, start-up taken out", count / (in_pool - start)))
        again = timed(
            lambda: site.write_all(names, workers=workers, load_many=loader, chunk_size=chunk)
        )
        figures.append((f"rewrite unchanged, pool of {workers}", count / again))
        # Every project's download counts change (untimed), so its project page and JSON
        # API change: what a daily rewrite meets.  Their old inodes are reused.
        with engine.begin() as conn:
            conn.execute(text("UPDATE daily_package_stats SET downloads = downloads + 1"))
        with engine.connect() as conn:
            pg0 = server(conn)
        changed, changed_cpu = measured(
            lambda: site.write_all(names, workers=workers, load_many=loader, chunk_size=chunk)
        )
        with engine.connect() as conn:
            changed_pg = server(conn) - pg0
        figures.append((f"rewrite, downloads changed, pool of {workers}", count / changed))
        with engine.begin() as conn:
            conn.execute(text("UPDATE daily_package_stats SET downloads = downloads + 1"))
        site1 = SiteWriter(base / "dbsite2", CONFIG)
        changed1, changed1_cpu = measured(
            lambda: site1.write_all(names, load_many=loader, chunk_size=chunk)
        )
        figures.append(("  same, 1 process", count / changed1))
        width = max(len(label) for label in [*rates, *(f for f, _ in figures)])
        for label, rate in figures:
            print(f"  {label:{width}}: {rate:8.0f} projects/s")
        print(f"  (starting the pool of {workers} with a connection each: {start * 1000:.0f} ms)")
        print(f"  (removing the first site after its write, untimed: {gone:.0f} s)")
        render_ms = rates["render CPU ms per project"]
        writer_ms = rates["writer CPU ms per project"]
        print(
            f"  CPU ms per project, bulk read alone: loader {bulk_cpu / count * 1000:.2f} in "
            f"Python + {server_cpu / count * 1000:.2f} in PostgreSQL (all its processes)"
        )
        total_ms = (first_cpu + first_pg) / count * 1000
        where = f"part 1 on a sample of {sampled}" if sampled else "part 1"
        print(
            f"  CPU ms per project, first write from the database in 1 process: "
            f"{first_cpu / count * 1000:.2f} in Python + {first_pg / count * 1000:.2f} in "
            f"PostgreSQL = {total_ms:.2f} (of which render {render_ms:.2f} and writer "
            f"{writer_ms:.2f} measured in {where}; aim: 1 ms per project per core)"
        )
        print(
            f"  CPU ms per project, rewrite with downloads changed: 1 process "
            f"{changed1_cpu / count * 1000:.2f} in Python; pool of {workers} "
            f"{changed_cpu / count * 1000:.2f} in Python (workers included) + "
            f"{changed_pg / count * 1000:.2f} in PostgreSQL"
        )
        if sampled:
            print(f"  beside part 1 (no database; measured on a sample of {sampled} projects):")
        else:
            print("  beside part 1 (no database):")
        for label, rate in rates.items():
            if "CPU" not in label:
                print(f"  {label:{width}}: {rate:8.0f} projects/s")
        # Start-up apart: a full-size rewrite pays it once over minutes of work.
        pool_rate = count / (in_pool - start if in_pool > start else in_pool)
        raw_pool = rates[f"raw temp+rename, {workers} procs"]
        print(
            f"  ratio from database / from memory, pool: "
            f"{pool_rate / rates[f'rewrite from memory, pool of {workers}']:.2f}"
        )
        render_rate = rates["render only, 1 process"]
        print(f"  ratio from database / render only: {pool_rate / render_rate:.2f}")
        print(
            f"  ratio from database / raw temp+rename, {workers} procs: {pool_rate / raw_pool:.2f}"
        )
        raw_first = rates[f"raw nameless+link, first, {workers} procs"]
        print(
            f"  ratio first write from database, pool / raw nameless+link of the same new files, "
            f"{workers} procs (the floor of a first write): {pool_rate / raw_first:.2f}"
        )
        changed_rate = count / changed
        rawx_pool = rates[f"raw spare+exchange, {workers} procs"]
        print(
            f"  ratio downloads-changed rewrite from database / raw spare+exchange, {workers} "
            f"procs: {changed_rate / rawx_pool:.2f}; / raw temp+rename: "
            f"{changed_rate / raw_pool:.2f}"
        )
        print(
            f"  ratio bulk loader / per-project loader (read only): "
            f"{figures[1][1] / figures[0][1]:.1f}"
        )
        print(
            f"  aim: 2,000 projects/s; from the database the pool (start-up apart) reaches "
            f"{pool_rate / 2000:.0%} of it"
        )
        engine.dispose()
        if task_latency:
            bench_task_latency(base, url, count, latency_samples)
    finally:
        if cluster is not None:
            cluster.destroy()
        else:
            eng = create_engine(dsn, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text('DROP DATABASE IF EXISTS "piwbench_site" WITH (FORCE)'))
            eng.dispose()


def _add_build(conn: Connection, name: str, version: str) -> None:
    """What a finished build leaves in the database: a version built for one target, with
    its wheel (not timed; the benchmark starts its clock when the page request is sent)."""
    dist = name.replace("-", "_")
    key = db_versions.sort_key(version)
    conn.execute(
        text(
            "INSERT INTO versions (package, version, sort_key, valid, prerelease, released_at) "
            "VALUES (:p, :v, :k, true, false, now()) ON CONFLICT DO NOTHING"
        ),
        {"p": name, "v": version, "k": key},
    )
    abi = ABIS[0]
    build_id = conn.execute(
        text(
            "INSERT INTO builds (package, version, abi, status, duration) "
            "VALUES (:p, :v, :a, 'success', '00:01:00') RETURNING build_id"
        ),
        {"p": name, "v": version, "a": f"{abi}-linux_armv7l"},
    ).scalar_one()
    wheel = f"{dist}-{version}-{abi}-{abi}-linux_armv7l.whl"
    sha = hashlib.sha256(wheel.encode()).hexdigest()
    conn.execute(
        text(
            "INSERT INTO files (filename, build_id, size, sha256, metadata_sha256, name_tag, "
            "version_tag, python_tag, abi_tag, platform_tag, py_min, py_max, requires_python, "
            "import_test) VALUES (:f, :b, 1000, :s, :s, :n, :v, :a, :a, 'linux_armv7l', 0, -1, "
            "'>=3.9', 'passed')"
        ),
        {"f": wheel, "b": build_id, "s": sha, "n": dist, "v": version, "a": abi},
    )


def _server_cpu_reader(cluster: object) -> Callable[[Connection], float]:
    """A function giving the CPU seconds PostgreSQL has used so far: every process of the
    private cluster (backends, parallel workers, reaped children included); with ``--dsn``
    only the calling connection's backend, if it runs on this machine."""
    clk = os.sysconf("SC_CLK_TCK")

    def stat(pid: int | str) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    def cluster_cpu(_: Connection) -> float:
        postmaster = cluster.pid  # type: ignore[attr-defined]
        f = stat(postmaster)
        total = sum(int(x) for x in f[11:15])  # its own time and its reaped children's
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    f = stat(entry)
                except OSError:
                    continue
                if int(f[1]) == postmaster:
                    total += int(f[11]) + int(f[12])
        return total / clk

    def backend_cpu(conn: Connection) -> float:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        try:
            f = stat(pid)
        except OSError:
            return float("nan")  # a server elsewhere
        return (int(f[11]) + int(f[12])) / clk

    return cluster_cpu if cluster is not None else backend_cpu


def bench_task_latency(base: Path, url: str, count: int, samples: int) -> None:
    """Finished build -> its pages replaced, through the page writer task as the master runs
    it (default settings: ``[master] page_coalesce``, the site process, one batch at a time).

    Each sample commits a new built version of a project (untimed), sends the PROJECT
    request the build loop sends, and waits for the project's last page (its JSON API) to
    list that version.  Three patterns: one build at a time; a stream of builds of different
    projects (50 a second); and bursts of three builds of one project (its three targets
    finishing together), where the later requests merge into the window after the first write.
    """
    import random

    from piwheels import protocols
    from piwheels.master.env import MasterEnv
    from piwheels.master.page_writer import PageWriter
    from piwheels.settings import Settings
    from piwheels.transport import PUSH, Context

    print("== latency through the page writer task: finished build -> pages replaced")
    engine = create_engine(url)
    output = base / "tasksite"
    settings = Settings().replace("master", output_path=output)
    window = settings.master.page_coalesce.total_seconds() * 1000
    env = MasterEnv(
        settings=settings,
        addresses={"pages": "inproc://bench-pages"},
        output_path=output,
        engine=engine,
    )
    context = Context()
    writer = PageWriter(context, env)
    thread = threading.Thread(target=writer.run, name="page_writer", daemon=True)
    thread.start()
    push = context.socket(PUSH, reversed(protocols.pages))
    push.connect("inproc://bench-pages")
    rng = random.Random(5)
    serial = iter(range(1, 1 << 30))
    cpu0 = _cpu()

    def page(name: str) -> Path:
        return output / "project" / name / "json" / "index.json"

    def shows(name: str, version: str) -> bool:
        try:
            return f'"version":"{version}"' in page(name).read_text()
        except FileNotFoundError:
            return False

    def run(pattern: list[list[str]], gap: float) -> list[float]:
        """Send each group's builds back to back, *gap* seconds between groups; return each
        build's latency in ms (waiting for all of them at the end)."""
        outstanding: list[tuple[str, str, float]] = []
        done: list[float] = []

        def check() -> None:
            now = time.perf_counter()
            for item in list(outstanding):
                if shows(item[0], item[1]):
                    outstanding.remove(item)
                    done.append((now - item[2]) * 1000)

        for group in pattern:
            next_at = time.perf_counter() + gap
            for name in group:
                version = f"99.{next(serial)}"
                with engine.begin() as conn:
                    _add_build(conn, name, version)
                outstanding.append((name, version, time.perf_counter()))
                push.send_msg("PROJECT", {"package": name})
            while time.perf_counter() < next_at or (gap == 0 and outstanding):
                check()
                time.sleep(0.0005)
        deadline = time.perf_counter() + 60
        while outstanding and time.perf_counter() < deadline:
            check()
            time.sleep(0.0005)
        if outstanding:
            print(f"  {len(outstanding)} builds never reached their pages within 60 s")
        return sorted(done)

    try:
        # Let the start-up work (static pages, root index, site process) finish first.
        warm = f"project-{count - 1}"
        run([[warm]], 0)
        names = [f"project-{i}" for i in range(count)]
        patterns = {
            "one build at a time": ([[rng.choice(names)] for _ in range(samples)], 0.0),
            "a stream of 50 builds/s": ([[rng.choice(names)] for _ in range(samples)], 0.02),
            "bursts of 3 builds of one project": (
                [[n, n, n] for n in (rng.choice(names) for _ in range(samples // 3))],
                0.1,
            ),
        }
        for label, (pattern, gap) in patterns.items():
            got = run(pattern, gap)
            if got:
                p99 = got[min(len(got) - 1, int(len(got) * 0.99))]
                print(
                    f"  {label:34}: median {statistics.median(got):6.1f} ms, p99 {p99:6.1f} ms, "
                    f"max {got[-1]:6.1f} ms over {len(got)} builds"
                )
        print(
            f"  (page_coalesce {window:.0f} ms; aim: median under 100 ms; the bench's own "
            f"CPU incl. its DB inserts {(_cpu() - cpu0):.1f} s)"
        )
    finally:
        push.close()
        writer.send_control("QUIT")
        thread.join(60)
        context.close()
        engine.dispose()


def bench_latency(base: Path, count: int, fsync: bool) -> None:
    print("== latency: finished build -> pages replaced (render + write of one project)")
    site = SiteWriter(base / "site", CONFIG, fsync=fsync)
    samples = []
    n = min(count, 500)
    if not (base / "site" / "project" / f"project-{n - 1}").exists():
        # Part 1 did not run (or ran on fewer projects): pages to replace first, untimed.
        site.write_all([synthetic_project(i) for i in range(n)])
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


PARTS = ("rewrite", "latency", "db", "task-latency", "uv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 100,000 projects")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    parser.add_argument("--fsync", action="store_true", help="fsync every file")
    parser.add_argument("--repeats", type=int, default=3, help="uv pip compile runs per case")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="processes for the pool figures"
    )
    parser.add_argument(
        "--parts",
        default="all",
        help="comma-separated parts to run, of " + ", ".join(PARTS) + " (default all): "
        "rewrite = part 1, latency = part 2, db = part 3's full rewrite from the database, "
        "task-latency = part 3's latency through the page writer task, uv = part 4",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=10_000,
        help="with db but not rewrite: projects on which part 1's per-project figures that "
        "part 3 compares with are measured (at most the run's count)",
    )
    parser.add_argument("--no-uv", action="store_true", help="skip the uv pip compile part")
    parser.add_argument(
        "--no-db", action="store_true", help="skip the database parts (db and task-latency)"
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the build -> pages latency through the page writer task (--parts task-latency)",
    )
    parser.add_argument(
        "--samples", type=int, default=300, help="builds per pattern in the latency part"
    )
    parser.add_argument(
        "--dsn", help="a PostgreSQL superuser URL to use instead of a private cluster"
    )
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.workers < 1:
        parser.error("--workers must be positive")
    if args.sample < 1:
        parser.error("--sample must be positive")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if "all" in parts:
        parts = set(PARTS)
    unknown = sorted(parts - set(PARTS))
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)!r}; choose from {', '.join(PARTS)}")
    if args.latency_only:
        parts = {"task-latency"}
    if args.no_uv:
        parts.discard("uv")
    if args.no_db:
        parts -= {"db", "task-latency"}
    if not parts:
        parser.error("no part left to run")
    base = Path(tempfile.mkdtemp(prefix="piw-bench-site-", dir=args.dir))
    os.chmod(base, 0o755)
    try:
        count = max(1, int(100_000 * args.scale))
        rates: dict[str, float] | None = None
        sampled = 0
        if "rewrite" in parts:
            rates = bench_rewrite(base, count, args.fsync, args.workers)
        elif "db" in parts:
            sampled = min(count, args.sample)
            rates = bench_rewrite(base, sampled, args.fsync, args.workers, sample=True)
        if "latency" in parts:
            bench_latency(base, count, args.fsync)  # removes part 1's site
        shutil.rmtree(base / "site", ignore_errors=True)
        if "db" in parts or "task-latency" in parts:
            bench_database(
                base,
                count,
                args.workers,
                rates if "db" in parts else None,
                args.dsn,
                args.samples,
                task_latency="task-latency" in parts,
                sampled=sampled,
            )
        if "uv" in parts:
            bench_uv(base, args.repeats)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
