"""The upstream watcher on real PostgreSQL and ZeroMQ against the stand-in upstream."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from piwheels import protocols
from piwheels.db import abis, packages, versions
from piwheels.errors import TransportTimeout
from piwheels.master.env import MasterEnv
from piwheels.master.upstream_watcher import NO_UPSTREAM, UpstreamWatcher
from piwheels.settings import Settings
from piwheels.transport import PULL, Context
from tests.peer import ScriptedPeer, wait_for
from tests.upstream.server import FakeFile, UpstreamModel, UpstreamServer

TEMPLATE = "piwheels_template"
ARM = "cp311-linux_armv7l"
ARM64 = "cp311-linux_aarch64"
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def engine(new_database: Any) -> Iterator[Any]:
    eng = create_engine(new_database(template=TEMPLATE, prefix="piwwatch"))
    with eng.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
        abis.add_abi(conn, "cp311", "linux_aarch64", glibc="2.36")
    yield eng
    eng.dispose()


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.close()


def make_env(engine: Any, tmp: Path, **upstream: Any) -> MasterEnv:
    settings = Settings().replace("upstream", **upstream).replace("keys", curve=False)
    addresses = {"pages": f"inproc://pages-{uuid.uuid4().hex[:8]}"}
    return MasterEnv(settings=settings, addresses=addresses, output_path=tmp, engine=engine)


class Rig:
    """A watcher on a fake clock, the page writer's socket played by a scripted peer."""

    def __init__(self, context: Context, env: MasterEnv, **kwargs: Any) -> None:
        self.clock = FakeClock()
        self.peer = ScriptedPeer(context, PULL, protocols.pages, bind=env.addresses["pages"])
        kwargs.setdefault("clock", self.clock)
        self.watcher = UpstreamWatcher(context, env, **kwargs)
        self.watcher.setup()
        self.engine = env.engine

    def step(self) -> None:
        """Let the next run fall due, and run it."""
        self.clock.advance(max(0.0, self.watcher._next_run - self.clock.now))
        self.watcher.tick()

    def complete(self, limit: int = 200) -> None:
        """Run until a pass is complete (moving the clock past every back-off)."""
        for _ in range(limit):
            self.step()
            summary = self.watcher.last_summary
            finished = summary is not None and (summary.complete or summary.unchanged)
            if finished and not self.watcher.follower.in_pass:
                return
        raise AssertionError(f"no complete pass in {limit} runs: {self.watcher.last_summary}")

    def pages(self) -> list[tuple[str, Any]]:
        """Every page request sent so far (and not yet read)."""
        out = []
        while True:
            try:
                received = self.peer.socket.recv_msg(timeout=0.05)
            except TransportTimeout:
                return out
            out.append((received.msg, received.data))

    def last_serial(self) -> int | None:
        return self.watcher.store.get_last_serial()

    def close(self) -> None:
        self.watcher.teardown()
        self.watcher.close()
        self.peer.close()


@pytest.fixture
def model() -> UpstreamModel:
    return UpstreamModel()


@pytest.fixture
def server(model: UpstreamModel) -> Iterator[UpstreamServer]:
    with UpstreamServer(model) as srv:
        yield srv


@pytest.fixture
def rig(engine: Any, context: Context, server: UpstreamServer, tmp_path: Path) -> Iterator[Rig]:
    env = make_env(engine, tmp_path, url=server.index_url, timeout=timedelta(seconds=5))
    r = Rig(context, env, json_url=server.json_url, batch_size=3)
    yield r
    r.close()


def queued(engine: Any, package: str) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT version, abi FROM build_queue WHERE package = :p"), {"p": package}
        )
        return {(v, a) for v, a in rows}


def version_row(engine: Any, package: str, version: str) -> Any:
    with engine.connect() as conn:
        return versions.get_version(conn, package, version)


def package_row(engine: Any, name: str) -> Any:
    with engine.connect() as conn:
        return packages.get_package(conn, name)


# ---- each event kind, end to end ------------------------------------------------------------


