"""The build dispatcher on real PostgreSQL with a real file receiver and page writer.

A scripted builder (a DEALER on the builder socket) plays each scenario; the
tasks are driven with ``poll(0)`` by the scripted peers while they wait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from piwheels import protocols
from piwheels.db import abis, packages, queue, versions
from piwheels.db import builds as db_builds
from piwheels.db.files import FileRecord
from piwheels.filetransfer import FileSender
from piwheels.master.build_dispatcher import (
    BuildDispatcher,
    BuilderState,
    BuildInFlight,
    _Finish,
)
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import FileReceiver
from piwheels.master.page_writer import PageWriter
from piwheels.settings import Settings
from piwheels.transport import DEALER, PULL, PUSH, Context, encode, now
from tests.admin.harness import fresh_engine, make_wheel
from tests.db import factories as f
from tests.peer import ScriptedPeer, wait_for

TARGET = "cp311-linux_armv7l"


def stats(disk_free: int = 50 << 30) -> dict[str, Any]:
    return {
        "timestamp": now(),
        "disk_total": 100 << 30,
        "disk_free": disk_free,
        "mem_total": 4 << 30,
        "mem_free": 2 << 30,
        "swap_total": 0,
        "swap_free": 0,
        "load_average": 0.1,
        "cpu_temp": None,
    }


def hello(label: str = "pi-1", **over: Any) -> dict[str, Any]:
    return {
        "protocol": protocols.PROTOCOL_VERSION,
        "label": label,
        "python_version": "3.11.2",
        "abi": "cp311",
        "platform": "linux_armv7l",
        "os_name": "Debian GNU/Linux",
        "os_version": "12",
        "machine": "armv7l",
        "cpu_count": 4,
        "board": None,
        "build_timeout": timedelta(hours=1),
        "sandbox": "bubblewrap",
        "stats": stats(),
        **over,
    }


def file_record(path: Path, *, sha: str | None = None) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "filename": path.name,
        "size": len(data),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "requires_python": None,
        "requires_dist": [],
        "metadata_sha256": None,
        "apt_dependencies": ["libc6"],
        "missing_libraries": [],
        "import_ok": True,
        "import_error": None,
    }


@dataclass
class Rig:
    env: MasterEnv
    engine: Any
    context: Context
    dispatcher: BuildDispatcher
    receiver: FileReceiver
    writer: PageWriter
    status: ScriptedPeer
    actions: ScriptedPeer
    output: Path
    tmp: Path

    @property
    def tasks(self) -> tuple[Any, ...]:
        # The file receiver runs in its own thread, as in the master: the
        # dispatcher waits for its answers.
        return (self.dispatcher, self.writer)

    def builder(self, identity: bytes = b"builder-1") -> ScriptedPeer:
        return ScriptedPeer(
            self.context,
            DEALER,
            reversed(protocols.builder),
            connect=self.env.addresses["builder"],
            drive=self.tasks,
            identity=identity,
        )

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def add(self, package: str, version: str = "1.0") -> None:
        with self.engine.begin() as conn:
            packages.add_package(conn, package)
            versions.add_version(
                conn, package, version, released_at=datetime(2025, 1, 1, tzinfo=UTC)
            )

    def statuses(self) -> list[tuple[str, Any]]:
        out = []
        while self.status.socket.poll(0):
            got = self.status.socket.recv_msg()
            out.append((got.msg, got.data))
        return out

    def send_file(self, token: str, path: Path) -> None:
        sender = FileSender(self.context, self.env.addresses["file"], path, token, give_up=10)
        import threading

        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(sender.run()))
        thread.start()
        wait_for(lambda: not thread.is_alive(), drive=self.tasks, timeout=20)
        assert result and result[0].ok, result


@pytest.fixture
def rig(new_database: Any, tmp_short: Path, tmp_path: Path) -> Iterator[Rig]:
    engine = fresh_engine(new_database)
    output = tmp_path / "www"
    tag = tmp_short.name
    settings = (
        Settings()
        .replace(
            "master",
            output_path=output,
            page_coalesce=timedelta(0),
            builder_timeout=timedelta(seconds=2),
        )
        .replace("keys", curve=False)
        .replace("upstream", build_index="http://127.0.0.1:9/simple/")
    )
    addresses = {
        "builder": f"ipc://{tmp_short}/builder",
        "file": f"ipc://{tmp_short}/file",
        "pages": f"inproc://pages-{tag}",
        "transfers": f"inproc://transfers-{tag}",
        "status_feed": f"inproc://status-{tag}",
        "builder_control": f"inproc://control-{tag}",
    }
    env = MasterEnv(settings=settings, addresses=addresses, output_path=output, engine=engine)
    context = Context()
    status = ScriptedPeer(context, PULL, protocols.status_feed, bind=addresses["status_feed"])
    writer = PageWriter(context, env)
    receiver = FileReceiver(context, env)
    receiver.start()
    dispatcher = BuildDispatcher(context, env)
    actions = ScriptedPeer(
        context, PUSH, reversed(protocols.builder_control), bind=addresses["builder_control"]
    )
    rig = Rig(env, engine, context, dispatcher, receiver, writer, status, actions, output, tmp_path)
    yield rig
    for peer in (status, actions):
        peer.close()
    receiver.quit()
    receiver.join(10)
    for task in (dispatcher, writer):
        task.close()
    context.close()
    engine.dispose()


def greet(rig: Rig, builder: ScriptedPeer, label: str = "pi-1") -> dict[str, Any]:
    builder.send("HELLO", hello(label))
    return builder.expect("ACK").data


def test_hello_registers_builder_and_target(rig: Rig) -> None:
    builder = rig.builder()
    ack = greet(rig, builder)
    assert ack["index_url"] == "http://127.0.0.1:9/simple/"
    assert ack["build_timeout"] == timedelta(hours=1)
    assert rig.sql("SELECT abi FROM abis") == [(TARGET,)]
    assert rig.sql("SELECT label FROM builders") == [("pi-1",)]
    kinds = [m for m, _ in rig.statuses()]
    assert "BUILDER" in kinds
    builder.close()


def test_protocol_mismatch_is_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    builder = rig.builder()
    builder.send("HELLO", hello(protocol=protocols.PROTOCOL_VERSION + 1))
    reply = builder.expect("REFUSED")
    assert "upgrade the builder" in reply.data["reason"]
    assert "refused builder pi-1" in caplog.text
    builder.close()


def _two_greeted(rig: Rig) -> tuple[ScriptedPeer, ScriptedPeer]:
    """Two releases (foo, bar) and two builders (pi-1, pi-2) that have said HELLO."""
    rig.add("foo")
    rig.add("bar")
    first, second = rig.builder(b"builder-1"), rig.builder(b"builder-2")
    greet(rig, first, "pi-1")
    greet(rig, second, "pi-2")
    return first, second


def test_no_work_sleeps(rig: Rig) -> None:
    builder = rig.builder()
    greet(rig, builder)
    builder.send("IDLE", {"stats": stats()})
    assert builder.expect("SLEEP").data["reason"] == "no work"
    builder.close()


def test_routine_builder_states_reach_monitors_as_the_latest_per_round(rig: Rig) -> None:
    first, second = _two_greeted(rig)
    # New builders are announced at once.
    hello_states = [d for m, d in rig.statuses() if m == "BUILDER"]
    assert sorted(d["label"] for d in hello_states) == ["pi-1", "pi-2"]
    rig.dispatcher.publish_changed()
    assert rig.statuses() == []  # nothing changed since
    first.send("IDLE", {"stats": stats()})
    build = first.expect("BUILD").data
    first.send("BUILT", {**failed_result(build["build_id"])})
    first.expect("DONE")
    second.send("IDLE", {"stats": stats()})
    second.expect("BUILD")
    rig.dispatcher.publish_changed()
    # pi-1 went building -> idle, pi-2 idle -> building: one message each, the latest state.
    states = {d["label"]: d["state"] for m, d in rig.statuses() if m == "BUILDER"}
    assert states == {"pi-1": "idle", "pi-2": "building"}
    first.close()
    second.close()


def failed_result(build_id: int) -> dict[str, Any]:
    return {
        "build_id": build_id,
        "status": False,
        "duration": timedelta(seconds=1),
        "failure_class": "compile_error",
        "log": "error\n",
        "files": [],
        "environment": {"pip": "23.0.1"},
    }


def test_successful_build_end_to_end(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    with rig.engine.connect() as conn:
        assert abis.get_abi(conn, TARGET) is not None
    builder.send("IDLE", {"stats": stats()})
    build = builder.expect("BUILD").data
    assert (build["package"], build["version"]) == ("foo", "1.0")
    builder.send("BUSY", {"build_id": build["build_id"], "stats": stats()})
    builder.expect("CONT")
    wheel = make_wheel(rig.tmp / "out", "foo", "1.0", "cp311-cp311-linux_armv7l")
    builder.send(
        "BUILT",
        {
            "build_id": build["build_id"],
            "status": True,
            "duration": timedelta(seconds=42),
            "failure_class": None,
            "log": "building foo\nok\n",
            "files": [file_record(wheel)],
            "environment": {"pip": "23.0.1"},
        },
    )
    send = builder.expect("SEND").data
    assert send["filename"] == wheel.name
    rig.send_file(send["transfer"], wheel)
    builder.send("SENT", {"build_id": build["build_id"], "filename": wheel.name})
    builder.expect("DONE", {"build_id": build["build_id"]})
    rows = rig.sql("SELECT status, duration FROM builds WHERE build_id = :b", b=build["build_id"])
    assert rows == [("success", timedelta(seconds=42))]
    published = rig.output / "simple" / "foo" / wheel.name
    assert published.read_bytes() == wheel.read_bytes()
    assert (rig.output / "simple" / "foo" / (wheel.name + ".metadata")).exists()
    files = rig.sql("SELECT filename, sha256 FROM files")
    assert files == [(wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest())]
    deps = rig.sql("SELECT tool, requirement FROM dependencies")
    assert ("apt", "libc6") in deps
    wait_for(lambda: (rig.output / "simple" / "foo" / "index.html").exists(), drive=rig.tasks)
    assert wheel.name in (rig.output / "simple" / "foo" / "index.html").read_text()
    wait_for(lambda: list(rig.output.glob("logs/*/*/*.txt.gz")) != [], drive=rig.tasks)
    summary = [d for m, d in rig.statuses() if m == "BUILD"]
    assert summary and summary[0]["status"] == "success"
    builder.close()


def _start(rig: Rig, builder: ScriptedPeer) -> dict[str, Any]:
    builder.send("IDLE", {"stats": stats()})
    return builder.expect("BUILD").data


def test_failed_build_is_recorded_with_its_log(rig: Rig) -> None:
    rig.add("broken")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    builder.send(
        "BUILT",
        {
            "build_id": build["build_id"],
            "status": False,
            "duration": timedelta(seconds=3),
            "failure_class": "compile_error",
            "log": "error: command 'gcc' failed\n",
            "files": [],
            "environment": {},
        },
    )
    builder.expect("DONE")
    assert rig.sql("SELECT status, failure_class FROM builds") == [("failed", "compile_error")]
    wait_for(lambda: list(rig.output.glob("logs/*/*/*.txt.gz")) != [], drive=rig.tasks)
    # A compile failure is not retried by itself.
    builder.send("IDLE", {"stats": stats()})
    assert builder.expect("SLEEP").data["reason"] == "no work"
    builder.close()


def test_wheel_of_another_package_is_refused(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    wheel = make_wheel(rig.tmp / "out", "evil", "1.0", "cp311-cp311-linux_armv7l")
    builder.send(
        "BUILT",
        {
            "build_id": build["build_id"],
            "status": True,
            "duration": timedelta(seconds=1),
            "failure_class": None,
            "log": "",
            "files": [file_record(wheel)],
            "environment": {},
        },
    )
    builder.expect("DONE")
    assert rig.sql("SELECT status, failure_class FROM builds") == [("failed", "invalid_wheel")]
    assert not (rig.output / "simple" / "evil").exists()
    builder.close()


def test_lying_hash_publishes_nothing(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    wheel = make_wheel(rig.tmp / "out", "foo", "1.0", "cp311-cp311-linux_armv7l")
    builder.send(
        "BUILT",
        {
            "build_id": build["build_id"],
            "status": True,
            "duration": timedelta(seconds=1),
            "failure_class": None,
            "log": "",
            "files": [file_record(wheel, sha="0" * 64)],
            "environment": {},
        },
    )
    send = builder.expect("SEND").data
    rig.send_file(send["transfer"], wheel)
    builder.send("SENT", {"build_id": build["build_id"], "filename": wheel.name})
    builder.expect("DONE")
    assert rig.sql("SELECT status, failure_class FROM builds") == [("failed", "invalid_wheel")]
    assert not list((rig.output / "simple").glob("foo/*.whl"))
    assert not list(rig.output.glob(".transfers/*/*"))
    builder.close()


def test_pause_and_resume(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    rig.dispatcher.pause()
    wait_for(lambda: rig.dispatcher.paused, drive=rig.tasks)
    builder.send("IDLE", {"stats": stats()})
    assert builder.expect("SLEEP").data["reason"] == "paused"
    rig.dispatcher.resume()
    wait_for(lambda: not rig.dispatcher.paused, drive=rig.tasks)
    builder.send("IDLE", {"stats": stats()})
    builder.expect("BUILD")
    builder.close()


def test_sleep_wake_one_builder(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    builder_id = next(iter(rig.dispatcher.snapshot()))
    rig.actions.send("SLEEP", {"builder_id": builder_id})
    wait_for(lambda: rig.dispatcher.snapshot()[builder_id].asleep, drive=rig.tasks)
    builder.send("IDLE", {"stats": stats()})
    assert builder.expect("SLEEP").data["reason"] == "asleep"
    rig.actions.send("WAKE", {"builder_id": None})
    wait_for(lambda: not rig.dispatcher.snapshot()[builder_id].asleep, drive=rig.tasks)
    builder.send("IDLE", {"stats": stats()})
    builder.expect("BUILD")
    builder.close()


def test_skip_aborts_the_current_build(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    rig.actions.send("SKIP", {"builder_id": None})
    wait_for(lambda: next(iter(rig.dispatcher.snapshot().values())).skip, drive=rig.tasks)
    builder.send("BUSY", {"build_id": build["build_id"], "stats": stats()})
    assert builder.expect("ABORT").data["build_id"] == build["build_id"]
    assert rig.sql("SELECT status FROM builds") == [("failed",)]
    builder.send("IDLE", {"stats": stats()})
    assert builder.expect("SLEEP").data["reason"] == "no work"
    builder.close()


def test_kill_tells_the_builder_to_exit(rig: Rig) -> None:
    builder = rig.builder()
    greet(rig, builder)
    rig.actions.send("KILL", {"builder_id": None})
    wait_for(lambda: next(iter(rig.dispatcher.snapshot().values())).kill, drive=rig.tasks)
    builder.send("IDLE", {"stats": stats()})
    assert "killed" in builder.expect("DIE").data["reason"]
    assert rig.dispatcher.snapshot() == {}
    builder.close()


def test_low_disk_builder_gets_no_work(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    builder.send("IDLE", {"stats": stats(disk_free=1 << 20)})
    assert builder.expect("SLEEP").data["reason"] == "low disk"
    builder.close()


def test_silent_builder_is_dropped_and_its_build_requeued(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    _start(rig, builder)
    wait_for(lambda: rig.dispatcher.snapshot() == {}, drive=rig.tasks, timeout=10)
    assert rig.sql("SELECT status, failure_class FROM builds") == [("failed", "builder_lost")]
    gone = [d for m, d in rig.statuses() if m == "GONE"]
    assert gone and "silent" in gone[0]["reason"]
    # builder_lost is transient: the release is queued again (after its backoff).
    assert rig.sql("SELECT package FROM build_queue") == [("foo",)]
    builder.close()


def test_second_builder_never_gets_the_same_release(rig: Rig) -> None:
    rig.add("foo")
    one, two = rig.builder(b"b1"), rig.builder(b"b2")
    greet(rig, one, "pi-1")
    greet(rig, two, "pi-2")
    _start(rig, one)
    two.send("IDLE", {"stats": stats()})
    assert two.expect("SLEEP").data["reason"] == "no work"
    one.close()
    two.close()


def test_rogue_builder_is_refused_and_others_carry_on(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    good, rogue = rig.builder(b"good"), rig.builder(b"rogue")
    greet(rig, good, "pi-good")
    greet(rig, rogue, "pi-rogue")
    for frame in (b"\x00garbage", encode("BUILT", {"build_id": "x"}), encode("ACK", None)):
        rogue.socket.send_raw([frame])
        assert rogue.expect("DIE").data["reason"].startswith("protocol error")
    assert "(from rogue)" in caplog.text
    good.send("IDLE", {"stats": stats()})
    good.expect("SLEEP")
    rogue.close()
    good.close()


def test_unknown_builder_must_say_hello(rig: Rig) -> None:
    stranger = rig.builder(b"stranger")
    stranger.send("IDLE", {"stats": stats()})
    assert "HELLO" in stranger.expect("DIE").data["reason"]
    stranger.close()


def _built(build: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "build_id": build["build_id"],
        "status": True,
        "duration": timedelta(seconds=2),
        "failure_class": None,
        "log": "built\n",
        "files": files,
        "environment": {},
    }


def test_builders_asking_together_get_distinct_releases(rig: Rig) -> None:
    """IDLEs read in one burst are answered from one transaction, never the same release."""
    rig.add("foo")
    rig.add("bar")
    peers = [rig.builder(f"b{i}".encode()) for i in range(3)]
    for i, peer in enumerate(peers):
        greet(rig, peer, f"pi-{i}")
    for peer in peers:  # all queued before the dispatcher reads any
        peer.send("IDLE", {"stats": stats()})
    replies = [peer.recv() for peer in peers]
    builds = sorted(r.data["package"] for r in replies if r.msg == "BUILD")
    assert builds == ["bar", "foo"]
    assert [r.data["reason"] for r in replies if r.msg == "SLEEP"] == ["no work"]
    rows = rig.sql("SELECT package, status FROM builds ORDER BY package")
    assert rows == [("bar", "building"), ("foo", "building")]
    for peer in peers:
        peer.close()


def test_build_publishing_when_its_builder_leaves_is_still_recorded(rig: Rig) -> None:
    """Verified files on their way into the index are recorded, not lost with the builder."""
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    wheel = make_wheel(rig.tmp / "out", "foo", "1.0", "cp311-cp311-linux_armv7l")
    builder.send("BUILT", _built(build, [file_record(wheel)]))
    send = builder.expect("SEND").data
    rig.send_file(send["transfer"], wheel)
    builder.send("SENT", {"build_id": build["build_id"], "filename": wheel.name})
    builder.send("BYE", {"reason": "shutting down"})
    wait_for(
        lambda: rig.sql("SELECT status FROM builds") == [("success",)], drive=rig.tasks, timeout=20
    )
    assert rig.dispatcher.snapshot() == {}
    assert (rig.output / "simple" / "foo" / wheel.name).read_bytes() == wheel.read_bytes()
    assert rig.sql("SELECT filename FROM files") == [(wheel.name,)]
    builder.close()


def test_two_wheels_one_lying_publishes_neither(rig: Rig) -> None:
    """Each wheel of a build is verified before any is published."""
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    good = make_wheel(rig.tmp / "a", "foo", "1.0", "cp311-cp311-linux_armv7l")
    bad = make_wheel(rig.tmp / "b", "foo", "1.0", "cp311-abi3-linux_armv7l")
    builder.send("BUILT", _built(build, [file_record(good), file_record(bad, sha="0" * 64)]))
    for wheel in (good, bad):
        send = builder.expect("SEND").data
        assert send["filename"] == wheel.name
        rig.send_file(send["transfer"], wheel)
        builder.send("SENT", {"build_id": build["build_id"], "filename": wheel.name})
    builder.expect("DONE")
    assert rig.sql("SELECT status, failure_class FROM builds") == [("failed", "invalid_wheel")]
    assert not list((rig.output / "simple").glob("foo/*.whl"))
    assert rig.sql("SELECT count(*) FROM files") == [(0,)]
    wait_for(lambda: not list(rig.output.glob(".transfers/*/*")), drive=rig.tasks, timeout=10)
    builder.close()


def test_two_good_wheels_are_both_published(rig: Rig) -> None:
    rig.add("foo")
    builder = rig.builder()
    greet(rig, builder)
    build = _start(rig, builder)
    wheels = [
        make_wheel(rig.tmp / "a", "foo", "1.0", "cp311-cp311-linux_armv7l"),
        make_wheel(rig.tmp / "b", "foo", "1.0", "cp311-abi3-linux_armv7l"),
    ]
    builder.send("BUILT", _built(build, [file_record(w) for w in wheels]))
    for wheel in wheels:
        send = builder.expect("SEND").data
        rig.send_file(send["transfer"], wheel)
        builder.send("SENT", {"build_id": build["build_id"], "filename": wheel.name})
    builder.expect("DONE")
    assert rig.sql("SELECT status FROM builds") == [("success",)]
    assert sorted(n for (n,) in rig.sql("SELECT filename FROM files")) == sorted(
        w.name for w in wheels
    )
    for wheel in wheels:
        assert (rig.output / "simple" / "foo" / wheel.name).read_bytes() == wheel.read_bytes()
    builder.close()


def _kill_dispatcher_connection(rig: Rig) -> int:
    """Terminate the server process behind the dispatcher's kept connection."""
    conn = rig.dispatcher._conn
    assert conn is not None, "the dispatcher keeps a connection after its first transaction"
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    pid = int(dbapi.info.backend_pid)
    assert rig.sql("SELECT pg_terminate_backend(:p)", p=pid) == [(True,)]
    wait_for(
        lambda: rig.sql("SELECT count(*) FROM pg_stat_activity WHERE pid = :p", p=pid) == [(0,)],
        timeout=10,
    )
    return pid


