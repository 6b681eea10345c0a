"""Step timings of the build path (piwheels.builder.timing) and what each step records."""

from __future__ import annotations

import subprocess
import sys

import pytest

from piwheels.builder import analyse_wheel
from piwheels.builder.timing import Timings


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


def test_build_steps(build) -> None:  # type: ignore[no-untyped-def]
    from tests import sdists

    timings = Timings()
    result = build(sdists.pure_sdist, "piwtest-timed", timings=timings)
    assert result.ok, result.log[-3000:]
    assert [s.name for s in timings.steps] == ["prepare", "pip wheel", "straggler scan", "log read"]


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
