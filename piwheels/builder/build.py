"""Build one wheel from source with pip, under limits, and analyse the result.

:func:`build_wheel` runs::

    python -m pip wheel PKG==VER --no-deps --no-binary PKG --no-cache-dir \\
        --index-url URL [--extra-index-url ...] -w OUT -v

in a fresh directory under *work_dir* with a clean environment and an empty
home, inside bubblewrap when available (see :mod:`piwheels.builder.sandbox`),
with a wall-clock timeout that kills the whole process tree and a memory
limit.  The full log (pip's output and the build tools', ``-v``) goes to a
file that the sandbox cannot write; :attr:`BuildResult.log` holds it all, or
its head and tail with a note of how much was left out when it is larger
than *log_limit*.

Build directory layout (removed by :meth:`BuildResult.cleanup`)::

    build-<pkg>-XXXX/
        log.txt          full log, written by us and by the build's stdout/stderr
        sandbox/         the only writable place inside the sandbox
            home/  tmp/  (mounted as /tmp)  out/  (the wheels)

:func:`analyse_wheel` reads a built wheel: metadata, Requires-Dist (markers
kept), METADATA bytes, and the Debian packages behind its shared libraries.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from piwheels.builder.elfdeps import LibraryDependency, wheel_library_deps
from piwheels.builder.sandbox import python_roots, resolve_sandbox, run_limited, sandbox_status
from piwheels.builder.timing import Timings
from piwheels.errors import BuildError
from piwheels.wheels import WheelInfo, canonicalize, read_wheel, validate_name, validate_version

__all__ = [
    "DEFAULT_LOG_LIMIT",
    "BuildResult",
    "DiskSpaceLow",
    "FailureClass",
    "WheelAnalysis",
    "analyse_wheel",
    "build_wheel",
    "check_disk",
    "classify_failure",
]

FailureClass = Literal[
    "compile_error", "timeout", "memory", "disk_full", "dependency_missing", "other"
]
DEFAULT_LOG_LIMIT = 4 * 1024 * 1024
# 1980-01-01: the earliest time a zip archive can record; makes wheels reproducible.
DEFAULT_SOURCE_DATE_EPOCH = 315532800
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


class DiskSpaceLow(BuildError):
    """Too little free disk to start a build; the builder should stop taking work."""

    def __init__(self, path: Path, free: int, required: int) -> None:
        self.path = path
        self.free = free
        self.required = required
        super().__init__(
            f"only {free // (1024 * 1024)} MiB free in {path}, "
            f"{required // (1024 * 1024)} MiB needed to build"
        )


@dataclass(frozen=True)
class BuildResult:
    """The outcome of one :func:`build_wheel` call."""

    package: str
    version: str
    status: Literal["success", "failed"]
    failure_class: FailureClass | None  # None on success
    duration: float  # seconds of wall clock for the pip run
    log: str  # the full log, or its head and tail with a note (see log_dropped)
    log_path: Path  # the full log on disk (until cleanup)
    log_size: int  # bytes in the full log
    log_dropped: int  # bytes of the full log not in `log`
    wheels: tuple[Path, ...]  # built wheels (until cleanup)
    build_dir: Path
    sandboxed: bool
    returncode: int | None  # None after a timeout

    @property
    def ok(self) -> bool:
        """True when the build succeeded."""
        return self.status == "success"

    def cleanup(self) -> None:
        """Remove the build directory with its wheels and log."""
        shutil.rmtree(self.build_dir, ignore_errors=True)


def check_disk(path: str | Path, min_free: int) -> int:
    """Free bytes at *path*; raise :class:`DiskSpaceLow` when fewer than *min_free*."""
    path = Path(path)
    free = shutil.disk_usage(path).free
    if free < min_free:
        raise DiskSpaceLow(path, free, min_free)
    return free


# Patterns that say why a build failed, checked in this order (first match wins).
_DISK = re.compile(r"No space left on device|Disk quota exceeded|ENOSPC")
_MEMORY = re.compile(
    r"MemoryError|Cannot allocate memory|virtual memory exhausted|out of memory"
    r"|std::bad_alloc|cannot allocate memory|ENOMEM|Killed signal terminated program"
)
_DEPENDENCY = re.compile(
    r"fatal error: [^\n]*: No such file or directory"
    r"|cannot find -l\S+"
    r"|Package \S+ was not found in the pkg-config search path"
    r"|No matching distribution found for (?P<dist>[^\s]+)"
    r"|ModuleNotFoundError: No module named"
    r"|command '[^']+' failed: No such file or directory"
    r"|(?:error: )?could not find (?:a )?(?:rust|cargo|cmake)|can't find Rust compiler",
    re.IGNORECASE,
)
_COMPILE = re.compile(
    r"error: command '[^']*' failed"
    r"|:\d+:\d+: error:"
    r"|\berror: (?:failed to compile|could not compile)"
    r"|subprocess-exited-with-error"
    r"|Failed building wheel for"
    r"|ERROR: Failed to build"
)


def classify_failure(log: str, package: str) -> FailureClass:
    """The failure class a failed build's *log* points to."""
    if _DISK.search(log):
        return "disk_full"
    if _MEMORY.search(log):
        return "memory"
    for m in _DEPENDENCY.finditer(log):
        dist = m.group("dist")
        if dist is None:
            return "dependency_missing"
        # "no matching distribution" for the package itself is not a missing dependency.
        name = re.split(r"[\s<>=!~;\[(]", dist, maxsplit=1)[0]
        if canonicalize(name) != canonicalize(package):
            return "dependency_missing"
    if _COMPILE.search(log):
        return "compile_error"
    return "other"


