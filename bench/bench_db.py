"""Database benchmark: a PyPI-sized database, the build queue, download ingest.

At ``--scale 1.0``: 600,000 packages, 6,000,000 versions, 4 targets,
3,000,000 builds and files, 50,000,000 downloads.  Run small (``--scale 0.01``)
on a shared machine.  Starts a private cluster (fsync off) unless ``--dsn``.

Prints each figure beside the machine's reference for the same work: raw COPY
for generation and ingest, a sequential scan of ``versions`` for the queue.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from piwheels.db import builds, downloads, initdb, queue, versions
from piwheels.db.downloads import ClientInfo, Hit
from piwheels.db.files import FileRecord
from piwheels.db.stats import rollup_day

TARGETS = [("cp39", 9), ("cp311", 11), ("cp312", 12), ("cp313", 13)]
T0 = datetime(2015, 1, 1, tzinfo=UTC)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy(conn: Connection, table: str, cols: str, rows: Iterator[str]) -> None:
    """Raw COPY of pre-formatted text rows, 200,000 per COPY, read as the data layer reads."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cur = raw.cursor()
    chunk: list[str] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == 200_000:
            buf = io.BytesIO("".join(chunk).encode("utf-8"))
            cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf, downloads._COPY_CHUNK)
            chunk = []
    buf = io.BytesIO("".join(chunk).encode("utf-8"))
    cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf, downloads._COPY_CHUNK)
    cur.close()


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def generate(conn: Connection, scale: float, rng: random.Random) -> dict[str, int]:
    n_pkg = max(10, int(600_000 * scale))
    n_ver = max(20, int(6_000_000 * scale))
    n_build = max(10, int(3_000_000 * scale))
    n_dl = max(100, int(50_000_000 * scale))
    for tag, minor in TARGETS:
        conn.execute(
            text(
                "INSERT INTO abis (abi, abi_tag, py_major, py_minor, platform_tag) "
                "VALUES (:a, :t, 3, :m, 'linux_armv7l')"
            ),
            {"a": f"{tag}-linux_armv7l", "t": tag, "m": minor},
        )
    copy(
        conn,
        "packages",
        "name, display_name",
        (f"pkg{i}\tPkg{i}\n" for i in range(n_pkg)),
    )
    per = n_ver // n_pkg
    vers: list[tuple[int, int]] = []

    def version_rows() -> Iterator[str]:
        for p in range(n_pkg):
            for v in range(per):
                vers.append((p, v))
                key = versions.sort_key(f"{v}.0").hex()
                when = T0 + timedelta(days=rng.randrange(3650))
                yield f"pkg{p}\t{v}.0\t\\\\x{key}\tt\tf\t{when.isoformat()}\n"

    copy(
        conn,
        "versions",
        "package, version, sort_key, valid, prerelease, released_at",
        version_rows(),
    )
    chosen = rng.sample(vers, min(n_build, len(vers)))

    def build_rows() -> Iterator[str]:
        for i, (p, v) in enumerate(chosen, 1):
            tag = TARGETS[i % 4][0]
            yield f"{i}\tpkg{p}\t{v}.0\t{tag}-linux_armv7l\tsuccess\t00:01:00\n"

    copy(conn, "builds", "build_id, package, version, abi, status, duration", build_rows())
    conn.execute(
        text("SELECT setval(pg_get_serial_sequence('builds', 'build_id'), :n)"),
        {"n": len(chosen) + 1},
    )

    def file_rows() -> Iterator[str]:
        for i, (p, v) in enumerate(chosen, 1):
            if i % 2:  # half pure wheels (serve every target), half compiled
                py, abi, plat, lo, hi = "py3", "none", "any", 300, 399
            else:
                tag = TARGETS[i % 4][0]
                py, abi, plat, lo, hi = tag, tag, "linux_armv7l", 0, -1
            name = f"pkg{p}-{v}.0-{py}-{abi}-{plat}.whl"
            yield (
                f"{name}\t{i}\t{rng.randrange(10**7)}\t{'0' * 64}\tpkg{p}\t{v}.0\t{py}\t"
                f"{abi}\t{plat}\t{lo}\t{hi}\n"
            )

    copy(
        conn,
        "files",
        "filename, build_id, size, sha256, name_tag, version_tag, python_tag, "
        "abi_tag, platform_tag, py_min, py_max",
        file_rows(),
    )

    def dl_rows() -> Iterator[str]:
        for _ in range(n_dl):
            p = int(rng.paretovariate(1.2)) % n_pkg
            when = T0 + timedelta(seconds=rng.randrange(3650 * 86400))
            yield (
                f"{when.isoformat()}\t{'ab' * 16}\tpip\t{rng.randrange(10**6)}\tpkg{p}\t"
                f"pkg{p}-0.0-py3-none-any.whl\tDebian\t12\tarmv7l\t3.11.2\n"
            )

    copy(
        conn,
        "downloads",
        "accessed_at, client, kind, bytes_sent, package, filename, "
        "distro_name, distro_version, arch, py_version",
        dl_rows(),
    )
    return {"packages": n_pkg, "versions": n_pkg * per, "builds": len(chosen), "downloads": n_dl}


