"""Set up a development environment and run the demo farm or the tests.

This module uses the standard library only, so it runs from a fresh checkout
before anything is installed::

    python3 -m piwheels.devenv demo     # the farm on its embedded default
    python3 -m piwheels.devenv test     # the whole test suite

It creates ``.venv`` beside ``setup.py`` (once; again when setup.py changes),
installs the project into it with its test extras and, when run as root on
Debian, installs the system packages the farm uses (PostgreSQL server
binaries, nginx, bubblewrap, a compiler).  As an ordinary user it says which
of those are missing and carries on: the embedded database then comes from the
pgserver wheel, and the demo serves the index without nginx.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".piwheels-installed"

#: Debian packages and a file that shows each is installed.
SYSTEM_PACKAGES = {
    "postgresql": "/usr/lib/postgresql",
    "nginx-light": "/usr/sbin/nginx",
    "bubblewrap": "/usr/bin/bwrap",
    "gcc": "/usr/bin/gcc",
    "python3-dev": "/usr/include/python3.11/Python.h",
    "python3-venv": "/usr/lib/python3.11/ensurepip/__init__.py",
    "libyaml-dev": "/usr/include/yaml.h",
    "zlib1g-dev": "/usr/include/zlib.h",
    "tmux": "/usr/bin/tmux",
}


def say(text: str) -> None:
    print(f"devenv: {text}", flush=True)


def missing_system_packages() -> list[str]:
    """Debian packages from SYSTEM_PACKAGES that are not installed."""
    return [pkg for pkg, path in SYSTEM_PACKAGES.items() if not Path(path).exists()]


def install_system_packages() -> None:
    """Install what is missing when we can (root with apt-get); otherwise say what."""
    missing = missing_system_packages()
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )
    else:
        say(
            "these Debian packages are missing and cannot be installed without root: "
            f"{' '.join(missing)} (sudo apt-get install {' '.join(missing)}); carrying on"
        )


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.py", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(extras: str = "test,embedded") -> Path:
    """Create .venv and install the project into it, unless that is already done."""
    python = venv_python()
    if not python.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    want = _fingerprint() + extras
    if STAMP.exists() and STAMP.read_text() == want:
        return python
    say("installing piwheels and its dependencies (about a minute the first time)")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip", "setuptools", "wheel"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[{extras}]"], check=True, cwd=ROOT)
    STAMP.write_text(want)
    return python


def run_tests(args: list[str]) -> int:
    """Run the suite in parallel (two workers per core, as the suite is mostly waiting)."""
    python = ensure_venv()
    workers = str(max(2, min(8, (os.cpu_count() or 1) * 2)))
    cmd = [str(python), "-m", "pytest", "-n", workers, "-q", *args]
    say(" ".join(cmd[2:]))
    return subprocess.run(cmd, cwd=ROOT).returncode


def run_demo(args: list[str]) -> int:
    python = ensure_venv()
    return subprocess.run([str(python), "-m", "piwheels.demo", *args], cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m piwheels.devenv",
        description="Set up the development environment, then run the demo or the tests.",
    )
    parser.add_argument("what", choices=["setup", "test", "demo"])
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="passed on to pytest or the demo")
    ns = parser.parse_args(argv)
    if sys.version_info < (3, 11):  # noqa: UP036 (this runs before the venv exists)
        say(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
        return 2
    install_system_packages()
    if ns.what == "setup":
        ensure_venv()
        return 0
    if ns.what == "test":
        return run_tests(ns.rest)
    return run_demo(ns.rest)


if __name__ == "__main__":
    sys.exit(main())
