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

TARGETS = [("cp39", 9), ("cp311", 11), ("cp312", 12), ("cp313", 13)]
T0 = datetime(2015, 1, 1, tzinfo=UTC)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy(conn: Connection, table: str, cols: str, rows: Iterator[str]) -> None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    buf = io.StringIO()
    cur = raw.cursor()
    for n, row in enumerate(rows, 1):
        buf.write(row)
        if n % 200_000 == 0:
            buf.seek(0)
            cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf)
            buf = io.StringIO()
    buf.seek(0)
    cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf)
    cur.close()


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
        print(f"scale {args.scale}")
        with engine.begin() as conn:
            counts: dict[str, int] = {}
            t = timed("generate (COPY)", lambda: counts.update(generate(conn, args.scale, rng)))
        vac = create_engine(url, isolation_level="AUTOCOMMIT")
        with vac.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        vac.dispose()
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
        with engine.begin() as conn:
            timed(
                "build queue: first full computation", lambda: queue.refresh(conn), scan, "seq scan"
            )
            print(f"  queue sizes {queue.queue_sizes(conn)}")
        # 1,000 new versions and 1,000 finished builds through the data layer.
        with engine.begin() as conn:

            def new_versions() -> None:
                for i in range(1000):
                    versions.add_version(
                        conn,
                        f"pkg{i % counts['packages']}",
                        f"900.{i}",
                        released_at=datetime.now(UTC),
                    )

            timed("queue update: 1,000 new versions", new_versions, scan, "seq scan")
        with engine.begin() as conn:
            todo = queue.next_builds(conn, TARGETS[0][0] + "-linux_armv7l", 1000)

            def finish() -> None:
                for q in todo:
                    b = builds.start_build(conn, q.package, q.version, q.abi, "bench")
                    name = f"{q.package}-{q.version}-cp39-cp39-linux_armv7l.whl"
                    builds.finish_build(
                        conn,
                        b,
                        "success",
                        timedelta(minutes=1),
                        files=[FileRecord(filename=name, size=100, sha256="1" * 64)],
                    )

            timed(f"queue update: {len(todo):,} finished builds", finish, scan, "seq scan")
        with engine.connect() as conn:
            for tag, _ in TARGETS:
                timed(
                    f"top 1,000 for {tag}",
                    lambda tag=tag: queue.next_builds(conn, f"{tag}-linux_armv7l", 1000),
                )
        # Download ingest: data layer vs raw COPY of the same rows.
        n = max(10_000, int(1_000_000 * min(args.scale * 10, 1)))
        now = datetime.now(UTC)
        info = ClientInfo(
            distro_name="Debian",
            distro_version="12",
            arch="armv7l",
            py_name="CPython",
            py_version="3.11.2",
            installer_name="pip",
            installer_version="23.0.1",
        )
        hits = [
            Hit(now, f"pkg{i % 100}-1.0-py3-none-any.whl", "ab" * 16, "pip", 1000, info)
            for i in range(n)
        ]
        lines = downloads._rows(hits, True, target_of=downloads._package_of)
        cols = "accessed_at, client, kind, bytes_sent, package, filename, " + ", ".join(
            downloads._CLIENT_FIELDS
        )
        with engine.begin() as conn:
            raw_t = timed(
                f"raw COPY of {n:,} downloads (reference)",
                lambda: copy(conn, "downloads", cols, iter(lines)),
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
            f"({100 * raw_t / layer_t:.0f}% of COPY)"
        )
        with engine.begin() as conn:
            timed("rollup of one day", lambda: downloads.rollup(conn, now.date()))
        print(f"peak RSS {rss_mb():.0f} MiB")
        engine.dispose()
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
