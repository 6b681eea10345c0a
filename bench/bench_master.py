"""Master throughput with simulated builders, and the farm's overhead over plain ``pip wheel``.

Part 1, throughput: a real Master (its own process, CurveZMQ on the builder
and file sockets, a private PostgreSQL) and 20 simulated builders speaking
the builder protocol directly on DEALER sockets (threads spread over a few
processes).  Each builder asks for work, at once reports a 10 KB wheel and
sends it with :class:`~piwheels.filetransfer.FileSender`; the master
dispatches, pulls, verifies, publishes, records in PostgreSQL and writes the
pages and log.  Printed: builds per second, beside the machine's raw limit
for the same traffic (plain ZeroMQ DEALER/ROUTER round trips on loopback with
the same number of clients, five round trips per build: IDLE/BUILD,
BUILT/SEND, file HELLO/FETCH, CHUNK/DONE, SENT/DONE), and the master
process's CPU time and peak RSS.

Part 2, overhead: one real small sdist built through a running master and a
real BuilderDaemon (from the moment the master starts the build until the
build is recorded) against the same ``pip wheel`` command alone.

Run small: ``python bench/bench_master.py --scale 0.1``.  With ``--log-statements``
the private server logs every statement with its duration and the build
dispatcher's statements and transactions per build are printed by kind (the
logging costs the server CPU: compare CPU figures from runs without it).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from piwheels import protocols
from piwheels.db import abis as db_abis
from piwheels.db import initdb
from piwheels.db import versions as db_versions
from piwheels.filetransfer import FileSender, SenderConnections
from piwheels.settings import Settings
from piwheels.transport import DEALER, Context, generate_keys, load_keys, now

ABI, PLATFORM = "cp311", "linux_armv7l"
TAG = f"{ABI}-{ABI}-{PLATFORM}"
WHEEL_SIZE = 10 * 1024
ROUND_TRIPS_PER_BUILD = 5


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}, {os.cpu_count() or 1} CPUs"


# -- wheels ------------------------------------------------------------------------------------


def wheel(folder: Path, name: str, version: str = "1.0") -> tuple[Path, dict[str, Any]]:
    """A valid wheel of about 10 KB (random payload stored) and its BUILT file record."""
    import base64
    import io
    import zipfile

    def rec(data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"sha256={digest}"

    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    members = {
        f"{dist}/__init__.py": b"VALUE = 1\n",
        f"{dist}/blob.bin": os.urandom(WHEEL_SIZE - 1200),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {TAG}\n".encode(),
    }
    record = "".join(f"{p},{rec(d)},{len(d)}\n" for p, d in members.items()) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p, d in members.items():
            zf.writestr(p, d)
        zf.writestr(f"{info}/RECORD", record)
    data = buf.getvalue()
    path = folder / f"{dist}-{version}-{TAG}.whl"
    path.write_bytes(data)
    return path, {
        "filename": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "requires_python": None,
        "requires_dist": [],
        "metadata_sha256": None,
        "apt_dependencies": [],
        "missing_libraries": [],
        "import_ok": True,
        "import_error": None,
    }


# -- the master in its own process ---------------------------------------------------------------


def master_settings(url: str, root: Path, keys: Path, builder: str, file: str) -> Settings:
    sockets = Path(tempfile.mkdtemp(prefix="piwbm-", dir="/tmp"))
    return (
        Settings()
        .replace("database", dsn=url, pool_size=8)
        .replace(
            "master",
            output_path=root / "www",
            builder_endpoint=builder,
            file_endpoint=file,
            status_endpoint=f"ipc://{sockets}/status",
            control_endpoint=f"ipc://{sockets}/control",
            admin_endpoint=f"ipc://{sockets}/admin",
            log_endpoint=f"ipc://{sockets}/logger",
            builder_timeout=timedelta(seconds=60),
        )
        .replace("builder", min_free_disk=1 << 20)
        .replace("upstream", build_index="http://127.0.0.1:9/simple/")
        .replace(
            "keys",
            curve=True,
            secret_key_file=keys / "server" / "master.key_secret",
            authorized_keys_dir=keys / "authorized",
        )
    )


def run_master(settings: Settings, ready: Any, stop: Any, tids: str, profile: str = "") -> None:
    import logging

    from piwheels.master.main import Master

    logging.basicConfig(level=logging.WARNING)
    _name_tasks(Path(tids))
    if profile:
        _profile_tasks(Path(profile))
    master = Master(settings)
    master.start()
    ready.set()
    stopping = threading.Event()

    def relay() -> None:
        stop.wait()
        stopping.set()

    threading.Thread(target=relay, daemon=True).start()
    master.run(stop=stopping)


def _name_tasks(folder: Path) -> None:
    """Each master task writes its thread id to ``<role>.tid`` in *folder* (CPU per task)."""
    from piwheels.tasks import Task

    plain = Task.run

    def run(self: Task) -> None:
        (folder / f"{self.role}.tid").write_text(str(threading.get_native_id()))
        plain(self)

    Task.run = run  # type: ignore[method-assign]


def thread_cpu(pid: int, folder: Path) -> dict[str, float]:
    """CPU seconds of each thread of *pid*: tasks by role, ZeroMQ's by name, the rest summed."""
    roles = {int(p.read_text()): p.stem for p in folder.glob("*.tid")}
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tid = int(task.name)
        name = roles.get(tid) or ("zmq I/O" if comm.startswith("ZMQbg") else "other threads")
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[name] = out.get(name, 0.0) + cpu
    return out