def test_each_event_kind_end_to_end(rig: Rig, model: UpstreamModel) -> None:
    engine = rig.engine
    model.add_project("Foo_Bar", summary="the foo")
    model.add_release("foo-bar", "1.0")
    rig.complete()
    assert rig.last_serial() == model.serial
    pkg = package_row(engine, "foo-bar")
    assert (pkg.display_name, pkg.summary) == ("Foo_Bar", "the foo")
    assert queued(engine, "foo-bar") == {("1.0", ARM), ("1.0", ARM64)}
    assert ("PROJECT", {"package": "foo-bar"}) in rig.pages()

    # A wheel-only release whose wheel serves every target: recorded, never built.
    model.add_release("foo-bar", "2.0", ["foo_bar-2.0-py3-none-any.whl"])
    # A wheel-only release for one platform, whose sdist comes later.
    native = "foo_bar-3.0-cp311-cp311-manylinux_2_17_aarch64.whl"
    model.add_release("foo-bar", "3.0", [native])
    rig.complete()
    row = version_row(engine, "foo-bar", "2.0")
    assert (row.has_sdist, row.upstream_wheel_serves) == (False, True)
    assert not version_row(engine, "foo-bar", "3.0").has_sdist
    assert {v for v, _ in queued(engine, "foo-bar")} == {"1.0"}
    assert rig.pages() == [("PROJECT", {"package": "foo-bar"})]
    model.add_file("foo-bar", "3.0", "foo_bar-3.0.tar.gz")
    rig.complete()
    assert ("3.0", ARM) in queued(engine, "foo-bar")
    assert ("3.0", ARM64) not in queued(engine, "foo-bar")  # upstream's wheel serves it

    # Yank with a reason, then unyank.
    model.yank("foo-bar", "1.0", "broken build")
    rig.complete()
    row = version_row(engine, "foo-bar", "1.0")
    assert (row.yanked, row.yank_reason) == (True, "broken build")
    assert "1.0" not in {v for v, _ in queued(engine, "foo-bar")}
    model.unyank("foo-bar", "1.0")
    rig.complete()
    assert not version_row(engine, "foo-bar", "1.0").yanked

    # A new spelling and a new summary.
    model.set_display_name("foo-bar", "Foo.Bar")
    model.set_summary("foo-bar", "the new foo")
    model.add_release("foo-bar", "3.1")  # the summary is read with a new release
    rig.complete()
    pkg = package_row(engine, "foo-bar")
    assert (pkg.display_name, pkg.summary) == ("Foo.Bar", "the new foo")

    # Quarantine: no builds, the root and the project page are rewritten.
    rig.pages()
    model.set_status("foo-bar", "quarantined", "under review")
    rig.complete()
    pkg = package_row(engine, "foo-bar")
    assert (pkg.status, pkg.status_reason) == ("quarantined", "under review")
    assert queued(engine, "foo-bar") == set()
    assert set(map(repr, rig.pages())) == {
        repr(("PROJECT", {"package": "foo-bar"})),
        repr(("ROOT", None)),
    }
    model.set_status("foo-bar", "active")
    rig.complete()
    assert ("1.0", ARM) in queued(engine, "foo-bar")

    # A release deleted upstream: its rows go and the page writer deletes its files.
    rig.pages()
    model.remove_release("foo-bar", "1.0")
    rig.complete()
    assert version_row(engine, "foo-bar", "1.0") is None
    assert ("DELETE_VERSION", {"package": "foo-bar", "version": "1.0"}) in rig.pages()

    # The project deleted upstream.
    model.remove_project("foo-bar")
    rig.complete()
    assert package_row(engine, "foo-bar").removed_at is not None
    sent = rig.pages()
    assert ("DELETE_PACKAGE", {"package": "foo-bar"}) in sent
    assert ("ROOT", None) in sent
    assert rig.last_serial() == model.serial


# ---- faults -----------------------------------------------------------------------------------


FAULTS = [
    ("/simple/", "429", {"retry_after": 30}),
    ("/simple/p-2/", "500", {}),
    ("/simple/p-2/", "truncate", {}),
    ("/simple/p-2/", "invalid-json", {}),
    ("/simple/p-2/", "stale", {"times": 3}),
    ("/simple/", "500", {}),
]


