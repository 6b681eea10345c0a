"""The admin gateway on real PostgreSQL, with a real page writer and file receiver.

The tests drive the tasks with ``poll(0)`` from a scripted peer that plays the
admin tool (a DEALER on the ipc admin socket).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from piwheels import protocols
from piwheels.db import abis, builds, packages, queue, versions
from piwheels.filetransfer import FileSender
from piwheels.master.admin_gateway import AdminGateway
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import FileReceiver
from piwheels.master.page_writer import PageWriter
from piwheels.transport import DEALER, Context, Received, encode
from piwheels.web import layout
from tests.admin.harness import fresh_engine, make_env, make_wheel, publish_build
from tests.peer import ScriptedPeer, wait_for

TARGET = "cp311-linux_armv7l"


@dataclass
class Rig:
    env: MasterEnv
    engine: Any
    context: Context
    gateway: AdminGateway
    writer: PageWriter
    receiver: FileReceiver
    cli: ScriptedPeer
    output: Path
    progress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tasks(self) -> tuple[Any, ...]:
        return (self.gateway, self.writer, self.receiver)

    def ask(self, msg: str, data: Any = None) -> Received:
        """Send a request; collect PROGRESS; return the final OK or ERROR."""
        self.cli.send(msg, data)
        return self.final()

    def final(self, timeout: float = 10.0) -> Received:
        self.progress.clear()
        while True:
            reply = self.cli.recv(timeout)
            if reply.msg == "PROGRESS":
                self.progress.append(reply.data)
                continue
            return reply

    def settle(self) -> None:
        """Let the page writer catch up with what was asked of it."""
        for _ in range(20):
            for task in self.tasks:
                task.poll(0.01)
        self.writer.flush(force=True)

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))


@pytest.fixture
def rig(new_database: Any, tmp_short: Path, tmp_path: Path) -> Iterator[Rig]:
    engine = fresh_engine(new_database)
    with engine.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
    output = tmp_path / "www"
    env = make_env(engine, output, tmp_short)
    context = Context()
    writer = PageWriter(context, env)
    receiver = FileReceiver(context, env)
    gateway = AdminGateway(context, env, removal_timeout=5.0, import_timeout=10.0)
    cli = ScriptedPeer(
        context,
        DEALER,
        reversed(protocols.admin),
        connect=env.addresses["admin"],
        drive=(gateway, writer, receiver),
    )
    yield Rig(env, engine, context, gateway, writer, receiver, cli, output)
    cli.close()
    for task in (gateway, receiver, writer):
        task.close()
    context.close()
    engine.dispose()


def ok(reply: Received, code: str) -> str:
    assert reply.msg == "OK", reply
    assert reply.data["code"] == code, reply.data
    return reply.data["message"]


def err(reply: Received, code: str) -> str:
    assert reply.msg == "ERROR", reply
    assert reply.data["code"] == code, reply.data
    return reply.data["message"]


def add(rig: Rig, package: str, *vers: str) -> None:
    with rig.engine.begin() as conn:
        packages.add_package(conn, package)
        for v in vers:
            versions.add_version(conn, package, v, released_at=datetime(2025, 1, 1, tzinfo=UTC))


# -- piw-add requests -----------------------------------------------------------------


def test_add_package_is_idempotent_and_keeps_aliases(rig: Rig) -> None:
    assert "foo-bar" in ok(rig.ask("ADD_PACKAGE", {"package": "Foo_Bar"}), "NEWPKG")
    ok(rig.ask("ADD_PACKAGE", {"package": "Foo_Bar"}), "UNCHANGED")
    msg = ok(
        rig.ask(
            "ADD_PACKAGE", {"package": "foo-bar", "summary": "A thing", "aliases": ["FOO.bar"]}
        ),
        "UPDPKG",
    )
    assert "summary" in msg and "FOO.bar" in msg
    ok(rig.ask("ADD_PACKAGE", {"package": "foo-bar", "aliases": ["FOO.bar"]}), "UNCHANGED")
    with rig.engine.connect() as conn:
        pkg = packages.get_package(conn, "foo-bar")
        assert pkg is not None and pkg.summary == "A thing"
        assert pkg.display_name == "Foo_Bar"  # an operator's alias does not rename it
        assert set(packages.get_aliases(conn, "foo-bar")) == {"Foo_Bar", "foo-bar", "FOO.bar"}


def test_add_package_refuses_bad_names(rig: Rig) -> None:
    assert "foo bar" in err(rig.ask("ADD_PACKAGE", {"package": "foo bar"}), "INVALID")
    msg = err(rig.ask("ADD_PACKAGE", {"package": "foo", "aliases": ["bar"]}), "INVALID")
    assert "bar" in msg and "foo" in msg
    # Over-long names never pass the protocol check; sent raw, they get the reason back.
    rig.cli.socket.send_raw([encode("ADD_PACKAGE", {"package": "x" * 201})])
    assert "longer than 200" in err(rig.final(), "INVALID")
    rig.cli.socket.send_raw([b"\xff garbage"])
    assert "CBOR" in err(rig.final(), "INVALID")
    assert rig.sql("SELECT name FROM packages") == []


def test_add_version(rig: Rig) -> None:
    assert "no package foo" in err(
        rig.ask("ADD_VERSION", {"package": "foo", "version": "1.0"}), "NOPKG"
    )
    ok(rig.ask("ADD_PACKAGE", {"package": "foo"}), "NEWPKG")
    ok(rig.ask("ADD_VERSION", {"package": "foo", "version": "1.0"}), "NEWVER")
    ok(rig.ask("ADD_VERSION", {"package": "foo", "version": "1.0"}), "UNCHANGED")
    released = datetime(2024, 5, 6, tzinfo=UTC)
    ok(
        rig.ask(
            "ADD_VERSION",
            {"package": "foo", "version": "1.0", "released": released, "requires_python": ">=3.9"},
        ),
        "UPDVER",
    )
    # A legacy (non PEP 440) version is stored as it is; a version with a space is not.
    ok(rig.ask("ADD_VERSION", {"package": "foo", "version": "2004d"}), "NEWVER")
    msg = err(rig.ask("ADD_VERSION", {"package": "foo", "version": "1 0"}), "INVALID")
    assert "spaces" in msg
    with rig.engine.connect() as conn:
        info = versions.get_version(conn, "foo", "1.0")
        assert info is not None and info.requires_python == ">=3.9"
        assert info.released_at == released
        assert [v.version for v in versions.get_versions(conn, "foo")] == ["1.0", "2004d"]
        # Both are queued for the one target.
        assert queue.queue_sizes(conn) == {TARGET: 2}


def test_skip_and_unskip_package_version_and_abi(rig: Rig) -> None:
    add(rig, "foo", "1.0", "2.0")

    def queued() -> set[str]:
        return {r.version for r in rig.sql("SELECT version FROM build_queue")}

    assert queued() == {"1.0", "2.0"}
    skip = {"package": "foo", "version": None, "abi": None, "reason": "broken"}
    ok(rig.ask("SKIP", skip), "SKIPPED")
    assert queued() == set()
    ok(rig.ask("SKIP", skip), "UNCHANGED")
    unskip = {"package": "foo", "version": None, "abi": None}
    ok(rig.ask("UNSKIP", unskip), "UNSKIPPED")
    ok(rig.ask("UNSKIP", unskip), "UNCHANGED")
    assert queued() == {"1.0", "2.0"}

    ok(rig.ask("SKIP", {**skip, "version": "1.0"}), "SKIPPED")
    assert queued() == {"2.0"}
    ok(rig.ask("SKIP", {**skip, "version": "2.0", "abi": "cp311"}), "SKIPPED")
    assert queued() == set()
    ok(rig.ask("SKIP", {**skip, "version": "2.0", "abi": TARGET}), "UNCHANGED")
    ok(rig.ask("UNSKIP", {**unskip, "version": "2.0", "abi": TARGET}), "UNSKIPPED")
    ok(rig.ask("SKIP", {**skip, "abi": TARGET, "reason": "no armv7l"}), "SKIPPED")
    assert queued() == set()
    ok(rig.ask("UNSKIP", {**unskip, "abi": TARGET}), "UNSKIPPED")
    assert queued() == {"2.0"}

    assert "3.0" in err(rig.ask("SKIP", {**skip, "version": "3.0"}), "NOVER")
    assert "cp39" in err(rig.ask("SKIP", {**skip, "abi": "cp39"}), "NOABI")
    err(rig.ask("SKIP", {**skip, "package": "bar"}), "NOPKG")
    assert "reason" in err(rig.ask("SKIP", {**skip, "reason": "  "}), "INVALID")


def test_yank_unyank_alias_priority(rig: Rig) -> None:
    add(rig, "foo", "1.0")
    ok(rig.ask("YANK", {"package": "foo", "version": "1.0", "reason": "bad"}), "YANKED")
    ok(rig.ask("YANK", {"package": "foo", "version": "1.0", "reason": "bad"}), "UNCHANGED")
    assert rig.sql("SELECT yanked, yank_reason FROM versions") == [(True, "bad")]
    assert rig.sql("SELECT count(*) FROM build_queue") == [(0,)]
    ok(rig.ask("UNYANK", {"package": "foo", "version": "1.0"}), "UNYANKED")
    ok(rig.ask("UNYANK", {"package": "foo", "version": "1.0"}), "UNCHANGED")
    assert rig.sql("SELECT count(*) FROM build_queue") == [(1,)]
    err(rig.ask("YANK", {"package": "foo", "version": "9", "reason": ""}), "NOVER")

    ok(rig.ask("ALIAS", {"package": "foo", "alias": "FOO"}), "ALIASED")
    ok(rig.ask("ALIAS", {"package": "foo", "alias": "FOO"}), "UNCHANGED")
    err(rig.ask("ALIAS", {"package": "foo", "alias": "bar"}), "INVALID")

    ok(rig.ask("PRIORITY", {"package": "foo", "priority": 5}), "PRIORITY")
    ok(rig.ask("PRIORITY", {"package": "foo", "priority": 5}), "UNCHANGED")
    assert rig.sql("SELECT priority FROM build_queue") == [(5,)]
    err(rig.ask("PRIORITY", {"package": "foo", "priority": 2**40}), "INVALID")


def test_rebuild_request_clears_failures(rig: Rig) -> None:
    add(rig, "foo", "1.0")
    with rig.engine.begin() as conn:
        build_id = builds.start_build(conn, "foo", "1.0", TARGET, "b1")
        builds.finish_build(conn, build_id, "failed", timedelta(seconds=3), "compile_error")
    assert rig.sql("SELECT count(*) FROM build_queue") == [(0,)]
    req = {"package": "foo", "version": "1.0", "abi": None}
    assert "1 failed" in ok(rig.ask("REBUILD_REQUEST", req), "RETRY")
    assert rig.sql("SELECT count(*) FROM build_queue") == [(1,)]
    ok(rig.ask("REBUILD_REQUEST", req), "UNCHANGED")
    ok(rig.ask("REBUILD_REQUEST", {**req, "version": None}), "UNCHANGED")


# -- piw-remove -------------------------------------------------------------------------


def write_pages(rig: Rig, package: str) -> None:
    rig.gateway.pages.send_msg("PROJECT", {"package": package})
    rig.settle()


def listed(rig: Rig, package: str) -> set[str]:
    page = rig.output / layout.simple_dir(package) / "index.json"
    return {f["filename"] for f in json.loads(page.read_bytes())["files"]}


def test_remove_package_takes_pages_files_links_and_rows(rig: Rig) -> None:
    add(rig, "Foo.Bar", "1.0", "2.0")
    with rig.engine.begin() as conn:
        packages.add_alias(conn, "foo_bar")
        packages.add_alias(conn, "foo-bar")
        _, wheel1 = publish_build(conn, rig.output, "foo-bar", "1.0")
        build2, wheel2 = publish_build(conn, rig.output, "foo-bar", "2.0")
    add(rig, "other", "1.0")
    rig.writer.writer.write_log(build2, "a log")
    write_pages(rig, "foo-bar")
    write_pages(rig, "other")
    site = rig.output
    assert listed(rig, "foo-bar") == {wheel1.name, wheel2.name}
    assert (site / "simple/foo_bar").is_symlink() and (site / "project/foo-bar").is_dir()
    assert (site / layout.log_path(build2)).exists()

    reply = rig.ask(
        "REMOVE", {"package": "foo-bar", "version": None, "builds_only": False, "reason": "asked"}
    )
    ok(reply, "REMOVED")
    for path in ("simple/foo-bar", "project/foo-bar", "simple/foo_bar", "project/foo_bar"):
        assert not (site / path).exists() and not (site / path).is_symlink(), path
    assert not wheel1.exists() and not wheel2.exists()
    assert not (site / layout.log_path(build2)).exists()
    for table in ("packages", "versions", "builds", "package_aliases"):
        column = "name" if table == "packages" else "package"
        rows = rig.sql(f"SELECT count(*) FROM {table} WHERE {column} = 'foo-bar'")
        assert rows == [(0,)], table
    assert (site / "project/other/index.html").exists()
    rig.settle()
    root = json.loads((site / "simple/index.json").read_bytes())
    assert "foo-bar" not in {p["name"] for p in root["projects"]}
    # Asking again: the package is gone.
    err(
        rig.ask(
            "REMOVE", {"package": "foo-bar", "version": None, "builds_only": False, "reason": ""}
        ),
        "NOPKG",
    )


def test_remove_version_takes_its_files_and_keeps_the_rest(rig: Rig) -> None:
    add(rig, "foo", "1.0", "2.0")
    with rig.engine.begin() as conn:
        b1, wheel1 = publish_build(conn, rig.output, "foo", "1.0")
        _, wheel2 = publish_build(conn, rig.output, "foo", "2.0")
    write_pages(rig, "foo")
    ok(
        rig.ask("REMOVE", {"package": "foo", "version": "1.0", "builds_only": False, "reason": ""}),
        "REMOVED",
    )
    assert not wheel1.exists() and not Path(f"{wheel1}.metadata").exists()
    assert wheel2.exists() and Path(f"{wheel2}.metadata").exists()
    assert listed(rig, "foo") == {wheel2.name}
    assert rig.sql("SELECT version FROM versions") == [("2.0",)]
    assert rig.sql("SELECT count(*) FROM builds WHERE build_id = :b", b=b1) == [(0,)]
    page = (rig.output / "project/foo/index.html").read_text()
    assert "2.0" in page and wheel1.name not in page
    err(
        rig.ask("REMOVE", {"package": "foo", "version": "1.0", "builds_only": False, "reason": ""}),
        "NOVER",
    )


def test_remove_builds_only_requeues(rig: Rig) -> None:
    add(rig, "foo", "1.0", "2.0")
    with rig.engine.begin() as conn:
        _, wheel1 = publish_build(conn, rig.output, "foo", "1.0")
        _, wheel2 = publish_build(conn, rig.output, "foo", "2.0")
        versions.skip_version(conn, "foo", "2.0", "held back")
    write_pages(rig, "foo")
    assert rig.sql("SELECT count(*) FROM build_queue") == [(0,)]
    msg = ok(
        rig.ask("REMOVE", {"package": "foo", "version": None, "builds_only": True, "reason": ""}),
        "REMOVED",
    )
    assert "2 build(s)" in msg
    assert not wheel1.exists() and not wheel2.exists()
    assert listed(rig, "foo") == set()
    assert rig.sql("SELECT count(*) FROM builds") == [(0,)]
    assert {v for (v,) in rig.sql("SELECT version FROM versions")} == {"1.0", "2.0"}
    # Built again unless skipped.
    assert rig.sql("SELECT version FROM build_queue") == [("1.0",)]
    ok(
        rig.ask("REMOVE", {"package": "foo", "version": None, "builds_only": True, "reason": ""}),
        "UNCHANGED",
    )


def test_remove_waits_for_a_build_in_flight(rig: Rig) -> None:
    add(rig, "foo", "1.0")
    with rig.engine.begin() as conn:
        build_id = builds.start_build(conn, "foo", "1.0", TARGET, "b1")
    rig.cli.send("REMOVE", {"package": "foo", "version": "1.0", "builds_only": False, "reason": ""})
    first = rig.cli.recv(5)
    assert first.msg == "PROGRESS" and f"[{build_id}]" in first.data["message"]
    # Marked removed: no longer built, rows still there.
    assert rig.sql("SELECT removed_at IS NOT NULL FROM versions") == [(True,)]
    with rig.engine.begin() as conn:
        builds.finish_build(conn, build_id, "failed", timedelta(seconds=1), "compile_error")
    ok(rig.final(), "REMOVED")
    assert rig.sql("SELECT count(*) FROM versions") == [(0,)]


def test_remove_gives_up_clearly_and_finishes_when_asked_again(rig: Rig) -> None:
    add(rig, "foo", "1.0")
    rig.gateway.removal_timeout = 0.3
    with rig.engine.begin() as conn:
        build_id = builds.start_build(conn, "foo", "1.0", TARGET, "b1")
    req = {"package": "foo", "version": None, "builds_only": False, "reason": ""}
    msg = err(rig.ask("REMOVE", req), "TIMEOUT")
    assert "run the removal again" in msg
    assert rig.sql("SELECT removed_at IS NOT NULL FROM packages") == [(True,)]
    with rig.engine.begin() as conn:
        builds.finish_build(conn, build_id, "failed", timedelta(seconds=1), "compile_error")
    ok(rig.ask("REMOVE", req), "REMOVED")
    assert rig.sql("SELECT count(*) FROM packages") == [(0,)]


# -- piw-rebuild ------------------------------------------------------------------------


def test_rebuild_parts(rig: Rig) -> None:
    for name in ("alpha", "beta", "gamma"):
        add(rig, name, "1.0")
    with rig.engine.begin() as conn:
        publish_build(conn, rig.output, "beta", "1.0")
    ok(rig.ask("REBUILD", {"part": "home", "package": None}), "REBUILT")
    ok(rig.ask("REBUILD", {"part": "search", "package": None}), "REBUILT")
    ok(rig.ask("REBUILD", {"part": "root", "package": None}), "REBUILT")
    rig.settle()
    for page in ("index.html", "packages.json", "simple/index.json"):
        assert (rig.output / page).exists(), page
    ok(rig.ask("REBUILD", {"part": "project", "package": "Beta"}), "REBUILT")
    rig.settle()
    assert (rig.output / "project/beta/index.html").exists()
    err(rig.ask("REBUILD", {"part": "project", "package": "nope"}), "NOPKG")
    err(rig.ask("REBUILD", {"part": "project", "package": None}), "INVALID")
    err(rig.ask("REBUILD", {"part": "home", "package": "alpha"}), "INVALID")

    msg = ok(rig.ask("REBUILD", {"part": "all", "package": None}), "REBUILT")
    assert "3 project" in msg
    # The answer comes once the page writer has written every page.
    assert rig.progress[1]["total"] == 3 and rig.progress[-1] == {
        "done": 3,
        "total": 3,
        "message": "written",
    }
    for name in ("alpha", "beta", "gamma"):
        assert (rig.output / f"project/{name}/index.html").exists(), name


def test_rebuild_all_reports_each_chunk(rig: Rig) -> None:
    rig.writer.chunk_size = 3
    with rig.engine.begin() as conn:
        for i in range(10):
            packages.add_package(conn, f"pkg{i}")
    ok(rig.ask("REBUILD", {"part": "all", "package": None}), "REBUILT")
    assert rig.progress[0]["total"] == 0  # the gateway's: asked the page writer
    done = [p["done"] for p in rig.progress[1:]]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 10
    assert {p["total"] for p in rig.progress[1:]} == {10}
    assert len(list((rig.output / "project").iterdir())) == 10


def test_rebuild_all_twice_at_once_is_busy(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    add(rig, "alpha", "1.0")
    # Hold the first rewrite's thread until the second request has been answered.
    gate = threading.Event()
    real = rig.writer._run_rewrite

    def held(*args: Any) -> None:
        gate.wait(10)
        real(*args)

    monkeypatch.setattr(rig.writer, "_run_rewrite", held)
    second = ScriptedPeer(
        rig.context,
        DEALER,
        reversed(protocols.admin),
        connect=rig.env.addresses["admin"],
        drive=rig.tasks,
    )
    try:
        rig.cli.send("REBUILD", {"part": "all", "package": None})
        while rig.cli.recv(10.0).data.get("total", 0) == 0:
            pass  # until the page writer has started
        second.send("REBUILD", {"part": "all", "package": None})
        reply = second.recv(10.0)
        while reply.msg == "PROGRESS":
            reply = second.recv(10.0)
        assert "already running (0 of 1" in err(reply, "BUSY")
    finally:
        gate.set()
        second.close()
    assert "1 project" in ok(rig.final(), "REBUILT")


# -- piw-import -------------------------------------------------------------------------


def file_record(path: Path, **over: Any) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "filename": path.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "requires_python": None,
        "requires_dist": [],
        "metadata_sha256": None,
        "apt_dependencies": ["libfoo1"],
        "missing_libraries": [],
        "import_ok": None,
        "import_error": None,
        **over,
    }


def serve_send(rig: Rig, path: Path) -> None:
    """Answer one SEND as piw-import does: send the file, then say SENT."""
    send = rig.cli.expect("SEND")
    result: list[Any] = []
    sender = FileSender(
        rig.context, rig.env.addresses["file"], path, send.data["transfer"], silence=1.0
    )
    thread = threading.Thread(target=lambda: result.append(sender.run()))
    thread.start()
    wait_for(lambda: not thread.is_alive(), drive=rig.tasks)
    assert result[0].ok, result[0].reason
    rig.cli.send("SENT", {"filename": send.data["filename"]})


def test_import_publishes_and_records(rig: Rig, tmp_path: Path) -> None:
    add(rig, "foo", "1.0")
    w1 = make_wheel(tmp_path / "in", "foo", "1.0", "cp311-cp311-linux_armv7l")
    w2 = make_wheel(tmp_path / "in", "foo", "1.0", "py3-none-any")
    request = {
        "package": "foo",
        "version": "1.0",
        "abi": "cp311",
        "duration": timedelta(minutes=3),
        "log": "built by hand",
        "files": [file_record(w1), file_record(w2)],
    }
    rig.cli.send("IMPORT", request)
    serve_send(rig, w1)
    serve_send(rig, w2)
    msg = ok(rig.final(), "IMPORTED")
    assert "2 file(s)" in msg
    folder = rig.output / "simple/foo"
    for wheel in (w1, w2):
        assert (folder / wheel.name).read_bytes() == wheel.read_bytes()
        assert (folder / f"{wheel.name}.metadata").exists()
    ((build_id, status, abi),) = rig.sql("SELECT build_id, status, abi FROM builds")
    assert (status, abi) == ("success", TARGET)
    assert rig.sql("SELECT requirement FROM dependencies WHERE tool = 'apt'") == [("libfoo1",)] * 2
    rig.settle()
    assert listed(rig, "foo") == {w1.name, w2.name}
    assert (rig.output / layout.log_path(build_id)).exists()
    # The same import again changes nothing.
    ok(rig.ask("IMPORT", request), "UNCHANGED")


def test_import_refusals(rig: Rig, tmp_path: Path) -> None:
    add(rig, "foo", "1.0")
    wheel = make_wheel(tmp_path / "in", "foo", "1.0")
    base = {
        "package": "foo",
        "version": "1.0",
        "abi": TARGET,
        "duration": timedelta(0),
        "log": "",
        "files": [file_record(wheel)],
    }
    err(rig.ask("IMPORT", {**base, "version": "2.0"}), "NOVER")
    err(rig.ask("IMPORT", {**base, "package": "bar"}), "NOPKG")
    err(rig.ask("IMPORT", {**base, "abi": "cp39"}), "NOABI")
    err(rig.ask("IMPORT", {**base, "files": []}), "INVALID")
    other = make_wheel(tmp_path / "in", "foo", "1.0", "cp312-cp312-linux_armv7l")
    assert "does not serve" in err(
        rig.ask("IMPORT", {**base, "files": [file_record(other)]}), "INVALID"
    )
    # A claim that does not match the bytes sent is refused by the file receiver.
    rig.cli.send("IMPORT", {**base, "files": [file_record(wheel, sha256="0" * 64)]})
    serve_send(rig, wheel)
    assert "hash_mismatch" in err(rig.final(), "REFUSED")
    assert not (rig.output / "simple/foo").exists()
    assert rig.sql("SELECT count(*) FROM builds") == [(0,)]
