"""The demo command end to end: a real farm from a folder of generated sdists, offline.

The demo starts its own PostgreSQL, master, builder and nginx (that is what it
is for), so this test does not use the suite's cluster.  Sdists and build
requirements are generated here (tests/sdists.py); pip runs with
PIP_CONFIG_FILE=/dev/null and --no-index, so nothing reaches the network.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from piwheels import demo
from tests.sdists import build_requirement_wheels, c_ext_sdist, pure_sdist

ROOT = Path(__file__).resolve().parent.parent
OFFLINE = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}
DONE = re.compile(r"first round done: queued (\d+), building (\d+), built (\d+), failed (\d+)")
INDEX = re.compile(r"index:\s+(http://127\.0\.0\.1:\d+/simple/)")


@dataclass
class Running:
    """A demo subprocess with its output collected line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: re.Pattern[str], timeout: float = 600) -> re.Match[str]:
        """Wait for a line matching *pattern* (fails on exit or after *timeout* s)."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern!r}; output:\n" + self.text())
            if line is None:
                pytest.fail(f"demo exited before {pattern.pattern!r}; output:\n" + self.text())
            self.lines.append(line)
            found = pattern.search(line)
            if found:
                return found

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of two sdists (pure, C extension) and one of build-requirement wheels."""
    base = tmp_path_factory.mktemp("demo-inputs")
    sdists, reqs = base / "sdists", base / "reqs"
    pure_sdist(sdists)
    c_ext_sdist(sdists)
    build_requirement_wheels(reqs)
    return sdists, reqs


def _wheels(data: Path) -> list[Path]:
    """Published wheels, each once (alias spellings are symlinks to the real folder)."""
    simple = data / "www" / "simple"
    return [p for p in simple.glob("*/*.whl") if not p.parent.is_symlink()]


def _start(data: Path, sdists: Path, reqs: Path, *extra: str) -> Running:
    cmd = [sys.executable, "-m", "piwheels.demo", "--data", str(data), "--sdists", str(sdists),
           "--find-links", str(reqs), "--no-index", "--interval", "0.5", *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=OFFLINE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Running(proc)


def _pids(data: Path) -> dict[str, int]:
    """The PostgreSQL, nginx and builder processes of the demo in *data*."""
    found: dict[str, int] = {}
    pg = data / "postgres" / "data" / "postmaster.pid"
    if pg.exists():
        found["postgres"] = int(pg.read_text().split()[0])
    ng = data / "nginx" / "logs" / "nginx.pid"
    if ng.exists():
        found["nginx"] = int(ng.read_text().split()[0])
    conf = str(data / "builder.conf").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if conf in (entry / "cmdline").read_bytes():
                    found["builder"] = int(entry.name)
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "demo-data"
    yield path
    # Whatever a failed test left running goes (by the pids it recorded).
    for pid in _pids(path).values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_demo_builds_serves_stops_and_resumes(inputs: tuple[Path, Path], data: Path) -> None:
    sdists, reqs = inputs
    run = _start(data, sdists, reqs)
    try:
        index_url = run.expect(INDEX).group(1)
        done = run.expect(DONE)
        assert done.groups() == ("0", "0", "2", "0"), run.text()
        wheels = sorted(p.name for p in _wheels(data))
        assert len(wheels) == 2, wheels
        assert any(w.startswith("piwtest_cext-1.0-cp3") for w in wheels), wheels
        assert "piwtest_pure-1.0-py3-none-any.whl" in wheels

        # pip, with no configuration of this machine, from the demo's index alone.
        target = data.parent / "pip-target"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir",
             "--disable-pip-version-check", "--index-url", index_url, "--target", str(target),
             "piwtest-cext"],
            env=OFFLINE, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        answer = subprocess.run(
            [sys.executable, "-c", "import piwtest_cext; print(piwtest_cext.answer())"],
            env={**OFFLINE, "PYTHONPATH": str(target)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert answer.stdout.strip() == "42"
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        uv_target = data.parent / "uv-target"
        subprocess.run(
            [uv, "pip", "install", "--no-deps", "--no-config", "--index-url", index_url,
             "--target", str(uv_target), "--cache-dir", str(data.parent / "uv-cache"),
             "piwtest-pure"],
            env=OFFLINE, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        assert (uv_target / "piwtest_pure").is_dir()

        pids = _pids(data)
        assert set(pids) == {"postgres", "nginx", "builder"}, pids
        run.proc.send_signal(signal.SIGINT)
        assert run.finish() == 0, run.text()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert "stopping (SIGINT)" in run.text()
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert not (data / "postgres" / "data" / "postmaster.pid").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in _wheels(data)}

    # Again: the same data, nothing rebuilt, and it exits by itself.
    again = _start(data, sdists, reqs, "--exit-when-built")
    try:
        done = again.expect(DONE)
        assert done.groups() == ("0", "0", "2", "0"), again.text()
        assert again.finish() == 0, again.text()
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
    assert "recorded" not in again.text()  # the releases were already there
    assert "fetching" not in again.text()
    assert {p: p.stat().st_mtime_ns for p in _wheels(data)} == mtimes
    assert not any(_alive(pid) for pid in _pids(data).values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sdists", "/nonexistent/sdists"], "--sdists /nonexistent/sdists: not a folder"),
        (["--upstream", "ftp://example.invalid/simple/"], "--upstream must be an http(s) URL"),
        (["--package", "not a name!"], "--package 'not a name!'"),
        (["--upstream", "http://127.0.0.1:9/simple/", "--sdists", "."], "exclude each other"),
        (["--port", "70000"], "--port 70000: not a port number"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(argv) != 0
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_sdists_folder_without_sdists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no sdists here\n")
    code = demo.main(["--data", str(tmp_path / "d"), "--sdists", str(empty)])
    assert code != 0
    assert "no sdists (.tar.gz or .zip) in it" in capsys.readouterr().err
    # Nothing was started: no database folder was made.
    assert not (tmp_path / "d" / "postgres").exists()


def test_build_requires_read_from_sdists(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    sdists, _ = inputs
    for path in sdists.iterdir():
        assert demo.build_requires(path) == ["setuptools"]
    legacy = tmp_path / "legacy-1.0.tar.gz"
    import io
    import tarfile

    with tarfile.open(legacy, "w:gz") as tar:
        data = b"from setuptools import setup\nsetup()\n"
        info = tarfile.TarInfo("legacy-1.0/setup.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert demo.build_requires(legacy) == list(demo.LEGACY_BUILD_REQUIRES)
    broken = tmp_path / "broken-1.0.tar.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(demo.UpstreamError, match=r"broken-1\.0\.tar\.gz: not a readable sdist"):
        demo.build_requires(broken)
