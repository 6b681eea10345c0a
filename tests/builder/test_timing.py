"""Step timings of the build path (piwheels.builder.timing) and what each step records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from piwheels.builder import analyse_wheel
from piwheels.builder.sandbox import python_roots, resolve_sandbox, run_limited
from piwheels.builder.timing import Timings
from tests.builder.test_build import HAVE_BWRAP, _processes_with


def test_steps_record_wall_and_child_cpu() -> None:
    timings = Timings()
    with timings.step("child"):
        subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)
    with timings.step("child"):
        pass
    [first, second] = timings.steps
    assert first.name == "child"
    # A reaped child's CPU counts; an empty step's wall time cannot exceed the child's.
    assert first.cpu > 0
    assert first.wall >= second.wall
    total = timings.totals()["child"]
    assert total.wall == first.wall + second.wall
    assert total.cpu == first.cpu + second.cpu
    assert timings.summary().startswith("child ")


def test_a_step_that_raises_is_recorded() -> None:
    timings = Timings()
    with pytest.raises(ValueError), timings.step("boom"):
        raise ValueError("x")
    assert [s.name for s in timings.steps] == ["boom"]


@pytest.mark.parametrize(
    ("sandbox", "steps"),
    [
        pytest.param(
            "on",
            ["prepare", "pip wheel", "log read"],
            marks=pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed"),
        ),
        ("off", ["prepare", "pip wheel", "straggler scan", "log read"]),
    ],
)
def test_build_steps(build, sandbox: str, steps: list[str]) -> None:  # type: ignore[no-untyped-def]
    from tests import sdists

    timings = Timings()
    result = build(sdists.pure_sdist, f"piwtest-timed-{sandbox}", sandbox=sandbox, timings=timings)
    assert result.ok, result.log[-3000:]
    assert [s.name for s in timings.steps] == steps


# A child that leaves the session and outlives the command (double fork + setsid).
# The command leaves exactly one process behind: it waits for the middle process, so a
# straggler scan under load cannot also find that one on its way out.
_ESCAPE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        sleep = "import time; time.sleep(300)"
        os.execv(sys.executable, [sys.executable, "-c", sleep, sys.argv[1]])
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize(
    "sandbox",
    [
        pytest.param(
            "on", marks=pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
        ),
        "off",
    ],
)
def test_escaped_process_is_killed(tmp_path: Path, sandbox: str) -> None:
    token = f"piwtest-escape-{uuid.uuid4().hex}"
    timings = Timings()
    with open(tmp_path / "log", "wb") as log:
        result = run_limited(
            [sys.executable, "-c", _ESCAPE, token],
            env={"PATH": os.defpath},
            cwd=tmp_path,
            output=log,
            timeout=60,
            bwrap=resolve_sandbox(sandbox),
            ro_binds=python_roots(sys.executable),
            rw_binds=[tmp_path],
            timings=timings,
        )
    assert result.returncode == 0, (tmp_path / "log").read_text()
    names = [s.name for s in timings.steps]
    if sandbox == "on":
        # The PID namespace ended with the command: the kernel killed the escapee, no
        # scan was needed (under load it may take a moment to vanish from /proc, below).
        assert names == ["run"]
        assert result.stragglers == 0
    else:
        assert names == ["run", "straggler scan"]
        assert result.stragglers == 1
    deadline = time.monotonic() + 10
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed process disappears once reaped
    assert _processes_with(token) == []


def test_wheel_without_elf_files_skips_dpkg(built) -> None:  # type: ignore[no-untyped-def]
    timings = Timings()
    analysis = analyse_wheel(built("pure").wheels[0], timings=timings)
    assert analysis.libraries == ()
    assert [s.name for s in timings.steps] == ["wheel check", "ELF scan"]


def test_wheel_with_elf_files_asks_dpkg(built) -> None:  # type: ignore[no-untyped-def]
    timings = Timings()
    analysis = analyse_wheel(built("zlib").wheels[0], timings=timings)
    assert "zlib1g" in analysis.apt_packages
    assert [s.name for s in timings.steps] == ["wheel check", "ELF scan", "dpkg -S"]
