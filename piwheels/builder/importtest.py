"""Install a built wheel into a fresh virtual environment and import it.

Answers the most common complaint about wheel farms: a wheel that installs
and then fails with a missing shared library.

Each test gets a fresh venv (no pip in it): a copy of a base venv that is
made once per build Python for the builder's lifetime (``python -m venv
--without-pip``; a copy is a few files and symlinks, a new venv a Python
start-up).  The wheel is installed by unpacking it as an installer does
(:func:`install_wheel`: the wheel's tags and Requires-Python checked for
the venv's Python first, ``.data`` directories to their places, scripts'
``#!python`` rewritten, ``INSTALLER`` and a new ``RECORD`` written), so
nothing is downloaded and no pip starts.  When the build Python is not
the running one (its tags cannot be known here), the build Python's own
pip installs instead (``pip --python <venv>``, no index, no dependencies).
Each top-level module is then imported in ONE child process of the venv's
Python under a timeout (inside bubblewrap when available, like the build);
an import that fails because ``lib....so.N`` cannot be found reports that
library.

Dependencies are not installed, so a module that imports another project at
import time fails here too; the error says which module was missing.
Console-script wrappers are not generated: nothing here runs them.
"""

from __future__ import annotations

import atexit
import base64
import csv
import functools
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

from packaging import tags as _tags
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from piwheels.builder.sandbox import python_roots, resolve_sandbox, run_limited
from piwheels.builder.timing import Timings
from piwheels.errors import BuildError, InvalidWheel
from piwheels.wheels import parse_wheel_filename, read_wheel

__all__ = [
    "BaseVenv",
    "ImportResult",
    "InstallError",
    "base_venv",
    "import_test",
    "install_wheel",
    "missing_library",
]

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


class InstallError(BuildError):
    """The wheel cannot be installed into the test venv (the message says why)."""


# Run by the build Python once per builder lifetime: make the base venv, print its facts.
_MAKE_BASE = r"""
import json, platform, sys, sysconfig, venv
target = sys.argv[1]
venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"
paths = sysconfig.get_paths(scheme=scheme, vars={"base": target, "platbase": target})
print(json.dumps({
    "facts": [sys.implementation.name, platform.python_version(),
              sysconfig.get_config_var("SOABI"), sys.maxsize],
    "purelib": paths["purelib"], "platlib": paths["platlib"],
    "scripts": paths["scripts"],
    # Where installers put a venv's headers (the scheme's own is the base Python's).
    "include": "%s/include/site/python%d.%d" % (target, *sys.version_info[:2]),
}))
"""


def _this_python_facts() -> list[object]:
    return [
        sys.implementation.name,
        platform.python_version(),
        sysconfig.get_config_var("SOABI"),
        sys.maxsize,
    ]


@dataclass(frozen=True)
class BaseVenv:
    """A venv of one build Python, made once, copied for each test."""

    path: Path
    version: str  # the Python's version, for Requires-Python
    same_as_this: bool  # the running interpreter's tags are the venv Python's
    # Install locations relative to the venv:
    purelib: str
    platlib: str
    scripts: str
    include: str


_bases: dict[str, BaseVenv] = {}
_bases_lock = threading.Lock()
_bases_root: Path | None = None


def _remove_bases() -> None:
    if _bases_root is not None:
        shutil.rmtree(_bases_root, ignore_errors=True)


def base_venv(python: str, timeout: float = 60.0, timings: Timings | None = None) -> BaseVenv:
    """The base venv of *python*, made on first use (and again if it was removed).

    Raises :class:`BuildError` when *python* cannot make one.
    """
    global _bases_root
    timings = timings if timings is not None else Timings()
    with _bases_lock:
        base = _bases.get(python)
        if base is not None and (base.path / "pyvenv.cfg").is_file():
            return base
        if _bases_root is None or not _bases_root.is_dir():
            if _bases_root is None:
                atexit.register(_remove_bases)
            _bases_root = Path(tempfile.mkdtemp(prefix="piw-venv-base-"))
        target = Path(tempfile.mkdtemp(prefix="venv-", dir=_bases_root))
        log_path = target.parent / f"{target.name}.log"
        with open(log_path, "wb") as out:
            result = run_limited(
                [python, "-c", _MAKE_BASE, str(target)],
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd=target,
                output=out,
                timeout=timeout,
                timings=timings,
                step="base venv",
            )
        text = log_path.read_text("utf-8", "replace")
        log_path.unlink()
        try:
            if result.returncode != 0:
                raise ValueError(text.strip()[-300:] or f"exit status {result.returncode}")
            info = json.loads(text.strip().splitlines()[-1])
            rel = {k: os.path.relpath(info[k], target) for k in ("purelib", "platlib", "scripts",
                                                                  "include")}  # fmt: skip
            if any(r.startswith("..") for r in rel.values()):
                raise ValueError(f"install paths outside the venv: {rel}")
        except (ValueError, KeyError, IndexError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise BuildError(f"cannot create a venv with {python}: {exc}")
        # The activation scripts name the base's own path: no use in a copy.
        for script in Path(target, rel["scripts"]).glob("[aA]ctivate*"):
            script.unlink()
        base = BaseVenv(
            path=target,
            version=str(info["facts"][1]),
            same_as_this=info["facts"] == _this_python_facts(),
            **rel,
        )
        _bases[python] = base
        return base


@functools.cache
def _supported_tags() -> frozenset[_tags.Tag]:
    return frozenset(_tags.sys_tags())


def _check_member(filename: str, name: str) -> None:
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or re.search(r"[\x00-\x1f\x7f]", name)
        or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
    ):
        raise InstallError(f"{filename}: unsafe entry name {name!r}")


