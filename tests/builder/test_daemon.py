"""The builder daemon against a scripted master over tcp with CurveZMQ, with real builds."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from piwheels import protocols
from piwheels.builder.daemon import (
    BuilderDaemon,
    BuilderRefused,
    curve_config,
    host_stats,
    interpreter_facts,
)
from piwheels.errors import ConfigError, TransportError
from piwheels.filetransfer import new_token
from piwheels.keygen import COMMAND as KEYGEN
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import FileReceiver
from piwheels.settings import Settings
from piwheels.transport import DEALER, ROUTER, Context, CurveKeys, Received, load_keys
from tests.builder.conftest import LocalIndex
from tests.peer import ScriptedPeer, wait_for
from tests.sdists import _setup, make_sdist, pure_sdist, sleeper_sdist

BIN = Path(sys.executable).parent


@dataclass
class Keys:
    server: CurveKeys
    server_public_file: Path
    builder_secret_file: Path
    intruder_secret_file: Path
    authorized: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Key pairs made with piw-keygen: the master's, an admitted builder's, an intruder's."""
    for name, folder, role in (
        ("master", "server", "master"),
        ("pi4", "authorized", "builder"),
        ("intruder", "elsewhere", "builder"),
    ):
        argv = [name, "--dir", str(tmp_path / folder), "--role", role]
        assert KEYGEN.run(argv, system_config=None, user_config=None) == 0
    return Keys(
        server=load_keys(tmp_path / "server" / "master.key_secret"),
        server_public_file=tmp_path / "server" / "master.key",
        builder_secret_file=tmp_path / "authorized" / "pi4.key_secret",
        intruder_secret_file=tmp_path / "elsewhere" / "intruder.key_secret",
        authorized=tmp_path / "authorized",
    )


@pytest.fixture
def master_context(keys: Keys) -> Iterator[Context]:
    ctx = Context(authorized_keys=keys.authorized)
    yield ctx
    ctx.close()


def master_peer(ctx: Context, keys: Keys, drive: tuple[Any, ...] = ()) -> ScriptedPeer:
    """A scripted master on a CurveZMQ ROUTER (curve must be set before binding)."""
    peer = ScriptedPeer(ctx, ROUTER, protocols.builder, drive=drive, timeout=30)
    peer.socket.curve_server(keys.server)
    peer.address = peer.socket.bind("tcp://127.0.0.1:0")
    return peer


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def builder_settings(
    tmp_path: Path, keys: Keys, port: int, file_port: int = 1, **builder: Any
) -> Settings:
    values: dict[str, Any] = {
        "master_host": "127.0.0.1",
        "builder_port": port,
        "file_port": file_port,
        "label": "testpi",
        "build_dir": tmp_path / "build",
        "import_test": False,
        "min_free_disk": 1 << 20,
        "reconnect_max": timedelta(seconds=0.4),
    }
    secret = builder.pop("secret", keys.builder_secret_file)
    values.update(builder)
    return (
        Settings()
        .replace("builder", **values)
        .replace(
            "keys",
            curve=True,
            secret_key_file=secret,
            server_public_key_file=keys.server_public_file,
        )
    )