def _profile_tasks(folder: Path) -> None:
    """Run every master task under cProfile; each writes ``<role>.prof`` into *folder*."""
    import cProfile

    from piwheels.tasks import Task

    plain = Task.run

    def run(self: Task) -> None:
        # The thread's CPU time, not wall time: waits for the GIL, the database and the
        # disk would otherwise look like work.
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        try:
            plain(self)
        finally:
            prof.disable()
            prof.dump_stats(str(folder / f"{self.role}.prof"))

    Task.run = run  # type: ignore[method-assign]


def print_profiles(folder: Path, top: int = 25) -> None:
    """The busiest functions of each profiled task (thread CPU time), cumulative."""
    import pstats

    for path in sorted(folder.glob("*.prof")):
        stats = pstats.Stats(str(path))
        total = stats.total_tt  # type: ignore[attr-defined]
        if total < 0.05:
            continue
        print(f"--- profile of {path.stem}: {total:.2f} s CPU")
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)


def proc_cpu(pid: int, reaped: bool = False) -> float:
    """CPU seconds of *pid* (with *reaped*, also of its children that have exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which steal/user already count
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def postgres_cpu(pid: int | None) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its live and its exited backends."""
    if pid is None:
        return 0.0
    total = proc_cpu(pid, reaped=True)
    for kid in descendants(pid):
        try:
            total += proc_cpu(kid)
        except OSError:
            pass
    return total


def xacts(engine: Any) -> int:
    """Transactions committed and rolled back in the bench database so far (every client)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        return int(
            conn.exec_driver_sql(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            ).scalar_one()
        )


def statement_counts(
    log: Path, start: int, end: int, kinds: dict[str, list[float]] | None = None
) -> dict[str, tuple[int, int]]:
    """Statements and transactions per client role in the server's log between two offsets.

    Needs ``log_min_duration_statement = 0`` and ``log_line_prefix = '%p '``.  A
    backend is the build dispatcher's if it ever finished builds (``UPDATE builds``),
    another's if not (the site process only reads); BEGIN, COMMIT and ROLLBACK are
    counted as transactions (COMMIT and ROLLBACK), not statements.  *kinds* gets the
    dispatcher's statements by kind (first words): [count, milliseconds in all].
    """
    with log.open("rb") as f:
        f.seek(start)
        text_ = f.read(end - start).decode("utf-8", "replace")
    per_pid: dict[str, list[tuple[float, str]]] = {}
    current: list[tuple[float, str]] | None = None
    for line in text_.splitlines():
        pid, _, rest = line.partition(" ")
        if not pid.isdigit():
            if current is not None:  # a statement's next line
                ms, st = current[-1]
                current[-1] = (ms, (st + " " + line.strip()).strip())
            continue
        current = None
        if rest.startswith("LOG:  duration: "):
            ms, _, what = rest[len("LOG:  duration: ") :].partition(" ms  ")
            for mark in ("statement: ", "execute "):
                if what.startswith(mark):
                    current = per_pid.setdefault(pid, [])
                    current.append((float(ms), what[len(mark) :].strip()))
    ends = ("COMMIT", "ROLLBACK")
    counts: dict[str, tuple[int, int]] = {}
    for stmts in per_pid.values():
        heads = [(st.split() or [""])[0].upper() for _, st in stmts]
        writes = any(st.startswith(("UPDATE builds", "EXECUTE piw_finish")) for _, st in stmts)
        who = "dispatcher" if writes else "others"
        n = sum(1 for h in heads if h not in ("BEGIN", *ends))
        if kinds is not None and who == "dispatcher":
            for ms, st in stmts:  # the statement's kind: its first words, without values
                kind = " ".join(st.split("(", 1)[0].split()[:4])[:48]
                tally = kinds.setdefault(kind, [0, 0.0])
                tally[0] += 1
                tally[1] += ms
        x = sum(1 for h in heads if h in ends)
        old = counts.get(who, (0, 0))
        counts[who] = (old[0] + n, old[1] + x)
    return counts


def descendants(pid: int) -> list[int]:
    """Every live process under *pid* (the file receiver, the site process, the fork server)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


