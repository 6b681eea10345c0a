"""The whole master: tasks start in order, monitors see it, it stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from piwheels import protocols
from piwheels.errors import TransportError, TransportTimeout
from piwheels.master.env import MasterEnv
from piwheels.master.main import TASKS, Master
from piwheels.master.process import TaskProcess
from piwheels.settings import Settings
from piwheels.tasks import Task
from piwheels.transport import DEALER, SUB, Context, generate_keys, load_keys
from tests.peer import ScriptedPeer, wait_for

TEMPLATE = "piwheels_template"


def master_settings(tmp: Path, sockets: Path, dsn: str) -> Settings:
    return (
        Settings()
        .replace("database", dsn=dsn)
        .replace(
            "master",
            output_path=tmp / "www",
            builder_endpoint=f"ipc://{sockets}/builder",
            file_endpoint=f"ipc://{sockets}/file",
            status_endpoint=f"ipc://{sockets}/status",
            control_endpoint=f"ipc://{sockets}/control",
            admin_endpoint=f"ipc://{sockets}/admin",
            log_endpoint=f"ipc://{sockets}/logger",
            stats_interval=timedelta(seconds=1),
            page_coalesce=timedelta(0),
        )
        .replace("keys", curve=False)
    )


@pytest.fixture
def master(new_database: Any, tmp_path: Path, tmp_short: Path) -> Iterator[Master]:
    url = new_database(template=TEMPLATE, prefix="piwmaster")
    settings = master_settings(tmp_path, tmp_short, url)
    m = Master(settings, engine=create_engine(url))
    yield m
    if m.tasks:
        m.stop()


def _run(master: Master) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    master.start()
    thread = threading.Thread(target=lambda: result.append(master.run()))
    thread.start()
    return thread, result


def test_monitor_sees_history_and_controls(master: Master) -> None:
    thread, result = _run(master)
    context = Context()
    sub = ScriptedPeer(
        context, SUB, reversed(protocols.status), connect=master.settings.master.status_endpoint
    )
    control = ScriptedPeer(
        context,
        DEALER,
        reversed(protocols.control),
        connect=master.settings.master.control_endpoint,
    )
    try:
        control.send("HELLO")
        history = control.expect("HISTORY").data
        assert history["master"]["paused"] is False
        got = sub.recv(timeout=10)
        while got.msg != "STATS":
            got = sub.recv(timeout=10)
        assert "queue" in got.data
        wait_for(lambda: (master.env.output_path / "index.html").exists(), timeout=20)
        assert (master.env.output_path / "simple" / "index.json").exists()
        control.send("PAUSE")
        control.expect("OK")
        # The task threads of this process (a task in a child process keeps its own state).
        threads = [t for t in master.tasks if isinstance(t, Task)]
        wait_for(lambda: all(t.paused for t in threads), timeout=10)
        control.send("RESUME")
        control.expect("OK")
        wait_for(lambda: not any(t.paused for t in threads), timeout=10)
        control.send("SLEEP", {"builder_id": 99})
        assert "no builder 99" in control.expect("ERROR").data["reason"]
        control.send("QUIT")
        control.expect("OK")
        thread.join(20)
        assert result == [0]
        assert not any(t.is_alive() for t in threading.enumerate() if isinstance(t, Task))
    finally:
        sub.close()
        control.close()
        context.zmq.term()


class Exploding(Task):
    """A task that fails after a moment, as a bug would."""

    role = "exploding"

    def __init__(self, context: Context, env: MasterEnv, *, on_fatal: Any = None) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.every(0.2, self.explode)

    def explode(self) -> None:
        raise RuntimeError("bug in a task")


def test_a_failing_task_stops_the_master(master: Master, caplog: pytest.LogCaptureFixture) -> None:
    failing = Master(master.settings, engine=master.engine, tasks=(*TASKS, Exploding))
    thread, result = _run(failing)
    thread.join(30)
    assert result == [1]
    assert "task exploding failed" in caplog.text
    assert "stopping: task exploding failed" in caplog.text
    assert not any(t.is_alive() for t in threading.enumerate() if isinstance(t, Task))


def _write_config(path: Path, settings: Settings) -> None:
    m = settings.master
    path.write_text(
        "[database]\n"
        f"dsn = {settings.database.dsn}\n"
        "[master]\n"
        f"output_path = {m.output_path}\n"
        f"builder_endpoint = {m.builder_endpoint}\n"
        f"file_endpoint = {m.file_endpoint}\n"
        f"status_endpoint = {m.status_endpoint}\n"
        f"control_endpoint = {m.control_endpoint}\n"
        f"admin_endpoint = {m.admin_endpoint}\n"
        f"log_endpoint = {m.log_endpoint}\n"
        "[keys]\ncurve = false\n"
    )


def test_piw_master_runs_and_stops_on_sigterm(master: Master, tmp_path: Path) -> None:
    config = tmp_path / "master.conf"
    _write_config(config, master.settings)
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from piwheels.master.main import main; main()",
            "-c",
            str(config),
            "-v",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_for(lambda: (master.env.output_path / "index.html").exists(), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "master started" in err


def test_piw_master_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("[master]\nbuilder_timeout = soon\nnope = 1\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from piwheels.master.main import main; main()", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode == 78
    assert "Traceback" not in proc.stderr
    assert "builder_timeout" in proc.stderr and "nope" in proc.stderr


def test_piw_master_refuses_an_unmigrated_database(
    new_database: Any, tmp_path: Path, tmp_short: Path
) -> None:
    url = new_database(prefix="piwempty")
    config = tmp_path / "master.conf"
    _write_config(config, master_settings(tmp_path, tmp_short, url))
    proc = subprocess.run(
        [sys.executable, "-c", "from piwheels.master.main import main; main()", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "piw-initdb" in proc.stderr


# -- the file receiver's own process -------------------------------------------------------


def _receiver_process(master: Master) -> TaskProcess:
    (proc,) = [t for t in master.tasks if isinstance(t, TaskProcess)]
    assert proc.role == "file_receiver"
    return proc


def _gone(pid: int) -> bool:
    """True once *pid* has exited (a zombie left to an init that does not reap counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _hello(context: Context, address: str, transfer: str, **curve: Any) -> str | None:
    """What the file receiver answers a new sender's HELLO for *transfer* (the reason of its
    ERROR), or None when nothing comes back (a refused CurveZMQ handshake: *curve* gives
    the client's keys)."""
    peer = ScriptedPeer(context, DEALER, reversed(protocols.files), timeout=3)
    try:
        if curve:
            peer.socket.curve_client(curve["keys"], curve["server_public"])
        peer.socket.connect(address)
        # A socket whose handshake was refused has no peer to send to: the send times out.
        peer.socket.send_msg("HELLO", {"transfer": transfer}, timeout=3)
        return str(peer.expect("ERROR").data["reason"])
    except TransportTimeout:
        return None
    finally:
        peer.close()


def test_the_file_receiver_runs_in_a_process_of_its_own(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own pid and name, its internal socket in a folder only this user may enter, its
    log records in this process's log, and all of it gone when the master stops."""
    assert master.runtime_dir is not None
    assert not master.runtime_dir.exists()  # a master made and never started leaves nothing
    thread, result = _run(master)
    context = Context()
    try:
        proc = _receiver_process(master)
        assert proc.pid is not None and proc.pid != os.getpid()
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "piw-file-recv"
        assert master.runtime_dir is not None
        assert master.env.addresses["transfers"] == f"ipc://{master.runtime_dir}/transfers"
        assert master.runtime_dir.stat().st_mode & 0o777 == 0o700
        # It answers on the file endpoint, and what it logs reaches this process's loggers.
        reason = _hello(context, master.settings.master.file_endpoint, "no-such-transfer")
        assert reason is not None and "unknown transfer" in reason
        wait_for(lambda: "for unknown transfer 'no-such-transfer'" in caplog.text, timeout=10)
        (record,) = [r for r in caplog.records if "no-such-transfer" in r.getMessage()]
        assert (record.name, record.levelname) == ("piwheels.filetransfer", "WARNING")
        assert record.process == proc.pid
        master.request("QUIT")
        thread.join(30)
        assert result == [0]
        assert _gone(proc.pid)
        assert not master.runtime_dir.exists()
    finally:
        context.zmq.term()


def test_the_file_receiver_process_killed_stops_the_master(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    thread, result = _run(master)
    proc = _receiver_process(master)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    thread.join(30)
    assert result == [1]
    assert "the file_receiver process exited with code -9" in caplog.text
    assert "stopping: task file_receiver failed" in caplog.text


def test_a_file_receiver_that_cannot_bind_fails_the_start(master: Master) -> None:
    """The child's error is the master's, at start, and no child is left behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = master.settings.replace("master", file_endpoint=f"tcp://127.0.0.1:{port}")
        other = Master(settings, engine=master.engine)
        with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
            other.start()
        started = [t for t in other.tasks if isinstance(t, TaskProcess)]
        other.stop()
    assert not started  # it never joined the master's tasks
    assert other.runtime_dir is not None and not other.runtime_dir.exists()


def test_reload_admits_a_new_builder_key_in_every_process(master: Master, tmp_path: Path) -> None:
    """RELOAD (SIGHUP in piw-master) has the dispatcher's process and the file receiver's
    read the authorized keys again: a key added while the master runs is admitted."""
    keys = tmp_path / "keys"
    generate_keys(keys / "server", "master")
    (keys / "authorized").mkdir()
    settings = master.settings.replace(
        "keys",
        curve=True,
        secret_key_file=keys / "server" / "master.key_secret",
        authorized_keys_dir=keys / "authorized",
    )
    curved = Master(settings, engine=master.engine)
    thread, result = _run(curved)
    context = Context()
    try:
        generate_keys(keys / "late", "late-builder")
        client = {
            "keys": load_keys(keys / "late" / "late-builder.key_secret"),
            "server_public": load_keys(keys / "server" / "master.key").public,
        }
        address = settings.master.file_endpoint
        assert _hello(context, address, "before-reload", **client) is None
        shutil.copy(keys / "late" / "late-builder.key", keys / "authorized")
        curved.request("RELOAD")
        # The request is handled by the master's loop; a sender that connects after it
        # has been handled is admitted.
        wait_for(lambda: _hello(context, address, "after-reload", **client), timeout=20)
        curved.request("QUIT")
        thread.join(30)
        assert result == [0]
    finally:
        if curved.tasks:
            curved.stop()
        context.zmq.term()


def test_the_file_receiver_process_ends_with_a_killed_master(
    master: Master, tmp_path: Path
) -> None:
    """piw-master killed outright (no chance to stop its tasks): its file receiver notices
    that the master is gone and ends too, and so does every other child."""
    config = tmp_path / "master.conf"
    _write_config(config, master.settings)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from piwheels.master.main import main; main()", "-c", str(config)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},  # its runtime folder
    )
    try:
        wait_for(lambda: (master.env.output_path / "index.html").exists(), timeout=30)
        children = _descendants(proc.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in children}
        assert {"piw-file-recv", "piw-site"} <= names
    finally:
        proc.kill()
        proc.wait(30)
    wait_for(lambda: all(_gone(pid) for pid in children), timeout=30)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            kids = [int(k) for k in (task / "children").read_text().split()]
            out.extend(kids)
            todo.extend(kids)
    return out
