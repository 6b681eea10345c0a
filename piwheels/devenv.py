"""Set up a development environment and run the demo farm or the tests.

This module uses the standard library only, so it runs from a fresh checkout
before anything is installed::

    python3 -m piwheels.devenv demo     # the farm on its embedded default
    python3 -m piwheels.devenv test     # the whole test suite

It creates ``.venv`` beside ``setup.py`` (once; again when setup.py changes),
installs the project into it (with the test tools for ``test`` and ``setup``)
and, when run as root on Debian, installs the system packages the farm uses
(PostgreSQL server binaries, nginx, bubblewrap, a compiler).  As an ordinary
user it says which of those are missing and carries on: the embedded database
then comes from the pgserver wheel (installed only where no PostgreSQL is),
and the demo serves the index without nginx.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

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
    # piw-builder and piw-keygen of the Debian packages run on these (tests/test_debian.py).
    "python3-zmq": "/usr/lib/python3/dist-packages/zmq/__init__.py",
    "python3-cbor2": "/usr/lib/python3/dist-packages/cbor2/__init__.py",
    "python3-voluptuous": "/usr/lib/python3/dist-packages/voluptuous/__init__.py",
    "python3-packaging": "/usr/lib/python3/dist-packages/packaging/__init__.py",
    "python3-pyelftools": "/usr/lib/python3/dist-packages/elftools/__init__.py",
    "python3-pip": "/usr/lib/python3/dist-packages/pip/__init__.py",
    # Building and checking the Debian packages (tests/test_debian.py, CI).
    "dpkg-dev": "/usr/bin/dpkg-buildpackage",
    "debhelper": "/usr/bin/dh",
    "lintian": "/usr/bin/lintian",
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


def system_postgresql() -> bool:
    """True when PostgreSQL server binaries are on this machine (as pgcluster finds them)."""
    folders = glob.glob("/usr/lib/postgresql/*/bin")
    if os.environ.get("PIWHEELS_PG_BINDIR"):
        folders.append(os.environ["PIWHEELS_PG_BINDIR"])
    if shutil.which("initdb"):
        folders.append(str(Path(str(shutil.which("initdb"))).parent))
    return any(
        all((Path(folder) / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres"))
        for folder in folders
    )


def wanted_extras(test: bool) -> set[str]:
    """The setup.py extras to install: test tools only for the tests (the demo needs
    none of them), the pgserver wheel only where no PostgreSQL is installed."""
    extras = {"test"} if test else set()
    if not system_postgresql():
        extras.add("embedded")
    return extras


def _installed_extras() -> set[str] | None:
    """The extras the last install recorded, or None if it is stale or absent."""
    try:
        fingerprint, _, extras = STAMP.read_text().partition("\n")
    except OSError:
        return None
    if fingerprint != _fingerprint():
        return None
    return set(extras.split()) if extras.strip() else set()


def ensure_venv(extras: set[str] | None = None) -> Path:
    """Create .venv and install the project with *extras* into it, unless already done.

    The default is what the tests need.  An install is reused while setup.py,
    pyproject.toml and the Python version are unchanged and it holds every
    extra asked for (so the demo after the tests installs nothing).
    """
    if extras is None:
        extras = wanted_extras(test=True)
    python = venv_python()
    if not python.exists():
        say(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    installed = _installed_extras()
    if installed is not None and extras <= installed:
        return python
    # Keep what an earlier install of the same project already holds.
    extras = extras | (installed or set())
    say("installing piwheels and its dependencies (a few minutes the first time)")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip", "setuptools", "wheel"], check=True)
    target = f"{ROOT}[{','.join(sorted(extras))}]" if extras else str(ROOT)
    subprocess.run([*pip, "install", "-e", target], check=True, cwd=ROOT)
    STAMP.write_text(_fingerprint() + "\n" + " ".join(sorted(extras)))
    return python


def run_child(cmd: list[str]) -> int:
    """Run *cmd* until it exits and return its status; Ctrl-C is the child's to handle.

    A terminal's Ctrl-C reaches the whole foreground process group, so the
    child gets it directly and stops in its own time.  subprocess.run() would
    kill the child 0.25 s later, before the demo has stopped PostgreSQL, nginx
    and the builder (or pytest its fixtures), so this process only waits.
    SIGINT is not passed on: pytest takes a second one as "stop cleaning up".
    SIGTERM and SIGHUP, which are sent to this process alone, are passed on.
    """

    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    def ignore(signum: int, frame: FrameType | None) -> None:
        pass

    # Python-level handlers (not SIG_IGN) so the child starts with the defaults.
    handlers = {signal.SIGINT: ignore, signal.SIGTERM: forward, signal.SIGHUP: forward}
    old = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT)
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_tests(args: list[str]) -> int:
    """Run the suite in parallel (two workers per core, as the suite is mostly waiting)."""
    python = ensure_venv(wanted_extras(test=True))
    workers = str(max(2, min(8, (os.cpu_count() or 1) * 2)))
    cmd = [str(python), "-m", "pytest", "-n", workers, "-q", *args]
    say(" ".join(cmd[2:]))
    return run_child(cmd)


def run_demo(args: list[str]) -> int:
    """The demo in .venv (without the test tools, which it does not need)."""
    python = ensure_venv(wanted_extras(test=False))
    return run_child([str(python), "-m", "piwheels.demo", *args])


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