class Running:
    """A BuilderDaemon running in a thread."""

    def __init__(self, daemon: BuilderDaemon) -> None:
        self.daemon = daemon
        self.result: list[Any] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result.append(self.daemon.run())
        except BaseException as exc:
            self.result.append(exc)

    def finish(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the builder did not stop"
        return self.result[0]

    def stop(self) -> Any:
        self.daemon.stop("test over")
        return self.finish()


def ack(index_url: str = "http://127.0.0.1:9/simple/", heartbeat: float = 0.2) -> dict[str, Any]:
    return {
        "builder_id": 3,
        "index_url": index_url,
        "extra_index_urls": [],
        "build_timeout": timedelta(minutes=5),
        "heartbeat": timedelta(seconds=heartbeat),
    }


def build(build_id: int, package: str, version: str = "1.0") -> dict[str, Any]:
    return {
        "build_id": build_id,
        "package": package,
        "version": version,
        "timeout": timedelta(minutes=5),
    }


def until_built(master: ScriptedPeer) -> tuple[Received, int]:
    """Answer BUSY with CONT until BUILT arrives; returns it and how many BUSYs came."""
    busy = 0
    while True:
        msg = master.recv(timeout=120)
        if msg.msg != "BUSY":
            assert msg.msg == "BUILT", msg
            return msg, busy
        busy += 1
        master.send("CONT")


def survivors(token: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if token.encode() in fh.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


# -- facts ----------------------------------------------------------------------------------


def test_interpreter_facts_and_stats(tmp_path: Path) -> None:
    facts = interpreter_facts(sys.executable)
    assert facts["abi"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert facts["platform"] == sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert facts["python_version"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}.")
    stats = host_stats(tmp_path)
    protocols.HOST_STATS(stats)  # a valid record
    assert 0 < stats["disk_free"] <= stats["disk_total"]
    assert 0 < stats["mem_free"] <= stats["mem_total"]


def test_curve_needs_both_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        curve_config(Settings().keys)
    assert "secret_key_file" in str(info.value) and "server_public_key_file" in str(info.value)
    assert curve_config(Settings().replace("keys", curve=False).keys) == (None, None)


def test_keygen_refuses_to_overwrite(tmp_path: Path, keys: Keys, capsys: Any) -> None:
    secret = keys.builder_secret_file
    before = secret.read_bytes()
    argv = ["pi4", "--dir", str(secret.parent)]
    assert KEYGEN.run(argv, system_config=None, user_config=None) != 0
    assert "refusing to overwrite" in capsys.readouterr().err
    assert secret.read_bytes() == before
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert KEYGEN.run(["../x"], system_config=None, user_config=None) != 0


# -- the conversation -------------------------------------------------------------------------


def test_hello_idle_sleep_die(tmp_path: Path, keys: Keys, master_context: Context) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    daemon = BuilderDaemon(builder_settings(tmp_path, keys, port_of(master.address)))
    running = Running(daemon)
    try:
        hello = master.expect("HELLO").data
        assert hello["protocol"] == protocols.PROTOCOL_VERSION
        assert hello["label"] == "testpi"
        assert hello["abi"] == f"cp{sys.version_info[0]}{sys.version_info[1]}"
        assert hello["platform"] == interpreter_facts(sys.executable)["platform"]
        assert hello["python_version"] == ".".join(map(str, sys.version_info[:3]))
        assert hello["os_name"] and hello["cpu_count"] == os.cpu_count()
        assert hello["build_timeout"] == timedelta(hours=3)
        assert "sandbox" in hello["sandbox"] or "bubblewrap" in hello["sandbox"]
        assert hello["stats"]["disk_free"] > 0
        assert "resume_build_id" not in hello
        master.send("ACK", ack())
        master.expect("IDLE")
        master.send("SLEEP", {"seconds": 0.05, "reason": "no work"})
        idle = master.expect("IDLE")
        assert idle.data["stats"]["timestamp"] > hello["stats"]["timestamp"]
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()


def test_intervals_come_from_the_builder_settings(
    tmp_path: Path, keys: Keys, master_context: Context
) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    settings = builder_settings(
        tmp_path,
        keys,
        port_of(master.address),
        master_timeout=timedelta(seconds=1),
        reconnect_min=timedelta(seconds=0.15),
        reconnect_max=timedelta(seconds=0.25),
        heartbeat=timedelta(seconds=0.3),
        sleep_max=timedelta(seconds=0.1),
    )
    daemon = BuilderDaemon(settings)
    assert (daemon.reply_timeout, daemon.backoff_start) == (1.0, 0.15)
    running = Running(daemon)
    try:
        # Silent twice: the waits start at reconnect_min and stop growing at reconnect_max.
        master.expect("HELLO")
        master.expect("HELLO", timeout=30)
        master.expect("HELLO", timeout=30)
        assert daemon.backoffs[:2] == [0.15, 0.25]
        # The master asks for a heartbeat of a minute; the builder's own setting is shorter.
        master.send("ACK", ack(heartbeat=60))
        master.expect("IDLE")
        assert daemon.heartbeat == 0.3
        # An hour's SLEEP is cut to sleep_max: the builder asks again at once.
        master.send("SLEEP", {"seconds": 3600.0, "reason": "no work"})
        master.expect("IDLE", timeout=30)
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()


def test_refused_hello_raises_with_the_reason(
    tmp_path: Path, keys: Keys, master_context: Context
) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    running = Running(BuilderDaemon(builder_settings(tmp_path, keys, port_of(master.address))))
    try:
        master.expect("HELLO")
        master.send("REFUSED", {"reason": "protocol 1 is not 2"})
        outcome = running.finish()
        assert isinstance(outcome, BuilderRefused) and "protocol 1 is not 2" in str(outcome)
    finally:
        master.close()


def test_unknown_key_never_gets_an_answer(
    tmp_path: Path, keys: Keys, master_context: Context
) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    settings = builder_settings(
        tmp_path, keys, port_of(master.address), secret=keys.intruder_secret_file
    )
    daemon = BuilderDaemon(settings, reply_timeout=0.5, backoff_start=0.1)
    running = Running(daemon)
    try:
        # The handshake fails in ZAP: the master never sees a message...
        master.check(2.0)
        # ...while the builder keeps trying, unanswered.
        assert len(daemon.hellos) >= 2 and daemon.builder_id is None
        assert running.stop() == 0
    finally:
        master.close()


def test_full_build_transfer_and_done(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    local_index.add(pure_sdist(tmp_path / "sdists", name="piwtest-daemon", version="1.0"))
    output = tmp_path / "www"
    env = MasterEnv(
        settings=Settings(),
        addresses={"file": "tcp://127.0.0.1:0", "transfers": f"inproc://t-{new_token()}"},
        output_path=output,
        server_keys=keys.server,
    )
    receiver = FileReceiver(master_context, env)
    dispatcher = ScriptedPeer(
        master_context,
        DEALER,
        reversed(protocols.transfers),
        connect=receiver.transfers_address,
        drive=(receiver,),
    )
    master = master_peer(master_context, keys, drive=(receiver,))
    assert master.address is not None
    settings = builder_settings(
        tmp_path,
        keys,
        port_of(master.address),
        port_of(receiver.file_address),
        import_test=True,
    )
    running = Running(BuilderDaemon(settings))
    try:
        master.expect("HELLO")
        master.send("ACK", ack(local_index.url, heartbeat=0.5))
        master.expect("IDLE")
        master.send("BUILD", build(7, "piwtest-daemon"))
        built, _busy = until_built(master)
        data = built.data
        assert data["build_id"] == 7 and data["status"] is True, data["log"][-3000:]
        assert data["failure_class"] is None
        assert "pip wheel" in data["log"] or "wheel" in data["log"]
        assert data["environment"]["abi"].startswith("cp")
        (record,) = data["files"]
        assert record["filename"] == "piwtest_daemon-1.0-py3-none-any.whl"
        assert 'packaging>=20; python_version >= "3.8"' in record["requires_dist"]
        assert record["requires_python"] == ">=3.8"
        assert record["import_ok"] is True, record["import_error"]
        # The log ends with the time of each step of the build path.
        steps = next(ln for ln in data["log"].splitlines() if "step times: " in ln)
        for step in ("pip wheel", "wheel check", "ELF scan", "venv", "install", "import"):
            assert f"{step} " in steps and "(cpu " in steps, steps

        # The dispatcher's part: expect the file, ask the builder to send it.
        token = new_token()
        dispatcher.send(
            "EXPECT",
            {
                "transfer": token,
                "filename": record["filename"],
                "package": "piwtest-daemon",
                "version": "1.0",
                "abi": data["environment"]["abi"],
                "platform": None,
                "size": record["size"],
                "sha256": record["sha256"],
            },
        )
        dispatcher.expect("EXPECTING")
        master.send("SEND", {"build_id": 7, "filename": record["filename"], "transfer": token})
        master.expect("SENT", {"build_id": 7, "filename": record["filename"]})
        dispatcher.send("PUBLISH", {"transfer": token})
        published = dispatcher.expect("PUBLISHED")
        assert published.data["file"]["sha256"] == record["sha256"]
        wheel = output / "simple" / "piwtest-daemon" / record["filename"]
        assert wheel.is_file() and Path(f"{wheel}.metadata").is_file()

        builds = tmp_path / "build"
        held = builds / "held-testpi"
        assert (held / "state.json").is_file() and (held / record["filename"]).is_file()
        assert list(builds.glob("build-*")) == []  # the build folder went once saved
        master.send("DONE", {"build_id": 7})
        master.expect("IDLE")
        assert not held.exists()
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()
        dispatcher.close()
        receiver.close()


def test_abort_kills_the_build(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    token = f"piwtest-abort-{uuid.uuid4().hex}"
    local_index.add(sleeper_sdist(tmp_path / "sdists", token, name="piwtest-abortme"))
    master = master_peer(master_context, keys)
    assert master.address is not None
    running = Running(BuilderDaemon(builder_settings(tmp_path, keys, port_of(master.address))))
    try:
        master.expect("HELLO")
        master.send("ACK", ack(local_index.url, heartbeat=0.3))
        master.expect("IDLE")
        master.send("BUILD", build(9, "piwtest-abortme"))
        # Wait until the sleeper's children are running, answering BUSY meanwhile.
        while not survivors(token):
            master.expect("BUSY", timeout=60)
            master.send("CONT")
        master.expect("BUSY", timeout=60)
        master.send("ABORT", {"build_id": 9, "reason": "skipped by the operator"})
        master.expect("IDLE", timeout=60)
        assert survivors(token) == []
        assert list((tmp_path / "build").glob("build-*")) == []
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()


def test_silent_master_reconnect_with_backoff_and_resume(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    daemon = BuilderDaemon(
        builder_settings(tmp_path, keys, port_of(master.address)),
        reply_timeout=1.0,
        backoff_start=0.2,
    )
    running = Running(daemon)
    try:
        master.expect("HELLO")
        master.send("ACK", ack(local_index.url, heartbeat=0.3))
        master.expect("IDLE")
        # Not in the index: pip fails fast, and the failed build is a result to keep.
        master.send("BUILD", build(11, "piwtest-not-in-the-index"))
        built, _ = until_built(master)
        assert built.data["status"] is False and built.data["build_id"] == 11
        # The master goes silent twice; the builder says HELLO again each time.
        for _ in range(2):
            hello = master.expect("HELLO", timeout=30)
            assert hello.data["resume_build_id"] == 11
        assert daemon.backoffs == [0.2, 0.4]
        master.send("ACK", ack(local_index.url))
        again = master.expect("BUILT")
        assert again.data == built.data
        master.send("DONE", {"build_id": 11})
        master.expect("IDLE")
        assert list((tmp_path / "build").glob("build-*")) == []
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()


# -- held builds: kept until the master has them ------------------------------------------------


def gated_sdist(dest: Path, name: str, flag: Path) -> Path:
    """A package whose setup.py waits until *flag* exists (at most five minutes)."""
    body = f"""\
    import os, time
    deadline = time.time() + 300
    while not os.path.exists({str(flag)!r}) and time.time() < deadline:
        time.sleep(0.05)
    """
    return make_sdist(dest, name, "1.0", _setup(name, "1.0", body, py_modules="[]"))


def test_master_lost_during_busy_then_back_delivers_once(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    """The master stops answering BUSY; the build ends while it is away; it is still
    delivered, once, when the master answers again."""
    flag = tmp_path / "flag"
    local_index.add(gated_sdist(tmp_path / "sdists", "piwtest-lostbusy", flag))
    master = master_peer(master_context, keys)
    assert master.address is not None
    settings = builder_settings(tmp_path, keys, port_of(master.address), sandbox="off")
    daemon = BuilderDaemon(settings, reply_timeout=1.0, backoff_start=0.1)
    running = Running(daemon)
    seen: list[str] = []
    try:
        master.expect("HELLO")
        master.send("ACK", ack(local_index.url, heartbeat=0.2))
        master.expect("IDLE")
        master.send("BUILD", build(21, "piwtest-lostbusy"))
        master.expect("BUSY", timeout=60)
        # The master goes silent: the builder gives up on it and keeps saying HELLO,
        # offering the build it still runs.
        hello = master.expect("HELLO", timeout=30)
        assert hello.data["resume_build_id"] == 21
        flag.touch()
        wait_for(lambda: daemon.held is not None, timeout=120)
        held = tmp_path / "build" / "held-testpi"
        assert (held / "state.json").is_file()
        # The master is back: answer the next HELLO (stale ones may be queued).
        while True:
            msg = master.recv(timeout=30)
            seen.append(msg.msg)
            if msg.msg == "HELLO":
                assert msg.data["resume_build_id"] == 21
                try:
                    master.send("ACK", ack(local_index.url, heartbeat=0.2))
                except TransportError:
                    pass  # a HELLO from a connection the builder has given up already
            elif msg.msg == "BUSY":
                master.send("CONT")
            else:
                break
        assert msg.msg == "BUILT", msg
        assert msg.data["build_id"] == 21 and msg.data["status"] is True, msg.data["log"][-3000:]
        (record,) = msg.data["files"]
        assert (held / record["filename"]).is_file()
        master.send("DONE", {"build_id": 21})
        master.expect("IDLE")
        seen.append("IDLE")
        assert not held.exists()
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
        assert seen.count("BUILT") == 1
        master.check()
    finally:
        flag.touch()
        if running.thread.is_alive():
            running.stop()
        master.close()


def test_restarted_builder_delivers_its_held_build(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    """A finished build whose builder stops before the master has it is delivered, files and
    all, by the builder's next process."""
    local_index.add(pure_sdist(tmp_path / "sdists", name="piwtest-restarted", version="1.0"))
    output = tmp_path / "www"
    env = MasterEnv(
        settings=Settings(),
        addresses={"file": "tcp://127.0.0.1:0", "transfers": f"inproc://t-{new_token()}"},
        output_path=output,
        server_keys=keys.server,
    )
    receiver = FileReceiver(master_context, env)
    dispatcher = ScriptedPeer(
        master_context,
        DEALER,
        reversed(protocols.transfers),
        connect=receiver.transfers_address,
        drive=(receiver,),
    )
    master = master_peer(master_context, keys, drive=(receiver,))
    assert master.address is not None
    settings = builder_settings(
        tmp_path, keys, port_of(master.address), port_of(receiver.file_address)
    )
    first = Running(BuilderDaemon(settings, reply_timeout=5.0))
    second: Running | None = None
    try:
        master.expect("HELLO")
        master.send("ACK", ack(local_index.url, heartbeat=0.5))
        master.expect("IDLE")
        master.send("BUILD", build(31, "piwtest-restarted"))
        built, _ = until_built(master)
        assert built.data["status"] is True, built.data["log"][-3000:]
        # No answer: the builder process stops (SIGTERM) while it holds the build.
        first.daemon.stop("SIGTERM")
        assert first.finish() == 0
        master.expect("BYE")
        held = tmp_path / "build" / "held-testpi"
        (record,) = built.data["files"]
        assert (held / "state.json").is_file() and (held / record["filename"]).is_file()

        second = Running(BuilderDaemon(settings, reply_timeout=5.0))
        hello = master.expect("HELLO")
        assert hello.data["resume_build_id"] == 31
        master.send("ACK", ack(local_index.url, heartbeat=0.5))
        again = master.expect("BUILT")
        assert again.data == built.data
        token = new_token()
        dispatcher.send(
            "EXPECT",
            {
                "transfer": token,
                "filename": record["filename"],
                "package": "piwtest-restarted",
                "version": "1.0",
                "abi": built.data["environment"]["abi"],
                "platform": None,
                "size": record["size"],
                "sha256": record["sha256"],
            },
        )
        dispatcher.expect("EXPECTING")
        master.send("SEND", {"build_id": 31, "filename": record["filename"], "transfer": token})
        master.expect("SENT", {"build_id": 31, "filename": record["filename"]})
        dispatcher.send("PUBLISH", {"transfer": token})
        published = dispatcher.expect("PUBLISHED")
        assert published.data["file"]["sha256"] == record["sha256"]
        master.send("DONE", {"build_id": 31})
        master.expect("IDLE")
        assert not held.exists()
        master.send("DIE", {"reason": "test over"})
        assert second.finish() == 0
    finally:
        for run in (first, second):
            if run is not None and run.thread.is_alive():
                run.stop()
        master.close()
        dispatcher.close()
        receiver.close()


def _save_a_held_build(tmp_path: Path, keys: Keys) -> tuple[Settings, Path, bytes]:
    """A held build saved as a builder would have (a failed build plus one small file)."""
    from piwheels.builder.held import save_held

    settings = builder_settings(tmp_path, keys, 9)
    wheel = tmp_path / "piwtest_held-1.0-py3-none-any.whl"
    data = b"not really a wheel, but what the record says"
    wheel.write_bytes(data)
    built = {
        "build_id": 41,
        "status": True,
        "duration": timedelta(seconds=2.5),
        "failure_class": None,
        "log": "built\n",
        "files": [
            {
                "filename": wheel.name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "requires_python": None,
                "requires_dist": [],
                "metadata_sha256": hashlib.sha256(b"m").hexdigest(),
                "apt_dependencies": [],
                "missing_libraries": [],
                "import_ok": None,
                "import_error": None,
            }
        ],
        "environment": {"abi": "cp311"},
    }
    folder = tmp_path / "build" / "held-testpi"
    save_held(folder, built, {wheel.name: wheel})
    return settings, folder, data


def test_saved_held_build_reloads_as_it_was(tmp_path: Path, keys: Keys) -> None:
    settings, folder, data = _save_a_held_build(tmp_path, keys)
    daemon = BuilderDaemon(settings)
    assert daemon.held is not None and daemon.held.build_id == 41
    assert daemon.held.built["duration"] == timedelta(seconds=2.5)
    assert daemon._hello()["resume_build_id"] == 41
    (path,) = daemon.held.files.values()
    assert path.read_bytes() == data and path.parent == folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "state.json").write_text("{not json"), "is not readable JSON"),
        (lambda f: (f / "state.json").write_bytes(b"\xff\xfe"), "is not readable JSON"),
        (lambda f: (f / "state.json").write_text('{"format": 99}'), "is not format 1"),
        (
            lambda f: (f / "state.json").write_text(
                (f / "state.json").read_text().replace('"build_id": 41', '"build_id": "x"')
            ),
            "is not a valid BUILT record",
        ),
        (
            lambda f: (f / "state.json").write_text(
                (f / "state.json").read_text().replace('"duration": 2.5', '"duration": -1')
            ),
            "is not a number of seconds",
        ),
        (
            lambda f: (f / "state.json").write_text(
                (f / "state.json").read_text().replace("piwtest_held", "../piwtest_held")
            ),
            "is not a plain file name",
        ),
        (lambda f: (f / "piwtest_held-1.0-py3-none-any.whl").unlink(), "cannot be read"),
        (
            lambda f: (f / "piwtest_held-1.0-py3-none-any.whl").write_bytes(b"truncated"),
            "not the 44 bytes and sha256 recorded",
        ),
    ],
    ids=["json", "utf8", "format", "schema", "duration", "path", "missing", "changed"],
)
def test_corrupt_held_state_is_discarded_with_one_clear_error(
    tmp_path: Path,
    keys: Keys,
    master_context: Context,
    caplog: pytest.LogCaptureFixture,
    damage: Any,
    message: str,
) -> None:
    settings, folder, _ = _save_a_held_build(tmp_path, keys)
    damage(folder)
    master = master_peer(master_context, keys)
    assert master.address is not None
    settings = settings.replace("builder", builder_port=port_of(master.address))
    with caplog.at_level(logging.ERROR, logger="piwheels.builder"):
        daemon = BuilderDaemon(settings)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in error and message in error and "discarding it" in error, error
    assert "state.json" in error
    assert daemon.held is None and not folder.exists()
    # And the builder carries on: a plain HELLO, then it asks for work.
    running = Running(daemon)
    try:
        hello = master.expect("HELLO")
        assert "resume_build_id" not in hello.data
        master.send("ACK", ack())
        master.expect("IDLE")
        master.send("DIE", {"reason": "test over"})
        assert running.finish() == 0
    finally:
        if running.thread.is_alive():
            running.stop()
        master.close()


def test_half_saved_held_build_is_dropped_quietly(tmp_path: Path, keys: Keys) -> None:
    settings, folder, _ = _save_a_held_build(tmp_path, keys)
    (folder / "state.json").unlink()  # the save never reached its commit point
    daemon = BuilderDaemon(settings)
    assert daemon.held is None and not folder.exists()


# -- the real executable -------------------------------------------------------------------------


def _config(tmp_path: Path, keys: Keys, port: int) -> list[str]:
    conf = tmp_path / "builder.conf"
    conf.write_text(
        "[builder]\n"
        "master_host = 127.0.0.1\n"
        f"builder_port = {port}\n"
        f"build_dir = {tmp_path / 'build'}\n"
        "label = subprocess-pi\n"
        "import_test = false\n"
        "min_free_disk = 1M\n"
        "[keys]\n"
        "curve = true\n"
        f"secret_key_file = {keys.builder_secret_file}\n"
        f"server_public_key_file = {keys.server_public_file}\n"
    )
    return [str(BIN / "piw-builder"), "-c", str(conf)]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIWHEELS_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    return env


def test_sigterm_aborts_the_build_and_says_bye(
    tmp_path: Path, keys: Keys, master_context: Context, local_index: LocalIndex
) -> None:
    token = f"piwtest-sigterm-{uuid.uuid4().hex}"
    local_index.add(sleeper_sdist(tmp_path / "sdists", token, name="piwtest-termme"))
    master = master_peer(master_context, keys)
    assert master.address is not None
    proc = subprocess.Popen(
        _config(tmp_path, keys, port_of(master.address)),
        env=_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert master.expect("HELLO").data["label"] == "subprocess-pi"
        master.send("ACK", ack(local_index.url, heartbeat=0.3))
        master.expect("IDLE")
        master.send("BUILD", build(5, "piwtest-termme"))
        while not survivors(token):
            master.expect("BUSY", timeout=60)
            master.send("CONT")
        proc.send_signal(signal.SIGTERM)
        while True:
            msg = master.recv(timeout=60)
            if msg.msg == "BYE":
                break
            assert msg.msg == "BUSY"  # one may have been on its way
            master.send("CONT")
        assert msg.data == {"reason": "SIGTERM"}
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        assert survivors(token) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        master.close()


def test_refused_executable_exits_non_zero_with_the_reason(
    tmp_path: Path, keys: Keys, master_context: Context
) -> None:
    master = master_peer(master_context, keys)
    assert master.address is not None
    proc = subprocess.Popen(
        _config(tmp_path, keys, port_of(master.address)),
        env=_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        master.expect("HELLO")
        master.send("REFUSED", {"reason": "protocol 1 is not 2"})
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "piw-builder: error: the master refused this builder: protocol 1 is not 2" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        master.close()
