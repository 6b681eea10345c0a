"""The whole master: tasks start in order, monitors see it, it stops cleanly."""

from __future__ import annotations

import os
import signal
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
from piwheels.master.env import MasterEnv
from piwheels.master.main import TASKS, Master
from piwheels.settings import Settings
from piwheels.tasks import Task
from piwheels.transport import DEALER, SUB, Context
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
        wait_for(lambda: all(t.paused for t in master.tasks), timeout=10)
        control.send("RESUME")
        control.expect("OK")
        wait_for(lambda: not any(t.paused for t in master.tasks), timeout=10)
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
