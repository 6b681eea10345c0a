"""The Debian packages: they build, lintian finds no errors, and every executable runs.

The packages are built from a copy of the tree (dpkg-buildpackage writes next
to the source) and extracted into a throwaway root with ``dpkg-deb -x``.  Each
``/usr/bin`` wrapper runs ``--version`` with the extracted /usr/lib/piwheels
first on the path: piw-builder and piw-keygen on Debian's own /usr/bin/python3
and python3-* packages (what the packages depend on, nothing else), the others
with the project venv's interpreter standing in for the one piwheels-venv
would create (PIWHEELS_PYTHON).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import piwheels

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("piwheels-common", "piwheels-master", "piwheels-builder", "piwheels-monitor")
EXECUTABLES = {
    "piwheels-common": {"piw-keygen"},
    "piwheels-master": {"piw-master", "piw-initdb", "piw-add", "piw-remove", "piw-rebuild",
                        "piw-import", "piw-audit", "piw-logger", "piw-report"},
    "piwheels-builder": {"piw-builder"},
    "piwheels-monitor": {"piw-monitor"},
}  # fmt: skip
#: Executables that run on Debian's python3 packages, without the virtual environment.
SYSTEM_PYTHON = {"piw-builder", "piw-keygen"}
DEBIAN_PYTHON = "/usr/bin/python3"
#: Debian package -> module, for what the SYSTEM_PYTHON executables import.
DEBIAN_MODULES = {
    "python3-zmq": "zmq",
    "python3-cbor2": "cbor2",
    "python3-voluptuous": "voluptuous",
    "python3-packaging": "packaging",
    "python3-pyelftools": "elftools",
    "python3-pip": "pip",
}


def _missing_tools() -> str | None:
    for tool in ("dpkg-buildpackage", "dpkg-deb", "dh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dpkg-dev debhelper)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


def _missing_debian_modules() -> list[str]:
    """The python3-* packages of DEBIAN_MODULES that Debian's python3 cannot import."""
    missing = []
    for package, module in DEBIAN_MODULES.items():
        found = subprocess.run(
            [DEBIAN_PYTHON, "-P", "-c", f"import {module}"], capture_output=True
        ).returncode
        if found != 0:
            missing.append(package)
    return missing


def _copy_tree(dest: Path) -> None:
    """The files git knows (tracked or not ignored): what a clean checkout would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the binary packages once; name -> .deb path."""
    base = tmp_path_factory.mktemp("deb")
    tree = base / "piwheels"
    _copy_tree(tree)
    result = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = {p.name.split("_")[0]: p for p in base.glob("*.deb")}
    assert set(found) == set(PACKAGES), found
    return found


def test_versions_agree() -> None:
    changelog = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    version = re.match(r"piwheels \(([^)]+)\)", changelog)
    assert version is not None
    assert version.group(1) == piwheels.__version__


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_lintian_finds_no_errors(debs: dict[str, Path]) -> None:
    result = subprocess.run(
        ["lintian", "--tag-display-limit", "0", *map(str, debs.values())],
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], result.stdout


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout


def test_builder_depends_on_debian_python_not_the_venv(debs: dict[str, Path]) -> None:
    depends = _field(debs["piwheels-common"], "Depends") + _field(
        debs["piwheels-builder"], "Depends"
    )
    for package in DEBIAN_MODULES:
        assert package in depends, package
    # The virtual environment holds only the master's and the monitor's libraries.
    reqs = {
        p.rsplit("/", 1)[1] for p in _contents(debs["piwheels-common"]) if "/requirements/" in p
    }
    assert reqs == {"", "common.txt", "master.txt", "monitor.txt"}, reqs


def _contents(deb: Path) -> set[str]:
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1].lstrip(".") for line in listing.splitlines()}


