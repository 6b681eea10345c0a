"""Import tests of built wheels in a fresh venv (piwheels.builder.importtest)."""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from piwheels.builder import import_test
from piwheels.builder.importtest import (
    BaseVenv,
    InstallError,
    base_venv,
    install_wheel,
    missing_library,
)
from piwheels.builder.timing import Timings
from piwheels.errors import BuildError
from tests.builder.test_build import _processes_with
from tests.test_wheels import make_wheel

pytestmark = pytest.mark.slow


def test_pure_wheel_imports(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("pure").wheels[0], timeout=120)
    assert result.ok
    assert result.modules == ("piwtest_pure",)
    assert result.error is None
    assert result.missing_library is None


def test_extension_with_system_library_imports(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("zlib").wheels[0], timeout=120)
    assert result.ok, result.error


def test_broken_import_reports_the_error(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("bad-import").wheels[0], timeout=120)
    assert not result.ok
    assert result.modules == ("piwtest_bad_import",)
    assert result.error is not None
    assert "ModuleNotFoundError" in result.error
    assert "piwtest_no_such_module_anywhere" in result.error
    assert result.missing_library is None


def test_missing_library_is_named(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("missing-lib").wheels[0], timeout=120)
    assert not result.ok
    assert result.missing_library == "libpiwtestmissing.so.1"
    assert "cannot open shared object file" in (result.error or "")


def test_reports_the_module_that_fails(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("pure").wheels[0], timeout=120, modules=["piwtest_pure", "nope_x"])
    assert not result.ok
    assert (result.error or "").startswith("import nope_x: ModuleNotFoundError")


def test_import_that_hangs_is_killed(tmp_path: Path) -> None:
    module = f"slow_{uuid.uuid4().hex}"
    wheel = make_wheel(tmp_path, files={f"{module}.py": b"import time\ntime.sleep(600)\n"})
    result = import_test(wheel, timeout=3)
    assert not result.ok
    assert "timed out after 3 s" in (result.error or "")
    assert _processes_with(module) == []


@pytest.mark.parametrize(
    ("text", "library"),
    [
        (
            "ImportError: libopenblas.so.0: cannot open shared object file: No such file",
            "libopenblas.so.0",
        ),
        (
            "ImportError: libhdf5_serial.so.103: cannot open shared object file",
            "libhdf5_serial.so.103",
        ),
        ("ImportError: libfoo.so: cannot open shared object file", "libfoo.so"),
        ("ModuleNotFoundError: No module named 'x'", None),
    ],
)
def test_missing_library_parsing(text: str, library: str | None) -> None:
    assert missing_library(text) == library


# -- installing by unpacking -------------------------------------------------------------------


def _wheel(
    folder: Path,
    members: dict[str, bytes],
    *,
    name: str = "piwunpack",
    tag: str = "py3-none-any",
    requires_python: str | None = ">=3.8",
    executable: tuple[str, ...] = (),
) -> Path:
    """A wheel with *members* plus its dist-info (RECORD with good hashes)."""
    di = f"{name}-1.0.dist-info"
    files = dict(members)
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    files[f"{di}/METADATA"] = meta.encode()
    files[f"{di}/WHEEL"] = f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    rows = [
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
        f"{len(d)}"
        for p, d in files.items()
    ]
    files[f"{di}/RECORD"] = ("\n".join([*rows, f"{di}/RECORD,,"]) + "\n").encode()
    out = folder / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            info = zipfile.ZipInfo(path)
            info.external_attr = (0o755 if path in executable else 0o644) << 16
            zf.writestr(info, data)
    return out


@pytest.fixture
def venv(tmp_path: Path) -> tuple[Path, BaseVenv]:
    """A fresh copy of this Python's base venv."""
    base = base_venv(sys.executable)
    target = tmp_path / "venv"
    shutil.copytree(base.path, target, symlinks=True)
    return target, base