@pytest.mark.parametrize(("pattern", "kind", "options"), FAULTS)
def test_faults_back_off_and_never_skip(
    rig: Rig, model: UpstreamModel, server: UpstreamServer, pattern: str, kind: str, options: Any
) -> None:
    for i in range(5):
        model.add_project(f"p-{i}")
        model.add_release(f"p-{i}", "1.0")
    rig.complete()
    before = rig.last_serial()
    for i in range(5):
        model.add_release(f"p-{i}", "2.0")
    options = {"times": 2, **options}
    server.add_fault(pattern, kind, **options)
    rig.step()
    # The faulty run records what it could, and neither skips nor moves the serial.
    assert rig.last_serial() == before
    todo = rig.watcher.store.load_todo()
    if pattern == "/simple/":
        assert todo is None  # the pass could not even start
        assert rig.watcher.last_summary.retry_in is not None
    else:
        assert todo is not None and "p-2" in todo[1]
        assert version_row(rig.engine, "p-2", "2.0") is None
    rig.complete()
    assert rig.last_serial() == model.serial
    for i in range(5):
        assert version_row(rig.engine, f"p-{i}", "2.0") is not None
    assert server.faults[0].hits == options["times"]


def test_project_deleted_mid_pass(rig: Rig, model: UpstreamModel, server: UpstreamServer) -> None:
    for name in ("a", "b", "c"):
        model.add_project(name)
        model.add_release(name, "1.0")
    rig.complete()
    model.add_release("b", "2.0")
    model.add_release("c", "2.0")
    # The project is deleted between the root listing and its page.
    server.add_fault("/simple/b/", "delete")
    rig.complete()
    assert package_row(rig.engine, "b").removed_at is not None
    assert version_row(rig.engine, "c", "2.0") is not None
    rig.complete()  # the deletion bumped the serial: one more pass catches up
    assert rig.last_serial() == model.serial
    assert ("DELETE_PACKAGE", {"package": "b"}) in rig.pages()


def test_database_down_backs_off_and_loses_nothing(
    rig: Rig, model: UpstreamModel, caplog: pytest.LogCaptureFixture
) -> None:
    model.add_project("a")
    model.add_release("a", "1.0")
    good = rig.watcher.store.engine
    rig.watcher.store.engine = create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    with caplog.at_level(logging.ERROR, logger="piwheels.upstream_watcher"):
        rig.step()
        rig.step()
    faults = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(faults) == 1  # said once
    assert rig.watcher._db_failures == 2
    rig.watcher.store.engine = good
    rig.complete()
    assert version_row(rig.engine, "a", "1.0") is not None
    assert rig.last_serial() == model.serial


# ---- restart in the middle of a pass ----------------------------------------------------------


def test_restart_mid_pass_resumes_and_finishes(
    engine: Any, context: Context, model: UpstreamModel, server: UpstreamServer, tmp_path: Path
) -> None:
    names = [f"r-{i:02d}" for i in range(40)]
    for name in names:
        model.add_project(name)
        model.add_release(name, "1.0")
    server.add_fault("/simple/r-*/", "slow", times=None, delay=0.02)
    env = make_env(engine, tmp_path, url=server.index_url, poll_interval=timedelta(seconds=0.2))
    peer = ScriptedPeer(context, PULL, protocols.pages, bind=env.addresses["pages"])
    seen: list[str] = []

    def done() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM versions")).scalar_one())

    def drain() -> None:
        while peer.socket.poll(0):
            received = peer.socket.recv_msg()
            if received.msg == "PROJECT":
                seen.append(received.data["package"])

    first = UpstreamWatcher(context, env, budget=0.1, batch_size=4, workers=1)
    first.start()
    wait_for(lambda: (drain(), done())[1] >= 8)
    first.quit()
    first.join(10)
    assert not first.is_alive() and first.failure is None
    stopped_at = done()
    assert 8 <= stopped_at < len(names)
    store = first.store
    assert store.get_last_serial() is None  # the pass is not complete
    _target, left = store.load_todo()
    assert len(left) == len(names) - stopped_at

    second = UpstreamWatcher(context, env, budget=0.1, batch_size=4, workers=2)
    second.start()
    wait_for(lambda: (drain(), store.get_last_serial())[1] == model.serial, timeout=30)
    second.quit()
    second.join(10)
    drain()
    assert second.failure is None
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT package, version FROM versions ORDER BY 1")).all()
        files = conn.execute(text("SELECT count(*) FROM upstream_files")).scalar_one()
    assert rows == [(n, "1.0") for n in names]
    assert files == len(names)
    # Each project was asked for at least once; none was fetched after it was recorded.
    assert set(seen) == set(names)
    fetched = server.paths("/simple/r-*/")
    assert sorted(fetched) == sorted(f"/simple/{n}/" for n in names)
    peer.close()


# ---- ten thousand changed projects ---------------------------------------------------------


