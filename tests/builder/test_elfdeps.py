"""The dpkg -S and ldconfig answers the builder keeps between builds (piwheels.builder.elfdeps)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from piwheels.builder import elfdeps

pytestmark = pytest.mark.skipif(
    subprocess.run(["dpkg", "--version"], capture_output=True).returncode != 0,
    reason="needs dpkg (a Debian system)",
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The commands elfdeps runs (still run for real), with caches keyed on our own files."""
    seen: list[str] = []
    real = subprocess.run

    def counting(args, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(os.path.basename(args[0]))
        return real(args, *a, **kw)

    monkeypatch.setattr(elfdeps.subprocess, "run", counting)
    for name, attr in (("status", "DPKG_STATUS"), ("ld.so.cache", "LD_SO_CACHE")):
        (tmp_path / name).write_text("1")
        monkeypatch.setattr(elfdeps, attr, str(tmp_path / name))
    for cache in (elfdeps._owners, elfdeps._ldconfig):
        monkeypatch.setattr(cache, "stamp", None)
        monkeypatch.setattr(cache, "data", {})
    return seen


def _change(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_dpkg_answers_are_kept(calls: list[str], built) -> None:  # type: ignore[no-untyped-def]
    wheel = built("zlib").wheels[0]
    first = elfdeps.wheel_library_deps(wheel)
    assert "zlib1g" in {lib.package for lib in first}
    assert calls.count("dpkg") == 1
    assert calls.count("ldconfig") == 1
    # Same libraries again: answered from what was kept, same result.
    assert elfdeps.wheel_library_deps(wheel) == first
    assert calls.count("dpkg") == 1
    assert calls.count("ldconfig") == 1


def test_unowned_path_is_kept_as_unowned(calls: list[str]) -> None:
    missing = "/usr/lib/piwtest-no-such-dir/libnothing.so.1"
    assert elfdeps.dpkg_owners([missing]) == {}
    assert elfdeps.dpkg_owners([missing]) == {}
    assert calls.count("dpkg") == 1


def test_only_new_paths_are_asked(calls: list[str]) -> None:
    dpkg_bin = os.path.realpath("/usr/bin/dpkg")
    first = elfdeps.dpkg_owners([dpkg_bin])
    assert first == {dpkg_bin: "dpkg"}
    missing = "/usr/lib/piwtest-no-such-dir/libother.so.2"
    assert elfdeps.dpkg_owners([dpkg_bin, missing]) == first
    assert calls.count("dpkg") == 2
    assert elfdeps.dpkg_owners([missing, dpkg_bin]) == first
    assert calls.count("dpkg") == 2


def test_package_change_drops_the_answers(calls: list[str], built) -> None:  # type: ignore[no-untyped-def]
    wheel = built("zlib").wheels[0]
    first = elfdeps.wheel_library_deps(wheel)
    _change(elfdeps.DPKG_STATUS)  # as dpkg does when a package is installed or removed
    assert elfdeps.wheel_library_deps(wheel) == first
    assert calls.count("dpkg") == 2
    assert calls.count("ldconfig") == 1
    _change(elfdeps.LD_SO_CACHE)
    assert elfdeps.wheel_library_deps(wheel) == first
    assert calls.count("ldconfig") == 2


def test_no_caching_without_the_status_file(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(elfdeps, "DPKG_STATUS", "/nonexistent/piwtest/status")
    dpkg = os.path.realpath("/usr/bin/dpkg")
    assert elfdeps.dpkg_owners([dpkg]) == {dpkg: "dpkg"}
    assert elfdeps.dpkg_owners([dpkg]) == {dpkg: "dpkg"}
    assert calls.count("dpkg") == 2


def test_pure_wheel_runs_neither(calls: list[str], built) -> None:  # type: ignore[no-untyped-def]
    assert elfdeps.wheel_library_deps(built("pure").wheels[0]) == ()
    assert calls == []