def timed(label: str, fn, ref: float | None = None, ref_label: str = "") -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    line = f"{label:<48} {took:9.3f} s"
    if ref:
        line += f"   ({ref_label} {ref:.3f} s, ratio {took / ref:.1f}x)"
    print(line, flush=True)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.01, help="1.0 = PyPI-sized")
    parser.add_argument("--dsn", help="use this server (a superuser URL) instead of a private one")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    cluster = None
    tmp = None
    if args.dsn:
        admin = args.dsn
    else:
        from piwheels.pgcluster import Cluster

        tmp = tempfile.mkdtemp(prefix="piwbench-", dir="/tmp")
        cluster = Cluster(Path(tmp), fsync=False)
        cluster.start()
        admin = cluster.url()
    dbname = f"piwbench_{rng.randrange(10**8)}"
    url = make_url(admin).set(database=dbname).render_as_string(hide_password=False)
    try:
        initdb.upgrade(url, yes=True)
        engine = create_engine(url)
        print(f"scale {args.scale}; {load()}")
        with engine.begin() as conn:
            counts: dict[str, int] = {}
            t = timed("generate (COPY)", lambda: counts.update(generate(conn, args.scale, rng)))
        vac = create_engine(url, isolation_level="AUTOCOMMIT")
        with vac.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        print(f"  rows: {counts}")
        print(f"  database size {size / 2**20:.1f} MiB, {sum(counts.values()) / t:,.0f} rows/s")

        with engine.connect() as conn:
            scan = timed(
                "sequential scan of versions (reference)",
                lambda: conn.execute(
                    text("SELECT count(*), max(length(sort_key)) FROM versions")
                ).one(),
            )
        # The first full computation, both ways: rewritten through the indexes (what
        # the master's role may do; rolled back), then rebuilt with the indexes
        # dropped and recreated (the owner's way, kept).  Beside them: raw COPY of
        # the same rows into a table shaped like build_queue, with and without indexes.
        with engine.begin() as conn:
            through = timed(
                "build queue: full computation (through indexes)",
                lambda: queue.refresh(conn, rebuild=False),
                scan,
                "seq scan",
            )
            conn.rollback()
        with engine.begin() as conn:
            first = timed(
                "build queue: first full computation (rebuild)",
                lambda: queue.refresh(conn, rebuild=True),
                scan,
                "seq scan",
            )
            sizes = queue.queue_sizes(conn)
            print(f"  queue sizes {sizes}")
        n_queue = sum(sizes.values())
        dump = io.BytesIO()
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.cursor().copy_expert("COPY build_queue TO STDOUT", dump)
        refs: dict[str, float] = {}
        for label, indexed in (("with its indexes", True), ("no indexes", False)):
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE TABLE q_ref (LIKE build_queue INCLUDING "
                        + ("INDEXES)" if indexed else "DEFAULTS)")
                    )
                )
                raw = conn.connection.dbapi_connection
                assert raw is not None
                dump.seek(0)
                refs[label] = timed(
                    f"raw COPY of the {n_queue:,} queue rows, {label} (reference)",
                    lambda raw=raw: raw.cursor().copy_expert("COPY q_ref FROM STDIN", dump),
                )
                conn.rollback()
        print(
            f"  first full computation {first:.3f} s = {first / refs['with its indexes']:.2f}x "
            f"raw COPY of its rows with indexes, {first / refs['no indexes']:.2f}x without; "
            f"through the indexes {through:.3f} s ({through / first:.1f}x the rebuild); "
            f"linear extrapolation to scale 1.0: {first / args.scale:.0f} s (aim < 30 s)"
        )
        # What the master's ingest does: one batch of 1,000 new releases from the
        # upstream watcher, then one batch of 1,000 finished builds.
        target = TARGETS[0][0] + "-linux_armv7l"
        with engine.begin() as conn:
            new_rows = [
                versions.NewVersion(
                    f"pkg{i % counts['packages']}", f"900.{i}", released_at=datetime.now(UTC)
                )
                for i in range(1000)
            ]
            t_versions = timed(
                "queue update: 1,000 new versions (add_versions)",
                lambda: versions.add_versions(conn, new_rows),
                scan,
                "seq scan",
            )
        with engine.begin() as conn:
            todo = queue.next_builds(conn, target, 1000)
            started: list[int] = []

            def start() -> None:
                for q in todo:
                    started.append(builds.start_build(conn, q.package, q.version, q.abi, "bench"))

            timed(f"start {len(todo):,} builds (one by one, as builders ask)", start)
        with engine.begin() as conn:
            results = []
            for n, (q, build_id) in enumerate(zip(todo, started, strict=True)):
                tags = "py3-none-any" if n % 2 else "cp39-cp39-linux_armv7l"
                name = f"{q.package}-{q.version}-{tags}.whl"
                results.append(
                    builds.BuildResult(
                        build_id,
                        "success",
                        timedelta(minutes=1),
                        files=(FileRecord(filename=name, size=100, sha256="1" * 64),),
                    )
                )
            t_builds = timed(
                f"queue update: {len(results):,} finished builds (finish_builds)",
                lambda: builds.finish_builds(conn, results),
                scan,
                "seq scan",
            )
        total = t_versions + t_builds
        print(
            f"  update after 1,000 new versions + {len(results):,} finished builds: "
            f"{total:.3f} s (aim < 1 s; seq scan of versions {scan:.3f} s)"
        )
        with engine.begin() as conn:
            one = versions.NewVersion("pkg0", "901.0")
            timed(
                "one new version (add_version, prepared)",
                lambda: versions.add_versions(conn, [one]),
            )
        with engine.connect() as conn:
            for tag, _ in TARGETS:
                timed(
                    f"top 1,000 for {tag}",
                    lambda tag=tag: queue.next_builds(conn, f"{tag}-linux_armv7l", 1000),
                )
        # The queue was empty when the database was analysed: until autovacuum
        # analyses it, the planner may not trust the order index.
        with vac.connect() as conn:
            timed("ANALYZE build_queue", lambda: conn.execute(text("ANALYZE build_queue")))
        with engine.connect() as conn:
            for tag, _ in TARGETS:
                timed(
                    f"top 1,000 for {tag} (analysed)",
                    lambda tag=tag: queue.next_builds(conn, f"{tag}-linux_armv7l", 1000),
                )
        # Download ingest: data layer vs raw COPY of the same rows.  Hits look like
        # an access log: second-resolution times, many clients and files, and each
        # hit has its own (often equal) client description.
        n = max(10_000, int(1_000_000 * min(args.scale * 10, 1)))
        now = datetime.now(UTC)
        infos = [
            dict(
                distro_name="Debian",
                distro_version=str(10 + i % 3),
                arch="armv7l" if i % 4 else "aarch64",
                py_name="CPython",
                py_version=f"3.{9 + i % 4}.2",
                installer_name="pip",
                installer_version=f"2{i % 4}.0.1",
            )
            for i in range(40)
        ]
        hits = [
            Hit(
                now - timedelta(seconds=i // 50),
                f"pkg{rng.randrange(counts['packages'])}-1.0-py3-none-any.whl",
                f"{rng.randrange(20_000):032x}",
                "pip",
                rng.randrange(10**6),
                ClientInfo(**infos[rng.randrange(len(infos))]),
            )
            for i in range(n)
        ]
        text_rows = downloads._format(hits, True, package_column=True).splitlines(keepends=True)
        cols = ", ".join(downloads.DOWNLOAD_COLUMNS)
        with engine.begin() as conn:
            raw_t = timed(
                f"raw COPY of {n:,} downloads (reference)",
                lambda: copy(conn, "downloads", cols, iter(text_rows)),
            )
        with engine.begin() as conn:
            layer_t = timed(
                f"data layer: {n:,} downloads",
                lambda: downloads.add_downloads(conn, hits),
                raw_t,
                "raw COPY",
            )
        print(
            f"  data layer {n / layer_t:,.0f} rows/s vs raw COPY {n / raw_t:,.0f} rows/s "
            f"({100 * raw_t / layer_t:.0f}% of COPY; aim >= 50%)"
        )
        start_cpu = time.process_time()
        downloads._format(hits, True, package_column=True)
        cpu = time.process_time() - start_cpu
        print(f"  of which formatting (CPU) {cpu:.3f} s, {n / cpu:,.0f} rows/s")
        with engine.begin() as conn:
            timed("rollup of one day", lambda: rollup_day(conn, now.date()))
        print(f"peak RSS {rss_mb():.0f} MiB; {load()}")
        engine.dispose()
        vac.dispose()
    finally:
        if cluster is not None:
            cluster.destroy()
        elif args.dsn:
            eng = create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
            eng.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