def _record_hash(data_hash: hashlib._Hash) -> str:
    return "sha256=" + base64.urlsafe_b64encode(data_hash.digest()).rstrip(b"=").decode()


def install_wheel(wheel_path: str | Path, venv: Path, base: BaseVenv) -> int:
    """Unpack the wheel into *venv* (a copy of *base*); returns files written (RECORD aside).

    Checks first, as an installer does, that the wheel's tags suit the
    running Python (which must be *base*'s) and that its Requires-Python
    admits that version.  Every entry name is checked; nothing is written
    outside *venv* and no existing file is replaced.  Raises
    :class:`InstallError` naming the problem.
    """
    wheel_path = Path(wheel_path)
    try:
        fn = parse_wheel_filename(wheel_path.name)
    except InvalidWheel as exc:
        raise InstallError(str(exc))
    filename = fn.filename
    if not fn.tags & _supported_tags():
        raise InstallError(f"{filename} is not a supported wheel on this Python")
    root = os.path.realpath(venv)
    site = venv / base.purelib
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            for info in infos:
                _check_member(filename, info.filename)
            tops = {i.filename.split("/", 1)[0] for i in infos}
            dist_infos = [t for t in tops if t.endswith(".dist-info")]
            if len(dist_infos) != 1:
                raise InstallError(f"{filename}: not exactly one .dist-info directory")
            dist_info = dist_infos[0]
            data_dir = dist_info[: -len(".dist-info")] + ".data"
            _check_requires_python(filename, zf, f"{dist_info}/METADATA", base.version)
            needed = sum(i.file_size for i in infos)
            free = shutil.disk_usage(venv).free
            if needed > free:
                raise InstallError(f"{filename} unpacks to {needed} bytes; {free} bytes free")
            places = {
                "purelib": venv / base.purelib,
                "platlib": venv / base.platlib,
                "scripts": venv / base.scripts,
                "headers": venv / base.include / fn.name,
                "data": venv,
            }
            skip = {f"{dist_info}/{n}" for n in ("RECORD", "RECORD.jws", "RECORD.p7s")}
            rows: list[tuple[str, str, str]] = []
            checked: set[Path] = set()
            for info in infos:
                if info.filename in skip:
                    continue
                parts = info.filename.split("/")
                key = None
                if parts[0] == data_dir:
                    if len(parts) < 3 or parts[1] not in places:
                        raise InstallError(f"{filename}: unknown .data entry {info.filename!r}")
                    key, dest = parts[1], places[parts[1]].joinpath(*parts[2:])
                else:
                    dest = site.joinpath(*parts)
                rows.append(_write_member(zf, info, dest, key, venv, root, checked))
            rows += _write_install_records(site / dist_info, site)
            _write_record(site / dist_info / "RECORD", site, rows)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise InstallError(f"{filename}: cannot unpack ({exc})")
    return len(rows)


def _check_requires_python(filename: str, zf: zipfile.ZipFile, name: str, version: str) -> None:
    try:
        data = zf.read(name)
    except KeyError:
        raise InstallError(f"{filename}: {name} is missing")
    spec = BytesParser(policy=compat32).parsebytes(data, headersonly=True).get("Requires-Python")
    if not spec:
        return
    try:
        ok = SpecifierSet(" ".join(str(spec).split())).contains(version, prereleases=True)
    except InvalidSpecifier:
        raise InstallError(f"{filename}: invalid Requires-Python {str(spec)!r}")
    if not ok:
        raise InstallError(f"{filename} requires a different Python: {version} not in {spec!r}")


