"""Run an untrusted command under limits, inside bubblewrap when there is one.

What is enforced, and how:

* **Wall-clock timeout** for the whole process tree.  The command starts in
  a new session; on timeout its process group gets SIGTERM, then SIGKILL
  after a grace period.  Inside bubblewrap the command also runs in its own
  PID namespace with ``--die-with-parent``, so killing bubblewrap takes every
  process of the build with it.  Finally every process still carrying this
  run's marker variable (``PIWHEELS_RUN_ID``) in its environment is killed,
  which catches processes that left the session (``setsid``, double fork)
  when there is no sandbox.  That scan of ``/proc`` is skipped when the
  sandbox ends by itself: the PID namespace ends with the command, and the
  kernel kills whatever was left in it before bubblewrap exits.
* **Memory**: ``RLIMIT_AS`` (virtual address space), per process.  Simple and
  works everywhere without root, but it is per process, not per build: a
  build running several compilers at once can use several times the limit.
  A cgroup would count the whole tree; it is not used because it needs
  root and a writable cgroup hierarchy, which a builder may not have.
* Core dumps are switched off (``RLIMIT_CORE`` = 0) so a crashing compiler
  does not fill the disk.
* **Filesystem** (bubblewrap): ``/usr``, ``/etc``, ``/opt`` and the Python
  installation read-only, ``/tmp`` private (a directory of the build), only
  the directories the caller names writable, fresh ``/proc`` and ``/dev``.
* **Network**: *not* unshared.  The index a builder uses is usually a
  loopback or LAN address, and a new network namespace has only its own
  loopback, so reaching the index would need a unix-socket bridge.  Setup
  scripts can therefore reach the network; ``GIT_ALLOW_PROTOCOL=file`` still
  stops git clones.
* The command keeps the caller's uid: a Python installed under a private
  home (e.g. pyenv under ``/root``) is not readable by another uid.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from piwheels.builder.timing import Timings
from piwheels.errors import BuildError

__all__ = [
    "MARKER_VARIABLE",
    "RunResult",
    "find_bwrap",
    "kill_marked",
    "python_roots",
    "resolve_sandbox",
    "run_limited",
    "sandbox_status",
]

MARKER_VARIABLE = "PIWHEELS_RUN_ID"
SANDBOX_CHOICES = ("auto", "on", "off")
# System directories a build may read; each is bound read-only when present.
_SYSTEM_RO = ("/usr", "/etc", "/opt")
_TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class RunResult:
    """How a limited command ended."""

    returncode: int | None  # None when it was killed for the timeout
    timed_out: bool
    duration: float  # seconds, wall clock
    stragglers: int  # processes killed after the command ended
    sandboxed: bool


def find_bwrap() -> str | None:
    """The bubblewrap executable on ``PATH``, if any."""
    return shutil.which("bwrap")


@functools.cache
def _bwrap_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"
    return out.stdout.strip().removeprefix("bubblewrap ").strip() or "unknown version"


def sandbox_status(sandbox: str = "auto") -> str:
    """One line for the builder's start-up log: are builds sandboxed?"""
    if sandbox == "off":
        return "sandbox switched off: builds NOT sandboxed"
    bwrap = find_bwrap()
    if bwrap is None:
        return "bubblewrap not found: builds NOT sandboxed"
    return f"bubblewrap {_bwrap_version(bwrap)}: builds sandboxed"


def resolve_sandbox(sandbox: str) -> str | None:
    """The bwrap path to use for *sandbox* (``auto``/``on``/``off``), or None.

    Raises :class:`BuildError` for ``on`` without bubblewrap or a bad value.
    """
    if sandbox not in SANDBOX_CHOICES:
        raise BuildError(f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, not {sandbox!r}")
    if sandbox == "off":
        return None
    bwrap = find_bwrap()
    if bwrap is None and sandbox == "on":
        raise BuildError("sandbox is 'on' but bubblewrap (bwrap) is not installed")
    return bwrap


@functools.cache
def python_roots(python: str) -> tuple[str, ...]:
    """Directories the interpreter *python* needs to run (prefix, base prefix, its bin)."""
    try:
        out = subprocess.run(
            [
                python,
                "-c",
                "import json, sys; "
                "print(json.dumps([sys.prefix, sys.base_prefix, sys.executable]))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"},
        )
        prefix, base, executable = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise BuildError(f"cannot run the build Python {python!r}: {exc}")
    roots = {
        os.path.realpath(prefix),
        os.path.realpath(base),
        os.path.dirname(os.path.realpath(executable)),
        os.path.dirname(os.path.abspath(python)),
        prefix,
    }
    return tuple(sorted(r for r in roots if not _under_system(r)))


def _under_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_RO)