def test_packages_hold_units_config_and_site(debs: dict[str, Path]) -> None:
    common = _contents(debs["piwheels-common"])
    assert "/etc/piwheels.conf" in common
    assert "/usr/sbin/piwheels-venv" in common
    assert "/usr/lib/piwheels/piwheels/sql/env.py" in common
    assert "/usr/share/piwheels/requirements/master.txt" in common
    master = _contents(debs["piwheels-master"])
    assert "/lib/systemd/system/piwheels-master.service" in master
    assert "/lib/systemd/system/piwheels-logger.service" in master
    assert "/etc/nginx/sites-available/piwheels" in master
    assert "/lib/systemd/system/piwheels-builder.service" in _contents(debs["piwheels-builder"])
    for package, exes in EXECUTABLES.items():
        shipped = {
            p.rsplit("/", 1)[1]
            for p in _contents(debs[package])
            if "/usr/bin/" in p and not p.endswith("/")
        }
        assert shipped == exes, package
    info = subprocess.run(
        ["dpkg-deb", "-I", str(debs["piwheels-common"]), "postinst"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "adduser --system" in info


def _extract(debs: dict[str, Path], root: Path) -> Path:
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr" / "lib" / "piwheels"


def test_every_executable_prints_its_version(debs: dict[str, Path], tmp_path: Path) -> None:
    missing = _missing_debian_modules()
    assert missing == [], (
        f"{DEBIAN_PYTHON} lacks {' '.join(missing)}: apt-get install them "
        "(python3 -m piwheels.devenv setup does as root)"
    )
    root = tmp_path / "root"
    lib = _extract(debs, root)
    # The interpreter this venv was made from, with the venv's site-packages on
    # PYTHONPATH for the third-party libraries: a path there has its .pth files
    # ignored, so this checkout's editable install cannot shadow the extracted code.
    base_python = getattr(sys, "_base_executable", sys.executable)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIWHEELS_PYTHON")}
    env = {
        **base,
        "PIWHEELS_PYTHON": base_python,
        "PYTHONPATH": f"{lib}:{site_packages}",
        "HOME": str(tmp_path),
    }
    # Debian's python3 as the wrapper chooses it, with the extracted code and
    # nothing of this venv: only what the packages depend on.
    system_env = {**base, "PYTHONPATH": str(lib), "HOME": str(tmp_path)}
    # The extracted code is what runs, not this checkout.
    for python, environ in ((base_python, env), (DEBIAN_PYTHON, system_env)):
        where = subprocess.run(
            [python, "-P", "-c", "import piwheels; print(piwheels.__file__)"],
            env=environ, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert where.startswith(str(lib)), where
    names = sorted(p.name for p in (root / "usr" / "bin").iterdir())
    assert names == sorted(set().union(*EXECUTABLES.values()))
    for name in names:
        wrapper = root / "usr" / "bin" / name
        if name in SYSTEM_PYTHON:
            assert "venv" not in wrapper.read_text(), name
        result = subprocess.run(
            [str(wrapper), "--version"],
            env=system_env if name in SYSTEM_PYTHON else env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (name, result.stderr)
        assert f"piwheels {piwheels.__version__}" in result.stdout, (name, result.stdout)
    # Without the environment the wrappers say what to do, in one line.
    missing = subprocess.run(
        [str(root / "usr" / "bin" / "piw-master"), "--version"],
        env={**env, "PIWHEELS_PYTHON": str(tmp_path / "no-venv" / "python3")},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "run 'piwheels-venv'" in missing.stderr
    # The generated nginx site and configuration are the code's own output.
    from piwheels.settings import example_config
    from piwheels.web.nginx import render_site

    assert (root / "etc" / "piwheels.conf").read_text() == example_config()
    site = (root / "etc" / "nginx" / "sites-available" / "piwheels").read_text()
    assert site == render_site("/var/www/piwheels")


def test_builder_messages_on_debian_python(debs: dict[str, Path], tmp_path: Path) -> None:
    """The builder's messages (durations, times, bytes) go both ways on Debian's libraries."""
    assert _missing_debian_modules() == []
    lib = _extract(debs, tmp_path / "root")
    script = """
import datetime as dt
from piwheels.transport import decode, encode
data = {"timeout": dt.timedelta(hours=3, microseconds=5), "at": dt.datetime.now(dt.UTC),
        "blob": b"\\x00\\xff", "ids": [1, 2]}
name, back = decode(encode("BUILD", data))
assert (name, back) == ("BUILD", data), back
print("ok")
"""
    result = subprocess.run(
        [DEBIAN_PYTHON, "-P", "-c", script],
        env={**os.environ, "PYTHONPATH": str(lib)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