def _read_log(path: Path, limit: int) -> tuple[str, int, int]:
    """(text, size, dropped): the whole log, or its head and tail when over *limit*."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= limit:
            return fh.read().decode("utf-8", "replace"), size, 0
        head_len = limit // 4
        tail_len = limit - head_len
        head = fh.read(head_len)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
    dropped = size - head_len - tail_len
    note = (
        f"\n\n[piwheels: {dropped} bytes of this log left out here; "
        f"the full log is {size} bytes]\n\n"
    )
    return head.decode("utf-8", "replace") + note + tail.decode("utf-8", "replace"), size, dropped


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or any(c.isspace() for c in url):
        raise BuildError(f"{what} must be an http(s) or file URL, not {url!r}")
    return url


def build_wheel(
    package: str,
    version: str,
    *,
    index_url: str,
    work_dir: str | Path,
    timeout: float,
    memory_limit: int | None,
    min_free_disk: int,
    sandbox: str = "auto",
    extra_index_urls: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    find_links: Sequence[str | Path] = (),
    build_isolation: bool = True,
    log_limit: int = DEFAULT_LOG_LIMIT,
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH,
    grace: float = 5.0,
    timings: Timings | None = None,
) -> BuildResult:
    """Build a wheel of *package* == *version* from source; see the module docstring.

    *env* adds variables to the clean build environment.  *python* is the
    interpreter that builds (default: this one).  *find_links* are extra
    local folders of distributions (bound read-only into the sandbox).
    *timings* receives the steps ``prepare``, ``pip wheel``, ``straggler
    scan`` and ``log read``.

    Raises :class:`InvalidName` for a bad package name or version,
    :class:`DiskSpaceLow` (a :class:`BuildError`) when *work_dir* has less than
    *min_free_disk* bytes free, and :class:`BuildError` when the build
    cannot be attempted (bad settings, ``sandbox="on"`` without bubblewrap).
    A build that runs and fails is a :class:`BuildResult` with status
    ``failed``.
    """
    timings = timings if timings is not None else Timings()
    with timings.step("prepare"):
        build_dir, box, command, clean_env, bwrap, roots, links = _prepare(
            package,
            version,
            index_url=index_url,
            work_dir=work_dir,
            timeout=timeout,
            memory_limit=memory_limit,
            min_free_disk=min_free_disk,
            sandbox=sandbox,
            extra_index_urls=extra_index_urls,
            env=env,
            python=python,
            find_links=find_links,
            build_isolation=build_isolation,
            source_date_epoch=source_date_epoch,
        )
    tmp, out = box / "tmp", box / "out"
    log_path = build_dir / "log.txt"
    status_line = sandbox_status(sandbox)
    with open(log_path, "ab") as log:
        header = [
            f"piwheels build of {package} {version}",
            f"started: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
            f"{status_line}",
            f"timeout: {timeout:g} s; memory limit: "
            + (f"{memory_limit // (1024 * 1024)} MiB (RLIMIT_AS)" if memory_limit else "none"),
            "command: " + " ".join(command),
            "",
        ]
        log.write("\n".join(header).encode() + b"\n")
        log.flush()
        result = run_limited(
            command,
            env=clean_env,
            cwd=box,
            output=log,
            timeout=timeout,
            memory_limit=memory_limit,
            bwrap=bwrap,
            ro_binds=[*roots, *links],
            rw_binds=[str(box)],
            tmp_dir=tmp,
            grace=grace,
            timings=timings,
            step="pip wheel",
        )
        log.flush()
        if result.timed_out:
            trailer = f"piwheels: build killed after the timeout of {timeout:g} s"
        else:
            trailer = f"piwheels: pip exited with status {result.returncode}"
        trailer += f" after {result.duration:.1f} s"
        if result.stragglers:
            trailer += f"; killed {result.stragglers} leftover process(es)"
        log.write(b"\n" + trailer.encode() + b"\n")

    with timings.step("log read"):
        wheels = tuple(sorted(out.glob("*.whl")))
        text, size, dropped = _read_log(log_path, log_limit)
    failure: FailureClass | None = None
    if result.timed_out:
        failure = "timeout"
    elif result.returncode != 0:
        failure = classify_failure(text, package)
    elif not wheels:
        failure = "other"
    return BuildResult(
        package=package,
        version=version,
        status="failed" if failure else "success",
        failure_class=failure,
        duration=result.duration,
        log=text,
        log_path=log_path,
        log_size=size,
        log_dropped=dropped,
        wheels=() if failure else wheels,
        build_dir=build_dir,
        sandboxed=result.sandboxed,
        returncode=result.returncode,
    )


def _prepare(
    package: str,
    version: str,
    *,
    index_url: str,
    work_dir: str | Path,
    timeout: float,
    memory_limit: int | None,
    min_free_disk: int,
    sandbox: str,
    extra_index_urls: Sequence[str],
    env: Mapping[str, str] | None,
    python: str | None,
    find_links: Sequence[str | Path],
    build_isolation: bool,
    source_date_epoch: int,
) -> tuple[Path, Path, list[str], dict[str, str], str | None, tuple[str, ...], list[str]]:
    """Check the settings and make the build directory.

    Returns (build dir, sandbox dir, pip command, environment, bwrap, Python roots, links).
    """
    validate_name(package)
    validate_version(version)
    _check_url(index_url, "index_url")
    for url in extra_index_urls:
        _check_url(url, "extra_index_urls")
    if timeout <= 0:
        raise BuildError(f"timeout must be positive, not {timeout}")
    if memory_limit is not None and memory_limit <= 0:
        raise BuildError(f"memory_limit must be positive or None, not {memory_limit}")
    bwrap = resolve_sandbox(sandbox)
    python = python or sys.executable
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    check_disk(work_dir, min_free_disk)
    roots = python_roots(python)

    build_dir = Path(tempfile.mkdtemp(prefix=f"build-{canonicalize(package)}-", dir=work_dir))
    box = build_dir / "sandbox"
    home, tmp, out = box / "home", box / "tmp", box / "out"
    for d in (home, tmp, out):
        d.mkdir(parents=True)
    links = [str(Path(p).resolve()) for p in find_links]

    command = [
        python,
        "-m",
        "pip",
        "wheel",
        f"{package}=={version}",
        "--no-deps",
        "--no-binary",
        package,
        "--no-cache-dir",
        "--index-url",
        index_url,
        "--wheel-dir",
        str(out),
        "--verbose",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "--no-input",
    ]
    for url in extra_index_urls:
        command += ["--extra-index-url", url]
    for link in links:
        command += ["--find-links", link]
    if not build_isolation:
        command.append("--no-build-isolation")

    clean_env = {
        "PATH": f"{os.path.dirname(os.path.abspath(python))}:{SYSTEM_PATH}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp" if bwrap else str(tmp),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIWHEELS_BUILD": "1",
        "GIT_ALLOW_PROTOCOL": "file",
        "SOURCE_DATE_EPOCH": str(source_date_epoch),
        "PYTHONUNBUFFERED": "1",
    }
    if env:
        clean_env.update(env)
    return build_dir, box, command, clean_env, bwrap, roots, links


@dataclass(frozen=True)
class WheelAnalysis:
    """What the builder reports about one built wheel."""

    path: Path
    info: WheelInfo  # filename, tags, Requires-Python, Requires-Dist, METADATA, sha256...
    libraries: tuple[LibraryDependency, ...]  # direct DT_NEEDED, with their packages

    @property
    def apt_packages(self) -> tuple[str, ...]:
        """Debian packages the wheel needs at run time, sorted."""
        return tuple(sorted({lib.package for lib in self.libraries if lib.package}))

    @property
    def missing_libraries(self) -> tuple[str, ...]:
        """Libraries no installed package provides (and the wheel does not ship)."""
        return tuple(lib.library for lib in self.libraries if lib.missing)


def analyse_wheel(path: str | Path, *, timings: Timings | None = None) -> WheelAnalysis:
    """Check a built wheel (:func:`piwheels.wheels.read_wheel`) and find its apt dependencies.

    Raises :class:`InvalidWheel` when the wheel itself is bad; the builder
    then fails the build with that message rather than sending it.
    *timings* receives ``wheel check``, ``ELF scan`` and ``dpkg -S``.
    """
    timings = timings if timings is not None else Timings()
    path = Path(path)
    with timings.step("wheel check"):
        info = read_wheel(path)
    libraries = wheel_library_deps(path, timings=timings)
    return WheelAnalysis(path=path, info=info, libraries=libraries)