def bwrap_command(
    bwrap: str,
    command: Sequence[str],
    *,
    cwd: str,
    ro_binds: Sequence[str] = (),
    rw_binds: Sequence[str] = (),
    tmp_dir: str | None = None,
) -> list[str]:
    """The bubblewrap command line that runs *command* with the policy above."""
    args = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "piwheels-build",
    ]
    for d in _SYSTEM_RO:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for link in _TOP_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/var/tmp"]
    if tmp_dir is not None:
        args += ["--bind", tmp_dir, "/tmp"]
    else:
        args += ["--tmpfs", "/tmp"]
    for path in ro_binds:
        if not _under_system(path):
            args += ["--ro-bind", path, path]
    for path in rw_binds:
        args += ["--bind", path, path]
    args += ["--chdir", cwd, "--", *command]
    return args


def _limits(memory_limit: int | None) -> None:
    # Runs in the child between fork and exec: keep it to plain syscalls.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))


def kill_marked(run_id: str, *, rounds: int = 5) -> int:
    """Kill every process whose environment carries ``PIWHEELS_RUN_ID=<run_id>``.

    Returns how many processes were killed.  Repeats a few rounds because a
    process may fork while we look.
    """
    needle = f"{MARKER_VARIABLE}={run_id}".encode()
    me = os.getpid()
    killed = 0
    for _ in range(rounds):
        found = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    environ = fh.read()
            except OSError:
                continue  # gone, or not ours to read
            if needle in environ.split(b"\0"):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    found += 1
                except ProcessLookupError:
                    pass
        killed += found
        if not found:
            break
        time.sleep(0.05)
    return killed


def run_limited(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path,
    output: IO[bytes],
    timeout: float,
    memory_limit: int | None = None,
    bwrap: str | None = None,
    ro_binds: Sequence[str | Path] = (),
    rw_binds: Sequence[str | Path] = (),
    tmp_dir: str | Path | None = None,
    grace: float = 5.0,
    timings: Timings | None = None,
    step: str = "run",
) -> RunResult:
    """Run *command* with stdout and stderr into *output*, under the limits above.

    *env* is the whole environment (nothing is inherited).  With *bwrap* the
    command runs inside bubblewrap: *ro_binds* readable, *rw_binds* writable,
    *tmp_dir* mounted as ``/tmp``.  With *timings*, the run is recorded as
    step *step* and, without the sandbox, the search for leftover processes
    as ``straggler scan``.
    """
    timings = timings if timings is not None else Timings()
    if timeout <= 0:
        raise BuildError(f"timeout must be positive, not {timeout}")
    run_id = uuid.uuid4().hex
    full_env = dict(env)
    full_env[MARKER_VARIABLE] = run_id
    cwd = str(cwd)
    argv = list(command)
    if bwrap is not None:
        argv = bwrap_command(
            bwrap,
            argv,
            cwd=cwd,
            ro_binds=[str(p) for p in ro_binds],
            rw_binds=[str(p) for p in rw_binds],
            tmp_dir=None if tmp_dir is None else str(tmp_dir),
        )
    start = time.monotonic()
    with timings.step(step):
        proc, timed_out = _run(argv, full_env, cwd, output, timeout, memory_limit, grace)
    duration = time.monotonic() - start
    # Whatever is left of the group.
    _signal_group(proc.pid, signal.SIGKILL)
    stragglers = 0
    ended_in_box = bwrap is not None and not timed_out and (proc.returncode or 0) >= 0
    if not ended_in_box:
        # Anything that left the group.  Not needed when the sandbox ended by
        # itself: bubblewrap's init (PID 1 of the build's PID namespace) exits
        # with the command, the kernel kills every process left in the
        # namespace, and bubblewrap reaps its init before it exits.  When
        # bubblewrap itself was killed (timeout), that happens after we return.
        with timings.step("straggler scan"):
            stragglers = kill_marked(run_id)
    return RunResult(
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration=duration,
        stragglers=stragglers,
        sandboxed=bwrap is not None,
    )


def _run(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    output: IO[bytes],
    timeout: float,
    memory_limit: int | None,
    grace: float,
) -> tuple[subprocess.Popen[bytes], bool]:
    """Start *argv* in a new session and wait for it under *timeout*; (process, timed out)."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=functools.partial(_limits, memory_limit),
        )
    except OSError as exc:
        raise BuildError(f"cannot start {argv[0]}: {exc.strerror or exc}")
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.returncode is None:  # interrupted (e.g. KeyboardInterrupt): leave nothing
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, timed_out


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