def test_a_pass_over_ten_thousand_projects(
    engine: Any, context: Context, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 10_000
    # The stand-in runs in its own process, so it does not share this one's GIL.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream.server", "--generate", str(count)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        index_url = proc.stdout.readline().strip()
        assert index_url.startswith("http://127.0.0.1:")
        env = make_env(engine, tmp_path, url=index_url)
        rig = Rig(context, env, batch_size=500, budget=5.0, workers=8)
        peer_count = 0
        started = time.perf_counter()
        for _ in range(100):
            rig.step()
            peer_count += len(rig.pages())
            if rig.watcher.last_summary.complete:
                break
        elapsed = time.perf_counter() - started
        # The page writer's queue is bounded: what did not fit goes at later ticks.
        for _ in range(100):
            rig.watcher.tick()
            got = len(rig.pages())
            peer_count += got
            if not got and not rig.watcher._outbox:
                break
        rig.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    with engine.connect() as conn:
        versions_count = conn.execute(text("SELECT count(*) FROM versions")).scalar_one()
        queue_count = conn.execute(text("SELECT count(*) FROM build_queue")).scalar_one()
        serial = conn.execute(text("SELECT last_serial FROM upstream_state")).scalar_one()
    assert versions_count == count
    assert queue_count == 2 * count
    assert serial == count
    assert peer_count == count  # one PROJECT request each
    with capsys.disabled():
        print(f"\n10,000 projects through the watcher: {elapsed:.1f}s, {count / elapsed:.0f}/s")


# ---- the local folder upstream ------------------------------------------------------------------


def test_local_folder_upstream(engine: Any, context: Context, tmp_path: Path) -> None:
    folder = tmp_path / "sdists"
    folder.mkdir()
    env = make_env(engine, tmp_path / "www", local_path=folder)
    rig = Rig(context, env, local_settle=0.0)
    try:
        (folder / "foo-1.0.tar.gz").write_bytes(b"an sdist")
        (folder / "foo-2.0.tar.gz").write_bytes(b"another sdist")
        rig.complete()
        assert queued(engine, "foo") == {(v, a) for v in ("1.0", "2.0") for a in (ARM, ARM64)}
        assert ("PROJECT", {"package": "foo"}) in rig.pages()
        (folder / "foo-2.0.tar.gz").unlink()
        rig.complete()
        assert version_row(engine, "foo", "2.0") is None
        assert ("DELETE_VERSION", {"package": "foo", "version": "2.0"}) in rig.pages()
        assert queued(engine, "foo") == {("1.0", ARM), ("1.0", ARM64)}
        assert rig.watcher.upstream_lag == 0
    finally:
        rig.close()


# ---- no upstream, pause --------------------------------------------------------------------


def test_no_upstream_configured_says_so_once(
    engine: Any, context: Context, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = make_env(engine, tmp_path)
    peer = ScriptedPeer(context, PULL, protocols.pages, bind=env.addresses["pages"])
    with caplog.at_level(logging.INFO, logger="piwheels.upstream_watcher"):
        watcher = UpstreamWatcher(context, env)
        watcher.start()
        time.sleep(0.3)
        watcher.quit()
        watcher.join(10)
    assert watcher.failure is None and not watcher.is_alive()
    assert [r.getMessage() for r in caplog.records].count(NO_UPSTREAM) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert watcher.follower is None and watcher.runs == 0
    peer.check(0.1)
    peer.close()


def test_pause_stops_following(
    engine: Any, context: Context, model: UpstreamModel, server: UpstreamServer, tmp_path: Path
) -> None:
    env = make_env(engine, tmp_path, url=server.index_url, poll_interval=timedelta(seconds=0.1))
    peer = ScriptedPeer(context, PULL, protocols.pages, bind=env.addresses["pages"])
    watcher = UpstreamWatcher(context, env)
    watcher.setup()
    try:
        watcher.pause()
        wait_for(lambda: watcher.paused, drive=(watcher,))
        model.add_project("late")
        model.add_release("late", "1.0", [FakeFile("late-1.0.tar.gz")])
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            watcher.poll(0.05)
        assert watcher.runs == 0
        assert package_row(engine, "late") is None
        watcher.resume()
        wait_for(lambda: version_row(engine, "late", "1.0") is not None, drive=(watcher,))
        peer.expect("PROJECT", {"package": "late"})
    finally:
        watcher.teardown()
        watcher.close()
        peer.close()
