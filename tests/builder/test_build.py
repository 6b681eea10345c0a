"""Real pip builds of generated sdists under limits (piwheels.builder.build)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from piwheels.builder import (
    DiskSpaceLow,
    analyse_wheel,
    build_wheel,
    classify_failure,
    resolve_sandbox,
    sandbox_status,
)
from piwheels.errors import BuildError, InvalidName
from piwheels.wheels import abis_served, read_wheel
from tests import sdists

pytestmark = pytest.mark.slow
HAVE_BWRAP = shutil.which("bwrap") is not None


def _processes_with(token: str) -> list[int]:
    """Pids whose command line mentions *token*."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_pure_package_builds(built) -> None:  # type: ignore[no-untyped-def]
    result = built("pure")
    assert result.status == "success"
    assert result.failure_class is None
    assert result.returncode == 0
    assert [w.name for w in result.wheels] == ["piwtest_pure-1.0-py3-none-any.whl"]
    assert result.sandboxed == HAVE_BWRAP
    assert result.duration > 0
    # The log has our header, pip's output and our trailer.
    assert "piwheels build of piwtest-pure 1.0" in result.log
    assert "Successfully built piwtest-pure" in result.log or "Saved" in result.log
    assert "pip exited with status 0" in result.log
    assert result.log_path.read_text(errors="replace") == result.log
    assert result.log_dropped == 0


def test_c_extension_builds(built) -> None:  # type: ignore[no-untyped-def]
    result = built("cext")
    (wheel,) = result.wheels
    info = read_wheel(wheel)
    assert info.abi_tag.startswith("cp3")
    assert info.modules == ("piwtest_cext",)
    # The compiler's output is in the log (pip runs with -v).
    assert "gcc" in result.log


def test_compile_error(build) -> None:  # type: ignore[no-untyped-def]
    result = build(sdists.compile_error_sdist)
    assert result.status == "failed"
    assert result.failure_class == "compile_error"
    assert result.wheels == ()
    assert "error:" in result.log
    assert "this is not C" in result.log or "piwtest_broken_c.c" in result.log


def test_missing_header_is_dependency_missing(build) -> None:  # type: ignore[no-untyped-def]
    result = build(sdists.missing_header_sdist)
    assert result.status == "failed"
    assert result.failure_class == "dependency_missing"
    assert "piwtest_no_such_header.h" in result.log


def test_missing_version_fails_as_other(build) -> None:  # type: ignore[no-untyped-def]
    result = build(sdists.pure_sdist, "piwtest-pure-nover", version="9.9")
    assert result.status == "failed"
    assert result.failure_class == "other"
    assert "9.9" in result.log