def test_install_by_unpacking(tmp_path: Path, venv: tuple[Path, BaseVenv]) -> None:
    target, base = venv
    members = {
        "piwunpack/__init__.py": b"VALUE = 7\n",
        "piwunpack/run.sh": b"#!/bin/sh\necho hi\n",
        "piwunpack_top.py": b"TOP = 1\n",
        "piwunpack-1.0.data/purelib/piwunpack_extra.py": b"EXTRA = 2\n",
        "piwunpack-1.0.data/scripts/piwtool": b"#!python\nprint('tool')\n",
        "piwunpack-1.0.data/headers/piw.h": b"int x;\n",
        "piwunpack-1.0.data/data/share/piwunpack/note.txt": b"note\n",
    }
    wheel = _wheel(tmp_path, members, executable=("piwunpack/run.sh",))
    written = install_wheel(wheel, target, base)
    site = target / base.purelib
    assert written == len(members) + 3  # and METADATA, WHEEL, INSTALLER (RECORD aside)
    assert (site / "piwunpack/__init__.py").read_bytes() == b"VALUE = 7\n"
    assert (site / "piwunpack_extra.py").is_file()
    assert os.access(site / "piwunpack/run.sh", os.X_OK)
    assert not os.access(site / "piwunpack_top.py", os.X_OK)
    tool = target / base.scripts / "piwtool"
    assert tool.read_bytes().splitlines()[0] == f"#!{target}/bin/python".encode()
    assert os.access(tool, os.X_OK)
    assert (target / base.include / "piwunpack" / "piw.h").is_file()
    assert (target / "share/piwunpack/note.txt").read_bytes() == b"note\n"
    dist_info = site / "piwunpack-1.0.dist-info"
    assert (dist_info / "INSTALLER").read_text() == "piwheels\n"
    # RECORD lists every installed file (relative to site-packages) with its real hash.
    rows = list(csv.reader((dist_info / "RECORD").read_text().splitlines()))
    for path, digest, size in rows:
        installed = (site / path).resolve()
        assert installed.is_file(), path
        if digest:
            data = installed.read_bytes()
            assert size == str(len(data))
            assert (
                digest
                == "sha256="
                + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            )
    assert len(rows) == written + 1
    # The venv's Python sees the package, its metadata and the script runs.
    check = subprocess.run(
        [str(target / "bin/python"), "-c",
         "import piwunpack, piwunpack_top, piwunpack_extra, importlib.metadata as m;"
         "print(piwunpack.VALUE, m.version('piwunpack'), len(m.files('piwunpack')))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert check.stdout.split() == ["7", "1.0", str(len(rows))]
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "tool\n"


@pytest.mark.parametrize(
    ("members", "options", "match"),
    [
        ({"piwunpack.py": b""}, {"tag": "cp311-cp311-win_amd64"}, "not a supported wheel"),
        ({"piwunpack.py": b""}, {"requires_python": ">=99"}, "requires a different Python"),
        ({"piwunpack.py": b""}, {"requires_python": "three"}, "invalid Requires-Python"),
        ({"../piwevil.py": b""}, {}, "unsafe entry name '../piwevil.py'"),
        ({"/tmp/piwevil.py": b""}, {}, "unsafe entry name"),
        ({"a//piwevil.py": b""}, {}, "unsafe entry name"),
        ({"piwunpack-1.0.data/weird/x": b""}, {}, "unknown .data entry"),
        ({"piwunpack-1.0.data/purelib": b""}, {}, "unknown .data entry"),
        (
            {"piwunpack.py": b"", "piwunpack-1.0.data/purelib/piwunpack.py": b""},
            {},
            "cannot unpack .*File exists",
        ),
        (
            # bin/python is a symlink to a file: no directory can be made through it.
            {"piwunpack-1.0.data/scripts/python/x": b""},
            {},
            "cannot unpack",
        ),
    ],
)
def test_install_refuses(
    tmp_path: Path, venv: tuple[Path, BaseVenv], members: dict, options: dict, match: str
) -> None:  # type: ignore[type-arg]
    target, base = venv
    # Nothing may appear outside the venv (the wheel itself aside).
    before = {p for p in tmp_path.rglob("*") if target not in p.parents and p != target}
    wheel = _wheel(tmp_path, members, **options)
    with pytest.raises(InstallError, match=match):
        install_wheel(wheel, target, base)
    after = {p for p in tmp_path.rglob("*") if target not in p.parents and p != target}
    assert after == before | {wheel}
    assert not Path("/tmp/piwevil.py").exists()


def test_install_never_follows_a_link_out_of_the_venv(
    tmp_path: Path, venv: tuple[Path, BaseVenv]
) -> None:
    target, base = venv
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "share").symlink_to(outside)
    wheel = _wheel(tmp_path, {"piwunpack-1.0.data/data/share/x.txt": b"x"})
    with pytest.raises(InstallError, match="would install outside the venv"):
        install_wheel(wheel, target, base)
    assert list(outside.iterdir()) == []


def test_install_failure_is_reported(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, {"piwunpack.py": b""}, requires_python=">=99")
    result = import_test(wheel, timeout=120)
    assert not result.ok
    assert (result.error or "").startswith("install failed: ")
    assert "requires a different Python" in (result.error or "")


def test_pip_installs_when_asked(built, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    timings = Timings()
    result = import_test(built("pure").wheels[0], timeout=120, use_pip=True, timings=timings)
    assert result.ok, result.error
    # pip refuses the same wheels the unpacking install refuses.
    wheel = _wheel(tmp_path, {"piwunpack.py": b""}, requires_python=">=99")
    result = import_test(wheel, timeout=120, use_pip=True)
    assert not result.ok
    assert "install failed" in (result.error or "")
    assert "requires a different Python" in (result.error or "")


def test_each_test_gets_a_fresh_venv(built) -> None:  # type: ignore[no-untyped-def]
    assert import_test(built("pure").wheels[0], timeout=120).ok
    # The next test's venv does not hold the previous wheel.
    result = import_test(built("cext").wheels[0], timeout=120, modules=["piwtest_pure"])
    assert not result.ok
    assert "No module named 'piwtest_pure'" in (result.error or "")


def test_base_venv_is_made_again_when_removed(built) -> None:  # type: ignore[no-untyped-def]
    first = base_venv(sys.executable)
    shutil.rmtree(first.path)
    timings = Timings()
    result = import_test(built("pure").wheels[0], timeout=120, timings=timings)
    assert result.ok, result.error
    names = [s.name for s in timings.steps]
    assert names[0] == "base venv"
    assert names.index("venv") < names.index("install") < names.index("import")
    assert base_venv(sys.executable).path.is_dir()


def test_unknown_python_is_a_build_error(built) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BuildError, match="piwtest-no-such-python"):
        import_test(built("pure").wheels[0], python="/nonexistent/piwtest-no-such-python")