@pytest.mark.parametrize("ping_after", [0.0, 3600.0], ids=["pinged-when-idle", "retried"])
def test_broken_kept_connection_is_replaced(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, ping_after: float
) -> None:
    """The dispatcher's own connection dies (e.g. a server restart): builds still go out.

    Pinged after it sat idle, or (used too recently for a ping) the failed
    transaction is done again on a new connection; nothing is lost or doubled.
    """
    from piwheels.master import build_dispatcher as bd

    monkeypatch.setattr(bd, "PING_AFTER", ping_after)
    rig.add("foo")
    rig.add("bar")
    builder = rig.builder()
    greet(rig, builder)
    first = _start(rig, builder)
    old = _kill_dispatcher_connection(rig)
    builder.send("BUILT", failed_result(first["build_id"]))
    builder.expect("DONE")
    second = _start(rig, builder)
    assert {first["package"], second["package"]} == {"foo", "bar"}
    rows = rig.sql("SELECT package, status FROM builds ORDER BY build_id")
    assert rows == [(first["package"], "failed"), (second["package"], "building")]
    new = rig.dispatcher._conn
    assert new is not None and new.connection.dbapi_connection.info.backend_pid != old
    builder.close()


def test_build_started_by_a_commit_whose_answer_was_lost_goes_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies after a COMMIT landed but before its answer: the retry starts
    another build, and the one the lost COMMIT started (told to no builder) is given
    back after the builder timeout instead of staying "building" for ever."""
    from sqlalchemy.exc import DBAPIError

    rig.add("foo")
    rig.add("bar")
    builder = rig.builder()
    greet(rig, builder)
    dispatcher = rig.dispatcher
    real_write = dispatcher._write
    calls: list[int] = []

    def commit_then_lose_answer(*args: Any) -> Any:
        started = real_write(*args)
        if not calls and started:
            calls.append(1)
            raise DBAPIError(
                "COMMIT", {}, Exception("server closed the connection"), connection_invalidated=True
            )
        return started

    monkeypatch.setattr(dispatcher, "_write", commit_then_lose_answer)
    builder.send("IDLE", {"stats": stats()})
    told = builder.expect("BUILD").data
    assert calls == [1]
    rows = rig.sql("SELECT package, status FROM builds ORDER BY build_id")
    assert sorted(rows) == [("bar", "building"), ("foo", "building")]
    lost = next(p for p, _ in rows if p != told["package"])

    def given_back() -> bool:
        query = "SELECT status, failure_class FROM builds WHERE package = :p"
        return rig.sql(query, p=lost) == [("failed", "builder_lost")]

    # The builder keeps reporting (the timeout drops silent builders, not busy ones).
    deadline = time.monotonic() + 15
    while not given_back():
        assert time.monotonic() < deadline, "the build of the lost COMMIT was never given back"
        builder.send("BUSY", {"build_id": told["build_id"], "stats": stats()})
        builder.expect("CONT")
        pause = time.monotonic() + 0.3
        wait_for(lambda until=pause: time.monotonic() > until, drive=rig.tasks)
    assert rig.sql("SELECT status FROM builds WHERE package = :p", p=told["package"]) == [
        ("building",)
    ]
    builder.close()


def test_finish_and_start_share_one_transaction(rig: Rig) -> None:
    """A build recorded and a build started in one burst: one COMMIT, no savepoints."""
    from sqlalchemy import event

    first, second = _two_greeted(rig)
    build = _start(rig, first)
    statements: list[str] = []
    commits: list[int] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    def commit(conn: Any) -> None:
        commits.append(1)

    dispatcher = rig.dispatcher
    # Read one message at a time (no flush), as one burst would: the outcome and the ask wait.
    first.send("BUILT", failed_result(build["build_id"]))
    assert dispatcher.builder.poll(10)
    dispatcher.dispatch(dispatcher.builder)
    second.send("IDLE", {"stats": stats()})
    assert dispatcher.builder.poll(10)
    dispatcher.dispatch(dispatcher.builder)
    assert len(dispatcher.finishing) == 1 and len(dispatcher.wanting) == 1
    event.listen(rig.engine, "before_cursor_execute", seen)
    event.listen(rig.engine, "commit", commit)
    try:
        dispatcher.flush()
    finally:
        event.remove(rig.engine, "before_cursor_execute", seen)
        event.remove(rig.engine, "commit", commit)
    first.expect("DONE")
    other = second.expect("BUILD").data
    assert other["package"] != build["package"]
    assert "SAVEPOINT" not in statements and "RELEASE" not in statements
    assert len(commits) == 1, statements
    assert rig.sql("SELECT status FROM builds ORDER BY build_id") == [("failed",), ("building",)]
    first.close()
    second.close()


def test_handlers_return_when_the_other_handler_drained_their_socket(rig: Rig) -> None:
    """Each handler reads the other socket too; called on an emptied socket, it must not block.

    (Both sockets ready in one poll round: the first handler drains both, then the
    second is called for a socket that has nothing left.)
    """
    import threading

    for handler in (rig.dispatcher.handle_transfers, rig.dispatcher.handle_builder):
        thread = threading.Thread(target=handler, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"{handler.__name__} blocked on an empty socket"


# -- one queue update for a flush that finishes and starts builds ------------------------


def _flight(build_id: int, target: str = TARGET) -> BuildInFlight:
    return BuildInFlight(
        build_id=build_id,
        package=f"p{build_id}",
        version="1.0",
        started_at=now(),
        timeout=timedelta(hours=1),
        target=target,
    )


def _asker(builder_id: int, target: str = TARGET) -> BuilderState:
    return BuilderState(
        peer=(f"b{builder_id}".encode(),),
        builder_id=builder_id,
        label=f"pi-{builder_id}",
        abi=target.split("-", 1)[0],
        platform=target.split("-", 1)[1],
        target=target,
        os_name="Debian GNU/Linux",
        os_version="12",
        first_seen=now(),
        last_seen=now(),
    )


def _finish(
    build: BuildInFlight, records: list[FileRecord], status: str = "success"
) -> tuple[_Finish, db_builds.BuildResult]:
    failure = None if status == "success" else "compile_error"
    item = _Finish(build, status, failure, "log\n", timedelta(seconds=5), records)
    result = db_builds.BuildResult(
        build.build_id, status, item.duration, failure, tuple(records), f"/logs/{build.build_id}"
    )
    return item, result


T312 = "cp312-linux_armv7l"


def _merge(
    finished: list[tuple[_Finish, db_builds.BuildResult]], asking: list[BuilderState]
) -> bool:
    return BuildDispatcher._one_queue_update(
        [i for i, _ in finished], [r for _, r in finished], asking
    )


def test_one_queue_update_only_for_successes_with_files_of_one_target_asked_for() -> None:
    """The merged update is chosen only when the queue read could not see a finished release."""
    wheel = f.wheel("p1", "1.0", "cp311-cp311-linux_armv7l")
    ok = [_finish(_flight(1), [wheel]), _finish(_flight(2), [wheel])]
    askers = [_asker(1), _asker(2)]
    assert _merge(ok, askers)
    assert _merge(ok[:1], askers[:1])
    # A failure (its release may come back into its target's queue).
    assert not _merge([ok[0], _finish(_flight(3), [], "failed")], askers)
    # A success without files (its release is queued again for its target).
    assert not _merge([ok[0], _finish(_flight(3), [])], askers)
    # Builds of two targets finished, or a builder of another target asking.
    assert not _merge([ok[0], _finish(_flight(3, T312), [wheel])], askers)
    assert not _merge(ok, [*askers, _asker(3, T312)])
    assert not _merge(ok, [_asker(3, T312)])
    # Nothing finished, or nobody asking.
    assert not _merge([], askers)
    assert not _merge(ok, [])


@dataclass
class _Flush:
    """One flush to replay on fresh databases: what ends, who asks."""

    targets: list[tuple[str, str]]
    # Release -> the wheel tags its (successful) build for TARGET produces.
    finished: dict[str, str]
    # Releases being built that stay so (package -> target).
    busy: dict[str, str]
    asking: int


_FLUSHES = {
    # One target, more builders asking than releases left: every queued one goes out.
    "one-target": _Flush(
        targets=[("cp311", "linux_armv7l")],
        finished={
            "a": "cp311-cp311-linux_armv7l",
            "b": "cp311-cp311-linux_armv7l",
            "c": "cp311-cp311-linux_armv7l",
        },
        busy={"d": TARGET},
        asking=7,
    ),
    # A second target: an abi3 wheel and a pure one serve it too, a cp311 wheel does not
    # (its release comes back into cp312's queue); another release is being built for it.
    "abi3-and-pure": _Flush(
        targets=[("cp311", "linux_armv7l"), ("cp312", "linux_armv7l")],
        finished={
            "a": "cp311-abi3-linux_armv7l",
            "b": "cp311-cp311-linux_armv7l",
            "c": "py3-none-any",
        },
        busy={"d": T312},
        asking=3,
    ),
}


def _seed(
    engine: Any, flush: _Flush
) -> tuple[list[_Finish], list[db_builds.BuildResult], list[BuilderState]]:
    """Releases a..h (and e 2.0, g 0.9) queued, some being built; returns the flush's
    finished builds with their files and its builders asking (all of TARGET)."""
    with engine.begin() as conn:
        for tag, platform in flush.targets:
            f.abi(conn, tag, platform)
        for i, name in enumerate("abcdefgh"):
            f.version(conn, name, "1.0", days_ago=i + 1)
        f.version(conn, "e", "2.0", days_ago=0)
        f.version(conn, "g", "0.9", days_ago=30)
        # A past permanent failure keeps g 0.9 out of TARGET's queue (not cp312's).
        f.build(conn, "g", "0.9", TARGET, failure="compile_error")
        for package, target in flush.busy.items():
            db_builds.start_build(conn, package, "1.0", target, f"busy-{package}")

        def builder(i: int) -> int:
            return db_builds.register_builder(conn, f"pi-{i}", abi=TARGET)

        items, results = [], []
        for i, (package, tags) in enumerate(flush.finished.items()):
            build_id = db_builds.start_build(conn, package, "1.0", TARGET, builder(i))
            name = f"{package}-1.0-{tags}.whl"
            flight = BuildInFlight(
                build_id=build_id,
                package=package,
                version="1.0",
                started_at=now(),
                timeout=timedelta(hours=1),
                target=TARGET,
            )
            # No tags: a success without files.
            records = [FileRecord(filename=name, size=len(name), sha256=f.sha(name))]
            item, result = _finish(flight, records if tags else [])
            items.append(item)
            results.append(result)
        # The builders that just finished ask again, with others idle until now.
        asking = [_asker(builder(i)) for i in range(flush.asking)]
    return items, results, asking


def _db_state(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "builds": "SELECT build_id, package, version, abi, builder_id, status, attempt, "
        "failure_class FROM builds ORDER BY build_id",
        "queue": "SELECT * FROM build_queue ORDER BY abi, package, version",
        "files": "SELECT filename, build_id FROM files ORDER BY filename",
    }
    with engine.connect() as conn:
        return {k: [tuple(r) for r in conn.execute(text(q))] for k, q in queries.items()}


def _refreshed_queue(engine: Any) -> list[tuple[Any, ...]]:
    """The queue a full recomputation gives (rolled back)."""
    with engine.connect() as conn, conn.begin() as trans:
        queue.refresh(conn, rebuild=False)
        rows = [tuple(r) for r in conn.execute(text("SELECT * FROM build_queue ORDER BY 1, 2, 3"))]
        trans.rollback()
    return rows


def _replay(rig: Rig, engine: Any, flush: _Flush, *, merge: bool | None = None) -> Any:
    """Seed *engine*'s database and write *flush* through the dispatcher's ``_write``:
    merged or not as it decides (None) or as forced; returns (its decision, started,
    state before, state after)."""
    dispatcher = rig.dispatcher
    items, results, asking = _seed(engine, flush)
    before = _db_state(engine)
    dispatcher._drop_conn()
    dispatcher.env = dataclasses.replace(rig.env, engine=engine)
    real = dispatcher._one_queue_update
    chose = real(items, results, asking)
    try:
        if merge is not None:
            dispatcher._one_queue_update = lambda *args: merge  # type: ignore[method-assign]
        started = dispatcher._write(items, results, asking)
    finally:
        dispatcher._one_queue_update = real  # type: ignore[method-assign]
        dispatcher._drop_conn()
        dispatcher.env = rig.env
    given = [(s.label, q.package, q.version, b) for s, q, b in started]
    return chose, given, before, _db_state(engine)


@pytest.mark.parametrize("name", list(_FLUSHES))
def test_one_queue_update_gives_what_separate_updates_give(
    rig: Rig, new_database: Any, name: str
) -> None:
    """The same flush on two identical databases, merged (one queue update after the
    builds start) and separate (one update per step): the same builds start and the same
    queue is left, the one a full recomputation gives; nothing is handed out twice."""
    flush = _FLUSHES[name]
    merged_engine, separate_engine = rig.engine, fresh_engine(new_database)
    try:
        merged = _replay(rig, merged_engine, flush)
        separate = _replay(rig, separate_engine, flush, merge=False)
    finally:
        separate_engine.dispose()
    assert merged[0], "the flush must take the merged path"
    outcomes = {"merged": merged[1], "separate": separate[1]}
    states = {"merged": merged[2:], "separate": separate[2:]}
    assert states["merged"][0] == states["separate"][0]  # two identical databases
    assert outcomes["merged"] == outcomes["separate"]
    assert states["merged"][1] == states["separate"][1]
    after = states["merged"][1]
    assert after["queue"] == _refreshed_queue(merged_engine)
    # Nothing handed out twice: not a release being built or just built, each at most once.
    given = [(p, v) for _, p, v, _ in outcomes["merged"]]
    assert len(given) == len(set(given))
    assert not set(given) & {(p, "1.0") for p in [*flush.finished, *flush.busy]}
    with merged_engine.connect() as conn:
        left = queue.next_builds(conn, TARGET, 100)
    assert not {(q.package, q.version) for q in left} & {*given, ("g", "0.9")}
    building = {(p, v) for _, p, v, _, _, st, _, _ in after["builds"] if st == "building"}
    assert building == set(given) | {(p, "1.0") for p in flush.busy}
    assert not {(p, v) for _, p, v, *_ in after["queue"]} & building
    if name == "one-target":
        # Seven builders, five releases left (e 1.0, e 2.0, f, g, h): all handed out.
        assert sorted(given) == [
            ("e", "1.0"),
            ("e", "2.0"),
            ("f", "1.0"),
            ("g", "1.0"),
            ("h", "1.0"),
        ]
        assert after["queue"] == []
    else:
        # cp312 gets b back (a cp311 wheel does not serve it), not a (abi3) nor c (pure).
        assert given == [("e", "2.0"), ("e", "1.0"), ("f", "1.0")]  # newest first
        back = {(p, v) for a, p, v, *_ in after["queue"] if a == T312}
        assert ("b", "1.0") in back and not back & {("a", "1.0"), ("c", "1.0")}
        assert ("g", "0.9") in back


def test_a_success_without_files_keeps_the_updates_separate(rig: Rig, new_database: Any) -> None:
    """Why the condition matters: a success without files puts its release back in its
    target's queue, so the builders asking in the same flush may get it.  The dispatcher
    keeps the updates separate and hands it out; a forced merge would not see it."""
    flush = _Flush(targets=[("cp311", "linux_armv7l")], finished={"a": ""}, busy={}, asking=3)
    forced_engine = fresh_engine(new_database)
    try:
        chose, given, _, after = _replay(rig, rig.engine, flush)
        _, forced, _, _ = _replay(rig, forced_engine, flush, merge=True)
    finally:
        forced_engine.dispose()
    assert not chose
    assert after["queue"] == _refreshed_queue(rig.engine)
    # Newest first: e 2.0, then a (back in the queue), b, c.
    assert [(p, v) for _, p, v, _ in given] == [("e", "2.0"), ("a", "1.0"), ("b", "1.0")]
    assert [(p, v) for _, p, v, _ in forced] == [("e", "2.0"), ("b", "1.0"), ("c", "1.0")]