@pytest.mark.parametrize(
    "sandbox",
    [
        pytest.param(
            "on", marks=pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
        ),
        "off",
    ],
)
def test_timeout_kills_the_whole_tree(build, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    token = f"piwtest-sleep-{uuid.uuid4().hex}"
    result = build(
        sdists.sleeper_sdist,
        token,
        f"piwtest-sleeper-{sandbox}",
        timeout=15.0,
        grace=2.0,
        sandbox=sandbox,
    )
    assert result.status == "failed"
    assert result.failure_class == "timeout"
    assert result.returncode is None
    # The children were running (the setup script got that far) ...
    assert "piwtest sleeper started" in result.log
    assert "build killed after the timeout of 15 s" in result.log
    # ... and none survived, not even the one that started its own session.
    assert _processes_with(token) == []


def test_log_is_complete(build) -> None:  # type: ignore[no-untyped-def]
    marker = f"PIWTEST-END-MARKER-{uuid.uuid4().hex}"
    lines = 8_000
    result = build(sdists.noisy_sdist, lines, marker, log_limit=64 * 1024)
    assert result.status == "success"
    # The in-memory log keeps head and tail and says how much it left out ...
    assert result.log_dropped > 0
    assert f"{result.log_dropped} bytes of this log left out" in result.log
    assert result.log.startswith("piwheels build of piwtest-noisy 1.0")
    assert marker in result.log
    assert "pip exited with status 0" in result.log
    # ... and the file on disk has every line.
    full = result.log_path.read_text()
    assert result.log_size == result.log_path.stat().st_size > lines * 50
    for i in (0, 1, lines // 2, lines - 1):
        assert f"piwtest noise line {i:08d} " in full
    assert marker in full


def test_disk_low_refuses_without_building(local_index, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DiskSpaceLow) as err:
        build_wheel(
            "piwtest-pure",
            "1.0",
            index_url=local_index.url,
            work_dir=tmp_path,
            timeout=60,
            memory_limit=None,
            min_free_disk=free + 1024**4,
        )
    assert isinstance(err.value, BuildError)
    assert err.value.required == free + 1024**4
    assert "MiB free in" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_memory_limit(build) -> None:  # type: ignore[no-untyped-def]
    result = build(sdists.memory_hog_sdist, 3 * 1024**3, memory_limit=1024**3)
    assert result.status == "failed"
    assert result.failure_class == "memory"
    assert "MemoryError" in result.log


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
def test_sandbox_confines_the_build(build) -> None:  # type: ignore[no-untyped-def]
    token = f"piwtest-probe-{uuid.uuid4().hex}"
    result = build(sdists.probe_sdist, token, sandbox="on")
    assert result.status == "success", result.log[-3000:]
    assert result.sandboxed
    assert "PROBE usr-writable: no (Read-only file system)" in result.log
    assert "PROBE etc-writable: no (Read-only file system)" in result.log
    assert "PROBE build-flag: 1" in result.log
    assert f"PROBE home: {result.build_dir / 'sandbox' / 'home'}" in result.log
    # Its /tmp was private: the file it left there is in the build's own tmp.
    assert not Path("/tmp", token).exists()
    assert (result.build_dir / "sandbox" / "tmp" / token).exists()


def test_sandbox_on_without_bwrap_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert sandbox_status() == "bubblewrap not found: builds NOT sandboxed"
    assert resolve_sandbox("auto") is None
    with pytest.raises(BuildError, match="bubblewrap"):
        build_wheel(
            "piwtest-pure",
            "1.0",
            index_url="http://127.0.0.1:1/simple/",
            work_dir=tmp_path,
            timeout=60,
            memory_limit=None,
            min_free_disk=0,
            sandbox="on",
        )


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
def test_sandbox_status_names_bwrap() -> None:
    status = sandbox_status()
    assert status.startswith("bubblewrap ")
    assert status.endswith(": builds sandboxed")
    assert sandbox_status("off") == "sandbox switched off: builds NOT sandboxed"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(package="--upgrade"), InvalidName, "must start and end"),
        (dict(version="1.0 ; rm"), InvalidName, "whitespace"),
        (dict(index_url="ftp://x/"), BuildError, "index_url"),
        (dict(timeout=0), BuildError, "timeout"),
        (dict(sandbox="maybe"), BuildError, "sandbox must be one of"),
        (dict(memory_limit=-1), BuildError, "memory_limit"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:  # type: ignore[type-arg]
    args: dict = dict(  # type: ignore[type-arg]
        package="piwtest-pure",
        version="1.0",
        index_url="http://127.0.0.1:1/simple/",
        work_dir=tmp_path,
        timeout=60,
        memory_limit=None,
        min_free_disk=0,
    )
    args.update(kwargs)
    with pytest.raises(error, match=match):
        build_wheel(args.pop("package"), args.pop("version"), **args)
    assert list(tmp_path.iterdir()) == []


def test_abi3_wheel_serves_newer_abis(built) -> None:  # type: ignore[no-untyped-def]
    result = built("abi3")
    (wheel,) = result.wheels
    assert "-cp38-abi3-" in wheel.name
    plat = read_wheel(wheel).platform_tag
    builds = [("cp37", plat), ("cp39", plat), ("cp311", plat), ("cp313", plat), ("cp314", plat)]
    assert abis_served(wheel.name, builds) == {
        ("cp39", plat),
        ("cp311", plat),
        ("cp313", plat),
        ("cp314", plat),
    }


def test_analyse_pure_wheel(built) -> None:  # type: ignore[no-untyped-def]
    analysis = analyse_wheel(built("pure").wheels[0])
    assert analysis.info.requires_python == ">=3.8"
    # Markers are kept, not dropped.
    assert set(analysis.info.requires_dist) == {
        'packaging>=20; python_version >= "3.8"',
        'colorama; os_name == "nt"',
    }
    assert analysis.info.metadata.startswith(b"Metadata-Version: ")
    assert analysis.libraries == ()
    assert analysis.apt_packages == ()


def test_analyse_zlib_wheel(built) -> None:  # type: ignore[no-untyped-def]
    analysis = analyse_wheel(built("zlib").wheels[0])
    libs = {lib.library: lib for lib in analysis.libraries}
    assert libs["libz.so.1"].package == "zlib1g"
    assert "zlib1g" in analysis.apt_packages
    assert analysis.missing_libraries == ()


def test_analyse_missing_library(built) -> None:  # type: ignore[no-untyped-def]
    analysis = analyse_wheel(built("missing-lib").wheels[0])
    assert analysis.missing_libraries == ("libpiwtestmissing.so.1",)
    libs = {lib.library: lib for lib in analysis.libraries}
    assert libs["libpiwtestmissing.so.1"].package is None
    assert libs["libpiwtestmissing.so.1"].path is None


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("foo.c:3:1: error: expected ';'\nerror: command '/usr/bin/gcc' failed", "compile_error"),
        ("OSError: [Errno 28] No space left on device", "disk_full"),
        ("cc1: out of memory allocating 65536 bytes", "memory"),
        ("fatal error: yaml.h: No such file or directory", "dependency_missing"),
        ("/usr/bin/ld: cannot find -lopenblas", "dependency_missing"),
        ("ERROR: No matching distribution found for cython>=3", "dependency_missing"),
        ("ERROR: No matching distribution found for mypkg==1.0", "other"),
        ("something else entirely", "other"),
    ],
)
def test_classify_failure(log: str, expected: str) -> None:
    assert classify_failure(log, "mypkg") == expected