def _write_member(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    dest: Path,
    key: str | None,
    venv: Path,
    root: str,
    checked: set[Path],
) -> tuple[str, str, str]:
    """Write one entry to *dest*; its RECORD row (path relative to site-packages later)."""
    parent = dest.parent
    if parent not in checked:
        parent.mkdir(parents=True, exist_ok=True)
        # The venv holds symlinks (lib64, bin/python): never follow one out of it.
        real = os.path.realpath(parent)
        if real != root and not real.startswith(root + "/"):
            raise InstallError(f"{info.filename!r} would install outside the venv")
        checked.add(parent)
    digest = hashlib.sha256()
    size = 0
    with zf.open(info) as src, open(dest, "xb") as out:
        first = True
        while chunk := src.read(1 << 20):
            if first and key == "scripts" and chunk.startswith(b"#!python"):
                # The installer's shebang rewrite: the script runs with the venv's Python.
                line_end = chunk.find(b"\n")
                rest = chunk[line_end:] if line_end >= 0 else b"\n"
                chunk = b"#!" + str(venv / "bin" / "python").encode() + rest
            first = False
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    mode = info.external_attr >> 16
    if key == "scripts" or mode & 0o111:
        os.chmod(dest, 0o755)
    return str(dest), _record_hash(digest), str(size)


def _write_install_records(dist_info: Path, site: Path) -> list[tuple[str, str, str]]:
    data = b"piwheels\n"
    path = dist_info / "INSTALLER"
    path.write_bytes(data)
    return [(str(path), _record_hash(hashlib.sha256(data)), str(len(data)))]


def _write_record(path: Path, site: Path, rows: list[tuple[str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for dest, digest, size in rows:
        writer.writerow((os.path.relpath(dest, site), digest, size))
    writer.writerow((os.path.relpath(path, site), "", ""))
    path.write_text(buf.getvalue(), "utf-8")


def import_test(
    wheel_path: str | Path,
    *,
    python: str | None = None,
    timeout: float = 60.0,
    modules: Sequence[str] | None = None,
    sandbox: str = "auto",
    work_dir: str | Path | None = None,
    memory_limit: int | None = None,
    use_pip: bool = False,
    timings: Timings | None = None,
) -> ImportResult:
    """Install *wheel_path* into a fresh venv of *python* and import its top-level modules.

    *modules* defaults to those found in the wheel's file list.  *timeout*
    covers each step (venv, install, imports).  *use_pip* installs with pip
    even when unpacking would do.  Raises :class:`BuildError` only when the
    test cannot be run at all (no such Python, bad sandbox setting); a wheel
    that does not install or import gives ``ok=False``.  *timings* receives
    ``venv`` (and ``base venv`` the first time), ``install`` and ``import``.
    """
    timings = timings if timings is not None else Timings()
    python = python or sys.executable
    wheel_path = Path(wheel_path).resolve()
    bwrap = resolve_sandbox(sandbox)
    if modules is None:
        modules = read_wheel(wheel_path).modules
    modules = tuple(modules)
    base = base_venv(python, timeout, timings)
    root = Path(tempfile.mkdtemp(prefix="piw-import-", dir=work_dir))
    try:
        venv = root / "venv"
        home = root / "home"
        home.mkdir()
        try:
            with timings.step("venv"):
                shutil.copytree(base.path, venv, symlinks=True)
        except (OSError, shutil.Error) as exc:
            raise BuildError(f"cannot copy the base venv {base.path}: {exc}")
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

        def step(command: list[str], *, name: str) -> tuple[bool, str]:
            with open(log_path, "wb") as out:
                result = run_limited(
                    command,
                    env=env,
                    cwd=root,
                    output=out,
                    timeout=timeout,
                    memory_limit=memory_limit,
                    bwrap=bwrap,
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

        if base.same_as_this and not use_pip:
            try:
                with timings.step("install"):
                    install_wheel(wheel_path, venv, base)
            except InstallError as exc:
                return ImportResult(False, modules, f"install failed: {exc}", None)
        else:
            ok, text = step(
                [python, "-m", "pip", "--python", str(_venv_python(venv)), "install",
                 "--no-deps", "--no-index", "--no-cache-dir", "--no-compile", str(wheel_path)],
                name="install",
            )  # fmt: skip
            if not ok:
                return ImportResult(False, modules, f"install failed: {_last_lines(text)}", None)
        if not modules:
            return ImportResult(True, modules, None, None)
        ok, text = step([str(_venv_python(venv)), "-c", _IMPORTER, *modules], name="import")
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


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _last_lines(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])
