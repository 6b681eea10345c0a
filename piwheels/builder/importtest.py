"""Install a built wheel into a fresh virtual environment and import it.

Answers the most common complaint about wheel farms: a wheel that installs
and then fails with a missing shared library.  The venv is made with
``--without-pip`` and the wheel installed by the build Python's own pip
(``pip --python <venv>``, no index, no dependencies), so nothing is
downloaded.  Each top-level module is imported in a child process under a
timeout (inside bubblewrap when available, like the build); an import that
fails because ``lib....so.N`` cannot be found reports that library.

Dependencies are not installed, so a module that imports another project at
import time fails here too; the error says which module was missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from piwheels.builder.sandbox import python_roots, resolve_sandbox, run_limited
from piwheels.builder.timing import Timings
from piwheels.errors import BuildError
from piwheels.wheels import read_wheel

__all__ = ["ImportResult", "import_test", "missing_library"]

_MISSING_LIB = re.compile(
    r"([A-Za-z0-9_.+-]+\.so(?:\.[0-9A-Za-z_.-]+)?): cannot open shared object file"
)
_IMPORTER = r"""
import importlib, json, sys, traceback
results = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        results[name] = None
    except BaseException as exc:
        results[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
print("PIWHEELS-IMPORT-RESULT " + json.dumps(results), flush=True)
"""
_OUTPUT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ImportResult:
    """The outcome of an import test."""

    ok: bool
    modules: tuple[str, ...]  # the modules that were imported (or tried)
    error: str | None  # the first failure, one or a few lines
    missing_library: str | None  # e.g. "libfoo.so.1" when the loader could not find it


def missing_library(error: str) -> str | None:
    """The shared library named in a loader error such as ``libx.so.1: cannot open ...``."""
    m = _MISSING_LIB.search(error)
    return m.group(1) if m else None


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def import_test(
    wheel_path: str | Path,
    *,
    python: str | None = None,
    timeout: float = 60.0,
    modules: Sequence[str] | None = None,
    sandbox: str = "auto",
    work_dir: str | Path | None = None,
    memory_limit: int | None = None,
    timings: Timings | None = None,
) -> ImportResult:
    """Install *wheel_path* into a fresh venv of *python* and import its top-level modules.

    *modules* defaults to those found in the wheel's file list.  *timeout*
    covers each step (venv, install, imports).  Raises :class:`BuildError`
    only when the test cannot be run at all (no such Python, bad sandbox
    setting); a wheel that does not install or import gives ``ok=False``.
    *timings* receives ``venv``, ``install`` and ``import``.
    """
    timings = timings if timings is not None else Timings()
    python = python or sys.executable
    wheel_path = Path(wheel_path).resolve()
    bwrap = resolve_sandbox(sandbox)
    if modules is None:
        modules = read_wheel(wheel_path).modules
    modules = tuple(modules)
    root = Path(tempfile.mkdtemp(prefix="piw-import-", dir=work_dir))
    try:
        venv = root / "venv"
        home = root / "home"
        home.mkdir()
        env = {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INPUT": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": str(root),
        }
        log_path = root / "log.txt"

        def step(command: list[str], *, sandboxed: bool, name: str) -> tuple[bool, str]:
            with open(log_path, "wb") as out:
                result = run_limited(
                    command,
                    env=env,
                    cwd=root,
                    output=out,
                    timeout=timeout,
                    memory_limit=memory_limit,
                    bwrap=bwrap if sandboxed else None,
                    ro_binds=[*python_roots(python), str(wheel_path.parent)],
                    rw_binds=[str(root)],
                    timings=timings,
                    step=name,
                )
            with open(log_path, "rb") as fh:
                text = fh.read(_OUTPUT_LIMIT).decode("utf-8", "replace")
            if result.timed_out:
                return False, f"timed out after {timeout:g} s\n{text}"
            return result.returncode == 0, text

        ok, text = step(
            [python, "-m", "venv", "--without-pip", str(venv)], sandboxed=False, name="venv"
        )
        if not ok:
            raise BuildError(f"cannot create a venv with {python}: {text.strip()[-300:]}")
        ok, text = step(
            [
                python,
                "-m",
                "pip",
                "--python",
                str(_venv_python(venv)),
                "install",
                "--no-deps",
                "--no-index",
                "--no-cache-dir",
                "--no-compile",
                str(wheel_path),
            ],
            sandboxed=True,
            name="install",
        )
        if not ok:
            return ImportResult(False, modules, f"install failed: {_last_lines(text)}", None)
        if not modules:
            return ImportResult(True, modules, None, None)
        ok, text = step(
            [str(_venv_python(venv)), "-c", _IMPORTER, *modules], sandboxed=True, name="import"
        )
        marker = "PIWHEELS-IMPORT-RESULT "
        line = next((ln for ln in text.splitlines() if ln.startswith(marker)), None)
        if line is None:
            # The interpreter died (segfault, timeout, killed) before reporting.
            error = _last_lines(text) or "the import process ended without a result"
            return ImportResult(False, modules, error, missing_library(error))
        results: dict[str, str | None] = json.loads(line[len(marker) :])
        for name in modules:
            failure = results.get(name)
            if failure:
                message = f"import {name}: {failure}"
                return ImportResult(False, modules, message, missing_library(failure))
        return ImportResult(True, modules, None, None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _last_lines(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])
