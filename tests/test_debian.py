"""The Debian packages: they build, lintian finds no errors, and every executable runs.

The packages are built from a copy of the tree (dpkg-buildpackage writes next
to the source), extracted into a throwaway root with ``dpkg-deb -x``, and each
``/usr/bin`` wrapper runs ``--version`` with the project venv's interpreter
standing in for the one piwheels-venv would create (PIWHEELS_PYTHON), and the
extracted /usr/lib/piwheels first on the path.
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


def _missing_tools() -> str | None:
    for tool in ("dpkg-buildpackage", "dpkg-deb", "dh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dpkg-dev debhelper)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


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


def test_every_executable_prints_its_version(debs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    for deb in debs.values():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    lib = root / "usr" / "lib" / "piwheels"
    # The interpreter this venv was made from, with the venv's site-packages on
    # PYTHONPATH for the third-party libraries: a path there has its .pth files
    # ignored, so this checkout's editable install cannot shadow the extracted code.
    base_python = getattr(sys, "_base_executable", sys.executable)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    env = {
        **os.environ,
        "PIWHEELS_PYTHON": base_python,
        "PYTHONPATH": f"{lib}:{site_packages}",
        "HOME": str(tmp_path),
    }
    # The extracted code is what runs, not this checkout.
    where = subprocess.run(
        [base_python, "-P", "-c", "import piwheels; print(piwheels.__file__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(lib)), where
    names = sorted(p.name for p in (root / "usr" / "bin").iterdir())
    assert names == sorted(set().union(*EXECUTABLES.values()))
    for name in names:
        result = subprocess.run(
            [str(root / "usr" / "bin" / name), "--version"],
            env=env,
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