#: The master's child processes by the name each gives itself (piwheels.master.process).
CHILDREN = {"piw-file-recv": "file receiver", "piw-site": "site"}


def tree_cpu(pid: int) -> tuple[float, dict[str, float]]:
    """CPU seconds of *pid* itself and of its live descendants, by kind (see CHILDREN)."""
    own = proc_cpu(pid)
    kids = dict.fromkeys([*CHILDREN.values(), "other children"], 0.0)
    for kid in descendants(pid):
        try:
            comm = Path(f"/proc/{kid}/comm").read_text().strip()
            kids[CHILDREN.get(comm, "other children")] += proc_cpu(kid)
        except OSError:
            pass
    return own, kids


def settle(pid: int, limit: float = 120.0) -> None:
    """Wait until the master's start-up work (templates, static pages) is over.

    A master runs for months: its start-up is not part of its throughput.
    Settled = under 5% of a CPU for half a second.
    """
    end = time.monotonic() + limit
    last = proc_cpu(pid)
    while time.monotonic() < end:
        time.sleep(0.5)
        cpu = proc_cpu(pid)
        if cpu - last < 0.025:
            return
        last = cpu


def proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- simulated builders --------------------------------------------------------------------------


def sim_builders(
    labels: list[str],
    keys_dir: str,
    builder: str,
    file: str,
    wheels: dict[str, tuple[str, dict[str, Any]]],
    out: Any,
    keep_connections: bool = True,
) -> None:
    """Run one simulated builder per label in threads; put (done, errors, CPU s) on *out*."""
    cpu0 = time.process_time()
    context = Context()
    server = load_keys(Path(keys_dir) / "server" / "master.key").public
    done = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def one(label: str) -> None:
        own = load_keys(Path(keys_dir) / "builders" / f"{label}.key_secret")
        sock = context.socket(DEALER, reversed(protocols.builder))
        sock.curve_client(own, server)
        sock.connect(builder)
        # One file connection per builder, kept across its transfers (as a builder does).
        connections = SenderConnections() if keep_connections else None

        def ask(msg: str, data: Any) -> Any:
            sock.send_msg(msg, data)
            return sock.recv_msg(timeout=60)

        stats = {
            "timestamp": now(),
            "disk_total": 100 << 30,
            "disk_free": 50 << 30,
            "mem_total": 4 << 30,
            "mem_free": 2 << 30,
            "swap_total": 0,
            "swap_free": 0,
            "load_average": 0.0,
            "cpu_temp": None,
        }
        hello = {
            "protocol": protocols.PROTOCOL_VERSION,
            "label": label,
            "python_version": "3.11.2",
            "abi": ABI,
            "platform": PLATFORM,
            "os_name": "Debian GNU/Linux",
            "os_version": "12",
            "machine": "armv7l",
            "cpu_count": 4,
            "board": None,
            "build_timeout": timedelta(hours=1),
            "sandbox": "bench",
            "stats": stats,
        }
        try:
            assert ask("HELLO", hello).msg == "ACK"
            while True:
                reply = ask("IDLE", {"stats": stats})
                if reply.msg != "BUILD":
                    break  # SLEEP: no work left
                build = reply.data
                path, rec = wheels[build["package"]]
                reply = ask(
                    "BUILT",
                    {
                        "build_id": build["build_id"],
                        "status": True,
                        "duration": timedelta(seconds=1),
                        "failure_class": None,
                        "log": f"simulated build of {build['package']}\n",
                        "files": [rec],
                        "environment": {"builder": label},
                    },
                )
                while reply.msg == "SEND":
                    result = FileSender(
                        context,
                        file,
                        path,
                        reply.data["transfer"],
                        keys=own,
                        server_public=server,
                        connections=connections,
                    ).run()
                    if not result.ok:
                        errors.append(f"{label}: {result.reason}")
                    reply = ask(
                        "SENT", {"build_id": build["build_id"], "filename": rec["filename"]}
                    )
                if reply.msg != "DONE":
                    errors.append(f"{label}: {reply.msg} {reply.data}")
                    break
                with lock:
                    done[0] += 1
            sock.send_msg("BYE", {"reason": "bench over"})
        except Exception as exc:  # report, do not hang the bench
            errors.append(f"{label}: {exc!r}")
        finally:
            sock.close(linger=1)
            if connections is not None:
                connections.close()

    threads = [threading.Thread(target=one, args=(label,)) for label in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    context.close()
    out.put((done[0], errors, time.process_time() - cpu0))


# -- raw loopback reference ------------------------------------------------------------------------


def raw_server(address: str, ready: Any, stop: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            sock.send_multipart(sock.recv_multipart())
    sock.close(0)
    ctx.term()


def raw_clients(n: int, address: str, count: int, out: Any) -> None:
    ctx = zmq.Context()

    def one() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(address)
        small, big = b"x" * 300, os.urandom(WHEEL_SIZE)
        for i in range(count):
            sock.send(big if i % ROUND_TRIPS_PER_BUILD == 3 else small)
            sock.recv()
        sock.close(0)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx.term()
    out.put(n * count)


def spread(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


def throughput(
    admin: str,
    builds: int,
    builders: int,
    procs: int,
    profile: bool = False,
    keep_connections: bool = True,
    postgres_pid: int | None = None,
    py_spy: str = "",
    workdir: str | None = None,
    statement_log: Path | None = None,
) -> None:
    spawn = mp.get_context("spawn")
    # The output folder, staging and pages: creating files costs far more in some folders of
    # a disk than others (inode allocation), so the folder is a choice.
    root = Path(tempfile.mkdtemp(prefix="piwbench-master-", dir=workdir))
    url = make_url(admin).set(database=f"piwbench_master_{os.getpid()}")
    url_s = url.render_as_string(hide_password=False)
    initdb.upgrade(url_s, yes=True)
    keys = root / "keys"
    generate_keys(keys / "server", "master")
    labels = [f"sim{i:02d}" for i in range(builders)]
    for label in labels:
        _, secret = generate_keys(keys / "authorized", label)
        (keys / "builders").mkdir(exist_ok=True)
        shutil.move(secret, keys / "builders" / secret.name)
    wheels_dir = root / "wheels"
    wheels_dir.mkdir()
    names = [f"benchpkg-{i:06d}" for i in range(builds)]
    wheels = {}
    for name in names:
        path, rec = wheel(wheels_dir, name)
        wheels[name] = (str(path), rec)
    engine = create_engine(url_s)
    with engine.begin() as conn:
        db_abis.add_abi(conn, ABI, PLATFORM)
        db_versions.add_versions(
            conn, [db_versions.NewVersion(n, "1.0", released_at=datetime.now(UTC)) for n in names]
        )
    builder = f"tcp://127.0.0.1:{free_port()}"
    file = f"tcp://127.0.0.1:{free_port()}"
    settings = master_settings(url_s, root, keys, builder, file)
    ready, stop = spawn.Event(), spawn.Event()
    prof_dir = root / "profiles"
    prof_dir.mkdir()
    tid_dir = root / "tids"
    tid_dir.mkdir()
    master = spawn.Process(
        target=run_master,
        args=(settings, ready, stop, str(tid_dir), str(prof_dir) if profile else ""),
    )
    master.start()
    if not ready.wait(60):
        raise SystemExit("the master did not start")
    assert master.pid is not None
    settle(master.pid)
    time.sleep(1.1)  # backends report their counts at most once a second
    xact0 = xacts(engine)
    out = spawn.Queue()
    groups = spread(labels, procs)
    spy = None
    if py_spy:
        # A sampling profile of the master over the run only (py-spy is not a dependency).
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(master.pid), "--threads", "--rate", "250",
             "--format", "raw", "--output", py_spy],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    cpu0, kids0 = tree_cpu(master.pid)
    threads0 = thread_cpu(master.pid, tid_dir)
    pg0, machine0 = postgres_cpu(postgres_pid), machine_cpu()
    log0 = statement_log.stat().st_size if statement_log is not None else 0
    start = time.perf_counter()
    workers = [
        spawn.Process(
            target=sim_builders, args=(g, str(keys), builder, file, wheels, out, keep_connections)
        )
        for g in groups
    ]
    for w in workers:
        w.start()
    results = [out.get(timeout=3600) for _ in workers]
    elapsed = time.perf_counter() - start
    cpu, by_kind = tree_cpu(master.pid)
    cpu -= cpu0
    by_kind = {k: v - kids0.get(k, 0.0) for k, v in by_kind.items()}
    kids = sum(by_kind.values())
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    threads = thread_cpu(master.pid, tid_dir)
    threads = {k: v - threads0.get(k, 0.0) for k, v in threads.items()}
    pg = postgres_cpu(postgres_pid) - pg0
    log1 = statement_log.stat().st_size if statement_log is not None else 0
    busy, total = (a - b for a, b in zip(machine_cpu(), machine0, strict=True))
    peak = proc_peak_rss(master.pid)
    for w in workers:
        w.join()
    # Build -> pages latency: each project's last page written (its JSON API) against the
    # time its file was recorded; the pages may still be on their way when the builds end.
    www = root / "www" / "project"
    pages = {n: www / n / "json" / "index.json" for n in names}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(p.exists() for p in pages.values()):
        time.sleep(0.1)
    pages_done = time.perf_counter() - start
    stop.set()
    master.join(60)
    time.sleep(1.1)  # the master's backends have exited and reported their counts
    # Minus this function's own two transactions (its query and the one before it).
    xact = xacts(engine) - xact0 - 2
    done = sum(r[0] for r in results)
    errors = [e for r in results for e in r[1]]
    sims = sum(r[2] for r in results)
    with engine.connect() as conn:
        recorded = conn.execute(
            text("SELECT count(*) FROM builds WHERE status = 'success'")
        ).scalar_one()
        files = conn.execute(text("SELECT count(*) FROM files")).scalar_one()
        published_at = dict(
            conn.execute(
                text(
                    "SELECT b.package, max(f.published_at) FROM files f "
                    "JOIN builds b ON b.build_id = f.build_id GROUP BY b.package"
                )
            ).all()
        )
    latencies = sorted(
        p.stat().st_mtime - published_at[n].timestamp()
        for n, p in pages.items()
        if p.exists() and n in published_at
    )
    engine.dispose()
    published = len(list((root / "www" / "simple").rglob("*.whl")))

    # The raw limit: the same clients doing plain round trips, same message sizes.
    raw_addr = f"tcp://127.0.0.1:{free_port()}"
    rready, rstop = spawn.Event(), spawn.Event()
    server = spawn.Process(target=raw_server, args=(raw_addr, rready, rstop))
    server.start()
    rready.wait(30)
    per_client = max(200, builds * ROUND_TRIPS_PER_BUILD // builders)
    rstart = time.perf_counter()
    raws = [
        spawn.Process(target=raw_clients, args=(len(g), raw_addr, per_client, out)) for g in groups
    ]
    for r in raws:
        r.start()
    trips = sum(out.get(timeout=600) for _ in raws)
    raw_elapsed = time.perf_counter() - rstart
    for r in raws:
        r.join()
    rstop.set()
    server.join(10)

    rate = done / elapsed
    raw_rate = trips / raw_elapsed
    raw_builds = raw_rate / ROUND_TRIPS_PER_BUILD
    how = "one kept file connection each" if keep_connections else "a file connection per file"
    print(f"throughput: {builders} simulated builders in {len(groups)} processes ({how}), "
          f"{load()}; output in {root.parent}")  # fmt: skip
    print(
        f"  builds done {done}/{builds}, recorded {recorded}, files {files}, published {published}"
    )
    if errors:
        print(f"  ERRORS ({len(errors)}): {errors[:3]}")
    print(f"  master: {rate:,.1f} builds/s ({elapsed:.2f} s), aim 200/s")
    print(f"  master process: {cpu:.2f} s CPU ({cpu / max(done, 1) * 1000:.2f} ms/build), "
          f"peak RSS {peak / 2**20:.0f} MiB")  # fmt: skip
    print(f"  its child processes (file receiver, page writer's site process, fork server): "
          f"{kids:.2f} s CPU ({kids / max(done, 1) * 1000:.2f} ms/build); together "
          f"{(cpu + kids) / max(done, 1) * 1000:.2f} ms/build")  # fmt: skip
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"  build recorded -> pages written: median {statistics.median(latencies):.2f} s, "
              f"p99 {p99:.2f} s, max {latencies[-1]:.2f} s over {len(latencies)} projects "
              f"(all pages {pages_done:.2f} s after the start)")  # fmt: skip
    print(f"  raw loopback: {raw_rate:,.0f} round trips/s = {raw_builds:,.0f} builds/s "
          f"at {ROUND_TRIPS_PER_BUILD} round trips per build "
          "(no curve, no checks, no disk)")  # fmt: skip
    print(f"  ratio master/raw: {rate / raw_builds:.1%}")
    per = 1000 / max(done, 1)
    children = ", ".join(f"{k} {v * per:.2f} ms" for k, v in by_kind.items())
    print(f"  CPU per build by process: master {cpu * per:.2f} ms, {children}, "
          f"simulated builders {sims * per:.2f} ms, PostgreSQL {pg * per:.2f} ms; "
          f"sum {(cpu + kids + sims + pg) * per:.2f} ms")  # fmt: skip
    shown = ", ".join(
        f"{k} {v * per:.2f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
    )
    print(f"  master threads, ms per build: {shown}")
    print(f"  database transactions per build (every client, the site's reads included): "
          f"{xact / max(done, 1):.2f}")  # fmt: skip
    if statement_log is not None:
        kinds: dict[str, list[float]] = {}
        for who, (n, x) in sorted(statement_counts(statement_log, log0, log1, kinds).items()):
            print(f"  server log, {who}: {n / max(done, 1):.2f} statements and "
                  f"{x / max(done, 1):.2f} transactions per build")  # fmt: skip
        for kind, (n, ms) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"    dispatcher {n / max(done, 1):.2f} per build, {ms / max(n, 1):.3f} ms "
                  f"each ({ms / max(done, 1):.3f} ms per build): {kind}")  # fmt: skip
    ncpu = os.cpu_count() or 1
    room = max(elapsed * ncpu, 1e-9)  # CPU seconds the machine had during the run
    print(f"  machine over the run: {busy / max(total, 1e-9):.0%} of {ncpu} CPUs busy "
          f"({busy * per:.2f} ms per build, other work included); the simulated builders "
          f"took {sims / room:.0%} of the machine, PostgreSQL {pg / room:.0%}, "
          f"the master {(cpu + kids) / room:.0%}")  # fmt: skip
    bound = (cpu + kids + sims + pg) * per / 1000
    if bound > 0:
        print(f"  bound on this machine if every CPU did only this work: "
              f"{ncpu / bound:,.0f} builds/s")  # fmt: skip
    if profile:
        print_profiles(prof_dir)
    shutil.rmtree(root, ignore_errors=True)


# -- part 2: the farm's overhead for a real sdist -----------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def overhead(admin: str, runs: int, sandbox: str) -> None:
    from piwheels.builder.daemon import BuilderDaemon
    from piwheels.master.main import Master
    from tests.sdists import build_requirement_wheels, pure_sdist, write_simple_index

    root = Path(tempfile.mkdtemp(prefix="piwbench-farm-"))
    build_requirement_wheels(root / "index" / "files")
    versions = [f"1.{i}" for i in range(runs)]
    for v in versions:
        pure_sdist(root / "index" / "files", "piwbench-farm", v)
    write_simple_index(root / "index")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / "index"))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    index = f"http://127.0.0.1:{httpd.server_address[1]}/simple/"

    # pip wheel alone, as the builder runs it (minimal environment, no cache).
    raw = []
    for v in versions:
        out = root / f"raw-{v}"
        cmd = [sys.executable, "-m", "pip", "wheel", f"piwbench-farm=={v}", "--no-deps",
               "--no-binary", "piwbench-farm", "--no-cache-dir", "--index-url", index,
               "-w", str(out), "--disable-pip-version-check", "--no-input"]  # fmt: skip
        env = {"PATH": os.defpath, "HOME": str(root), "PIP_CONFIG_FILE": os.devnull}
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        raw.append(time.perf_counter() - t)

    url = make_url(admin).set(database=f"piwbench_farm_{os.getpid()}")
    url_s = url.render_as_string(hide_password=False)
    initdb.upgrade(url_s, yes=True)
    keys = root / "keys"
    generate_keys(keys / "server", "master")
    _, secret = generate_keys(keys / "authorized", "bench-builder")
    own = keys / "own"
    own.mkdir()
    shutil.move(secret, own / secret.name)
    settings = master_settings(
        url_s, root, keys, f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ).replace("upstream", build_index=index)
    master = Master(settings)
    master.start()
    stop = threading.Event()
    mthread = threading.Thread(target=master.run, kwargs={"stop": stop})
    mthread.start()
    m = settings.master
    bsettings = (
        Settings()
        .replace(
            "builder",
            master_host="127.0.0.1",
            builder_port=int(m.builder_endpoint.rsplit(":", 1)[1]),
            file_port=int(m.file_endpoint.rsplit(":", 1)[1]),
            label="bench-builder",
            build_dir=root / "builds",
            min_free_disk=1 << 20,
            sandbox=sandbox,
            import_test=False,
        )
        .replace(
            "keys",
            curve=True,
            secret_key_file=own / secret.name,
            server_public_key_file=keys / "server" / "master.key",
        )
    )
    daemon = BuilderDaemon(bsettings)
    dthread = threading.Thread(target=daemon.run)
    dthread.start()
    engine = create_engine(url_s)
    farm: list[float] = []
    try:
        for v in versions:
            with engine.begin() as conn:
                db_versions.add_versions(conn, [db_versions.NewVersion("piwbench-farm", v)])
            while True:
                with engine.connect() as conn:
                    row = conn.execute(
                        text("SELECT status, started_at FROM builds WHERE version = :v"),
                        {"v": v},
                    ).first()
                if row is not None and row.status in ("success", "failed"):
                    break
                time.sleep(0.01)
            done = datetime.now(UTC)
            assert row.status == "success", f"the farm build failed: {row}"
            farm.append((done - row.started_at).total_seconds())
    finally:
        daemon.stop("bench over")
        dthread.join(60)
        stop.set()
        mthread.join(60)
        engine.dispose()
        httpd.shutdown()
    r, f = statistics.median(raw), statistics.median(farm)
    print(f"overhead: {runs} build(s) of a small pure sdist, sandbox {sandbox}, import test off")
    print(f"  pip wheel alone: {r:.2f} s (median)")
    print(f"  through master + builder (build started -> recorded): {f:.2f} s (median)")
    print(f"  overhead per build: {f - r:+.2f} s (aim < 1 s), ratio {f / r:.2f}x")
    print("  (not counted: the wait for an idle builder's next IDLE, at most its 5 s SLEEP)")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 5,000 builds, 5 farm runs")
    parser.add_argument("--builders", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4, help="processes for simulated builders")
    parser.add_argument("--dsn", help="a superuser URL of a server to use instead of a private one")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument(
        "--dir", help="folder for the master's output, staging and the wheels (default: TMPDIR)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile the master's tasks (cProfile) and print"
    )
    parser.add_argument(
        "--py-spy", default="", metavar="FILE", help="sample the master with py-spy (raw stacks)"
    )
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="open a file connection per transfer (as FileSender without SenderConnections)",
    )
    parser.add_argument(
        "--log-statements",
        action="store_true",
        help="log every statement with its duration on the private server and count them "
        "per build "
        "(costs the server CPU: measure CPU in a run without it)",
    )
    args = parser.parse_args()
    cluster = None
    if args.dsn:
        admin = args.dsn
    else:
        from piwheels.pgcluster import Cluster

        cluster = Cluster(Path(tempfile.mkdtemp(prefix="piwbench-", dir="/tmp")), fsync=False)
        cluster.start()
        admin = cluster.url()
        if args.log_statements:
            engine = create_engine(admin, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql("ALTER SYSTEM SET log_min_duration_statement = 0")
                conn.exec_driver_sql("ALTER SYSTEM SET log_line_prefix = '%%p '")
                conn.exec_driver_sql("SELECT pg_reload_conf()")
            engine.dispose()
    try:
        throughput(
            admin,
            max(100, int(5000 * args.scale)),
            args.builders,
            args.procs,
            args.profile,
            not args.new_connections,
            cluster.pid if cluster is not None else None,
            args.py_spy,
            args.dir,
            cluster.logfile if cluster is not None and args.log_statements else None,
        )
        if not args.skip_overhead:
            overhead(admin, max(1, round(5 * args.scale)), args.sandbox)
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
