"""README.rst followed literally: its first command, in a fresh clone, brings up a farm.

The command is read from README.rst (its first literal block), so this test
follows the README as it is.  It runs in a ``git clone`` of this repository's
HEAD, with this machine's environment and pip configuration: the demo creates
its own ``.venv``, installs into it and fetches real sdists from PyPI through
pip's configuration, which is what the README promises.  This is the one test
that needs PyPI (through pip); everything after the fetch stays on loopback.

Then, as a person would: wait for the builds, install one package from the
printed index URL with the printed pip command into a fresh venv (pip's
configuration of this machine switched off, so nothing but the demo's index
can supply it), press Ctrl-C (SIGINT to the process group), check that
everything stopped, and run the command again: it resumes without rebuilding.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from docutils import nodes
from docutils.core import publish_doctree
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
INDEX = re.compile(r"^\s*index:\s+(http://127\.0\.0\.1:(\d+)/simple/)\s*$")
PIP = re.compile(r"^\s*(pip install .*\S)\s*$")
UV = re.compile(r"^\s*(uv pip install .*\S)\s*$")
PROGRESS = re.compile(r"^queued (\d+), building (\d+), built (\d+), failed (\d+)\s*$")
DONE = re.compile(r"first round done: queued (\d+), building (\d+), built (\d+), failed (\d+)")
RECORDED = re.compile(r"^piw-demo: recorded (.+)$", re.M)
#: Creating the venv and installing into it is most of a first run (PyPI round trips).
FIRST_RUN_TIMEOUT = 1200.0
RESUME_TIMEOUT = 300.0
STOP_TIMEOUT = 180.0


def readme_commands() -> list[str]:
    """The literal blocks of README.rst, in order (each a command to type)."""
    doctree = publish_doctree(
        (ROOT / "README.rst").read_text(encoding="utf-8"),
        settings_overrides={"report_level": 5, "halt_level": 5},
    )
    return [block.astext().strip() for block in doctree.findall(nodes.literal_block)]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of *pid* (tells a reused pid apart), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


class Demo:
    """The README command as a subprocess in its own process group, output read by line."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.data = cwd / ".piwheels-demo"
        self.proc = subprocess.Popen(
            shlex.split(command),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, as in a terminal
        )
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.times: list[float] = []  # when each line came, seconds after the start
        self.seen: dict[int, str] = {}  # pid -> start time of every process it ran
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def note_processes(self) -> None:
        """Record the command's processes now: its tree and the demo's pid files."""
        pids = [self.proc.pid]
        tree = _children()
        todo = [self.proc.pid]
        while todo:
            kids = tree.get(todo.pop(), [])
            pids.extend(kids)
            todo.extend(kids)
        # PostgreSQL daemonizes away from the tree; nginx and the builder have
        # sessions of their own: their pid files and command lines find them.
        for pidfile in (
            self.data / "postgres" / "data" / "postmaster.pid",
            self.data / "nginx" / "logs" / "nginx.pid",
        ):
            try:
                pids.append(int(pidfile.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        conf = str(self.data / "builder.conf").encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if conf in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        for pid in pids:
            start = _start_time(pid)
            if start is not None:
                self.seen.setdefault(pid, start)

    def alive(self) -> list[str]:
        """The recorded processes still running, as 'pid command'."""
        left = []
        for pid, start in self.seen.items():
            if _start_time(pid) == start:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                left.append(f"{pid} {cmd.decode(errors='replace')}")
        return left

    def expect(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first new line matching *pattern*; fails on exit or after *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            self.note_processes()
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(
                    f"no line matching {pattern.pattern!r} in {timeout:.0f} s" + self.tail()
                )
            try:
                line = self._queue.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the command exited before {pattern.pattern!r}" + self.tail())
            self.lines.append(line)
            self.times.append(time.monotonic() - self.started)
            found = pattern.search(line)
            if found:
                return found

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the whole process group; the exit status."""
        self.note_processes()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT:.0f} s after SIGINT" + self.tail())
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
            self.times.append(time.monotonic() - self.started)
        return code

    def kill(self) -> None:
        """After a failure: nothing of it may outlive the test."""
        self.note_processes()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, start in self.seen.items():
            if _start_time(pid) == start:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.proc.wait(30)

    def when(self, prefix: str) -> float:
        """Seconds from the start to the first line starting with *prefix*."""
        return next(
            t for t, line in zip(self.times, self.lines, strict=True) if line.startswith(prefix)
        )

    def text(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 60) -> str:
        out = "\n--- output (tail) ---\n" + "\n".join(self.lines[-count:])
        log = self.data / "logs" / "builder.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-20:]
            out += "\n--- builder.log (tail) ---\n" + "\n".join(lines)
        return out


def _env() -> dict[str, str]:
    """This machine's environment, minus what the test run itself added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PIWHEELS_TEST"))}
    env.pop("PYTHONPATH", None)
    return env


def _clean_pip_env(venv: Path) -> dict[str, str]:
    """The environment of an activated *venv* with this machine's pip configuration off."""
    env = {k: v for k, v in _env().items() if not k.startswith(("PIP_", "UV_"))}
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
    )
    return env


def _ports(data: Path) -> set[int]:
    """Every loopback port in the demo's configuration files (index, master, build index)."""
    found: set[int] = set()
    for name in ("master.conf", "builder.conf"):
        text = (data / name).read_text()
        found.update(int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text))
        found.update(int(p) for p in re.findall(r"^\w+_port = (\d+)$", text, re.M))
    return found


def _open_ports(ports: set[int]) -> list[int]:
    still = []
    for port in sorted(ports):
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                still.append(port)
    return still


def _wheels(data: Path) -> dict[Path, int]:
    """Published wheels (each once: alias spellings are symlinked folders) -> mtime."""
    simple = data / "www" / "simple"
    return {p: p.stat().st_mtime_ns for p in simple.glob("*/*.whl") if not p.parent.is_symlink()}


def _check_stopped(demo: Demo, code: int, ports: set[int]) -> None:
    assert code == 0, f"exit status {code}" + demo.tail()
    assert "stopping (SIGINT)" in demo.text(), demo.tail()
    # Children that outlive the demo by a moment (the page writer's forkserver notices
    # that its parent is gone when it next runs) count as stopped; ten seconds do not.
    deadline = time.monotonic() + 10
    while demo.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert demo.alive() == [], demo.tail()
    assert not (demo.data / "postgres" / "data" / "postmaster.pid").exists()
    assert not (demo.data / "nginx" / "logs" / "nginx.pid").exists()
    assert _open_ports(ports) == [], demo.tail()


def _installed_from(wheel: Path, venv: Path) -> None:
    """Every file of *wheel* (outside .dist-info) is in *venv*, byte for byte."""
    site = next(venv.glob("lib/python3*/site-packages"))
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if ".dist-info/" not in n and not n.endswith("/")]
        assert members, wheel
        for name in members:
            assert (site / name).read_bytes() == zf.read(name), f"{name} is not {wheel.name}'s"


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """A fresh clone of this repository's HEAD; its venv (hundreds of MB) goes afterwards."""
    dest = tmp_path / "piwheels"
    subprocess.run(
        ["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, capture_output=True
    )
    yield dest
    shutil.rmtree(dest / ".venv", ignore_errors=True)


def test_readme_has_the_demo_command_first() -> None:
    commands = readme_commands()
    assert len(commands) >= 2, commands
    assert all("\n" not in c for c in commands[:2]), "each README command is one line"
    assert shlex.split(commands[0])[:2] == ["python3", "-m"], commands[0]


def test_readme_first_command_on_a_clean_checkout(clone: Path, tmp_path: Path) -> None:
    command = readme_commands()[0]
    started = time.monotonic()

    # First run: venv, install, fetch, initdb, builds.
    demo = Demo(command, clone, _env())
    try:
        index_url, index_port = demo.expect(INDEX, FIRST_RUN_TIMEOUT).groups()
        assert "devenv: creating .venv" in demo.text(), demo.tail()
        recorded = RECORDED.search(demo.text())
        assert recorded is not None, demo.tail()
        packages = [item.split()[0] for item in recorded.group(1).split(", ")]
        pip_command = demo.expect(PIP, 30).group(1)
        uv_command = demo.expect(UV, 30).group(1)
        assert index_url in pip_command and index_url in uv_command
        first = demo.expect(PROGRESS, 60)
        done = demo.expect(DONE, FIRST_RUN_TIMEOUT - (time.monotonic() - started))
        # Progress was shown while it built, and every release was built.
        assert int(first.group(3)) < len(packages), demo.tail()
        assert done.groups() == ("0", "0", str(len(packages)), "0"), demo.tail()
        wheels = _wheels(demo.data)
        assert len(wheels) == len(packages), (wheels, packages)

        # The printed pip command, in a fresh venv, with nothing but the demo's index.
        project = shlex.split(pip_command)[-1]
        venv = tmp_path / "venv"
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)],
                       check=True, timeout=300)  # fmt: skip
        result = subprocess.run(
            shlex.split(pip_command), env=_clean_pip_env(venv), cwd=tmp_path,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr + demo.tail()
        wheel = next(w for w in wheels if w.parent.name == canonicalize_name(project))
        _installed_from(wheel, venv)
        # And the uv command (uv is one of the test tools), into another venv.
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        uv_venv = tmp_path / "uv-venv"
        subprocess.run([str(venv / "bin" / "python"), "-m", "venv", str(uv_venv)], check=True)
        uv_env = {**_clean_pip_env(uv_venv), "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
        argv = shlex.split(uv_command)
        result = subprocess.run([uv, *argv[1:]], env=uv_env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr + demo.tail()
        _installed_from(wheel, uv_venv)

        ports = _ports(demo.data) | {int(index_port)}
        running = "\n".join(demo.alive())
        for part in ("postgres", "nginx: master", "builder.conf", "piwheels.demo"):
            assert part in running, (part, running)
        code = demo.interrupt()
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    _check_stopped(demo, code, ports)
    first_run = time.monotonic() - started

    # Again: the same data, nothing installed, fetched, recorded or rebuilt.
    again_started = time.monotonic()
    again = Demo(command, clone, _env())
    try:
        index_port = again.expect(INDEX, RESUME_TIMEOUT).group(2)
        done = again.expect(DONE, RESUME_TIMEOUT)
        assert done.groups() == ("0", "0", str(len(packages)), "0"), again.tail()
        ports = _ports(again.data) | {int(index_port)}
        code = again.interrupt()
    finally:
        if again.proc.poll() is None:
            again.kill()
    _check_stopped(again, code, ports)
    for word in ("devenv: installing", "creating .venv", "fetching", "recorded", "initdb"):
        assert word not in again.text(), (word, again.tail())
    assert _wheels(again.data) == wheels
    # The figures for the record (pytest -s shows them; nothing asserts a time).
    print(
        f"\nREADME demo: venv+install {demo.when('piw-demo: data folder'):.0f} s, "
        f"fetch+start {demo.when('  index:') - demo.when('piw-demo: data folder'):.0f} s, "
        f"builds {demo.when('piw-demo: first round done') - demo.when('  index:'):.0f} s, "
        f"first run {first_run:.0f} s, resume {time.monotonic() - again_started:.0f} s"
    )
