"""The builder daemon: asks the master for work, builds, reports, sends the files.

One DEALER socket to the master's ``builder`` endpoint, strictly request and
reply (every message but BYE gets one answer)::

    HELLO -> ACK | REFUSED
    IDLE  -> BUILD | SLEEP | DIE
    BUSY  -> CONT | ABORT | DIE          (every heartbeat while a build runs)
    BUILT -> SEND | DONE | DIE
    SENT  -> SEND | DONE | DIE
    BYE   (no answer)

A build runs in a worker thread so the main loop keeps saying BUSY and can
obey ABORT by killing the build's whole process tree.  Files go over a
separate DEALER to the master's ``file`` endpoint (see
:class:`~piwheels.filetransfer.FileSender`).

When the master does not answer within ``[builder] master_timeout`` the
daemon closes the socket and tries again with a new one after an exponential
backoff (from ``reconnect_min`` up to ``reconnect_max``).  A build is never
dropped for that: the next HELLO carries ``resume_build_id`` and, after ACK,
the daemon goes on with BUSY while the build still runs, or sends the same
BUILT again once it has ended, so the master can collect it (SEND...), let
it go on (CONT), or drop it (ABORT, DONE).  A finished build, its result and
wheels, is saved in the build folder (:mod:`piwheels.builder.held`) until the
master says DONE, so it also survives a restart of the builder process.
After ABORT the daemon answers with IDLE.

A build that cannot start because the build folder is low on disk is
reported as a failed build with failure class ``disk_full`` and the IDLE
stats show the free space; the master should treat that class as the
builder's fault, not the package's.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import platform
import shutil
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .. import protocols
from ..errors import BuildError, ConfigError, InvalidWheel, ProtocolError, TransportTimeout
from ..filetransfer import FileSender, SenderConnections
from ..settings import KeysSettings, Settings
from ..systemd import Notifier
from ..transport import DEALER, Context, CurveKeys, Received, Socket, load_keys, now
from .build import BuildResult, DiskSpaceLow, analyse_wheel, build_wheel
from .held import HeldStateError, discard_held, held_folder, load_held, save_held
from .importtest import import_test
from .sandbox import sandbox_status
from .timing import Timings

__all__ = [
    "BuilderDaemon",
    "BuilderRefused",
    "MasterLost",
    "curve_config",
    "host_stats",
    "interpreter_facts",
    "os_release",
]

log = logging.getLogger("piwheels.builder")

#: Every process of a build carries this variable, so ABORT can find them all.
JOB_VARIABLE = "PIWHEELS_BUILDER_JOB"
_ERROR_LIMIT = 10_000


class BuilderRefused(ProtocolError):
    """The master refused this builder (REFUSED); the reason is the message."""


class MasterLost(Exception):
    """The master did not answer in time."""


class _Stop(Exception):
    """The daemon was asked to stop (signal or DIE)."""


# -- facts about this machine ------------------------------------------------------------

_FACTS_SCRIPT = r"""
import json, platform, struct, sys, sysconfig
impl = sys.implementation.name
v = sys.version_info
soabi = sysconfig.get_config_var("SOABI") or ""
if impl == "cpython":
    abi = "cp%d%d" % (v[0], v[1])
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        abi += "t"
    if hasattr(sys, "gettotalrefcount"):
        abi += "d"
elif impl == "pypy":
    parts = soabi.split("-")
    abi = "_".join(parts[:2]) if len(parts) >= 2 else "pypy%d%d" % (v[0], v[1])
else:
    abi = soabi.replace("-", "_").replace(".", "_") or impl
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
# A 32-bit userland on a 64-bit kernel builds 32-bit wheels (as pip tags them).
if struct.calcsize("P") == 4:
    plat = {"linux_x86_64": "linux_i686", "linux_aarch64": "linux_armv7l"}.get(plat, plat)
print(json.dumps({"python_version": platform.python_version(), "abi": abi, "platform": plat}))
"""


def interpreter_facts(python: str | os.PathLike[str]) -> dict[str, str]:
    """Python version, ABI tag and wheel platform tag of the interpreter that builds."""
    try:
        out = subprocess.run(
            [str(python), "-c", _FACTS_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"},
        )
        facts: dict[str, str] = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise BuildError(f"cannot run the build Python {python}: {exc}")
    return facts


def pip_version(python: str | os.PathLike[str]) -> str:
    """The version of pip the build Python has ('' if none)."""
    try:
        out = subprocess.run(
            [str(python), "-m", "pip", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": os.defpath, "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull},
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    parts = out.stdout.split()
    return parts[1] if len(parts) > 1 else ""


def os_release(path: str = "/etc/os-release") -> tuple[str, str]:
    """(name, version) of the operating system, from os-release."""
    values: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value.strip().strip("\"'")
    except OSError:
        return platform.system(), platform.release()
    name = values.get("NAME") or values.get("ID") or platform.system()
    return name[:200], values.get("VERSION_ID", "")[:200]


def board_model(path: str = "/proc/device-tree/model") -> str | None:
    """The board's model (e.g. a Raspberry Pi's), where the device tree says it."""
    try:
        with open(path, "rb") as fh:
            return fh.read().rstrip(b"\x00\n").decode("utf-8", "replace")[:200] or None
    except OSError:
        return None


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def cpu_temperature() -> float | None:
    """Degrees Celsius of the first thermal zone that answers, if any."""
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp")):
        try:
            with open(zone, encoding="ascii") as fh:
                return int(fh.read().strip()) / 1000
        except (OSError, ValueError):
            continue
    return None


def host_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The HOST_STATS record for this machine, disk figures for *path*."""
    disk = shutil.disk_usage(path)
    mem = _meminfo()
    return {
        "timestamp": now(),
        "disk_total": disk.total,
        "disk_free": disk.free,
        "mem_total": mem.get("MemTotal", 0),
        "mem_free": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "swap_total": mem.get("SwapTotal", 0),
        "swap_free": mem.get("SwapFree", 0),
        "load_average": os.getloadavg()[0],
        "cpu_temp": cpu_temperature(),
    }


def curve_config(keys: KeysSettings) -> tuple[CurveKeys | None, bytes | None]:
    """This builder's key pair and the master's public key; (None, None) when curve is off."""
    if not keys.curve:
        return None, None
    problems = []
    if keys.secret_key_file is None:
        problems.append("[keys] secret_key_file is not set (needed while [keys] curve is on)")
    if keys.server_public_key_file is None:
        problems.append("[keys] server_public_key_file is not set (needed while curve is on)")
    if problems:
        raise ConfigError(problems)
    assert keys.secret_key_file is not None and keys.server_public_key_file is not None
    own = load_keys(keys.secret_key_file)
    if own.secret is None:
        raise ConfigError(f"[keys] secret_key_file {keys.secret_key_file} holds no secret key")
    return own, load_keys(keys.server_public_key_file).public


def _kill_job(job_id: str) -> int:
    """SIGKILL every process whose environment carries this job's marker."""
    needle = f"{JOB_VARIABLE}={job_id}".encode()
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), 9)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


# -- one build -------------------------------------------------------------------------------


@dataclass
class HeldBuild:
    """A finished build the master has not yet collected (until DONE)."""

    build_id: int
    built: dict[str, Any]  # the BUILT payload
    files: dict[str, Path]  # filename -> wheel on disk
    result: BuildResult | None = None  # its build folder, until saved or discarded
    folder: Path | None = None  # where it is saved (see piwheels.builder.held)

    def save(self, folder: Path) -> None:
        """Keep the build on disk in *folder* (survives a restart of the builder)."""
        self.files = save_held(folder, self.built, self.files)
        self.folder = folder
        self.release()

    def release(self) -> None:
        """Free the build folder; a saved build stays saved."""
        if self.result is not None:
            self.result.cleanup()
            self.result = None

    def discard(self) -> None:
        """Forget the build entirely (the master has it, or gave up on it)."""
        self.release()
        if self.folder is not None:
            discard_held(self.folder)
            self.folder = None


@dataclass
class BuildJob:
    """Runs one build (and the analysis of its wheels) in a thread."""

    build_id: int
    package: str
    version: str
    timeout: float
    settings: Settings
    index_url: str
    extra_index_urls: list[str]
    environment: dict[str, str]
    held_folder: Path | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    held: HeldBuild | None = None
    aborted: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: Wall and CPU time of each step (see :mod:`piwheels.builder.timing`).
    timings: Timings = field(default_factory=Timings)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"build-{self.build_id}", daemon=True)
        self.thread.start()

    def abort(self, wait: float = 120.0) -> None:
        """Kill the build's processes and wait for the thread to finish."""
        self.aborted.set()
        deadline = time.monotonic() + wait
        # Keep killing: a process may be starting while we look.
        while not self.done.wait(0.1):
            _kill_job(self.job_id)
            if time.monotonic() > deadline:
                log.error("build %d did not stop within %g s", self.build_id, wait)
                break
        if self.held is not None:
            self.held.discard()

    def _run(self) -> None:
        b = self.settings.builder
        start = time.monotonic()
        result: BuildResult | None = None
        files: dict[str, Path] = {}
        records: list[dict[str, Any]] = []
        failure: str | None = None
        log_text = ""
        timings = self.timings
        try:
            result = build_wheel(
                self.package,
                self.version,
                index_url=self.index_url,
                extra_index_urls=self.extra_index_urls,
                work_dir=b.build_dir,
                timeout=self.timeout,
                memory_limit=b.memory_limit,
                min_free_disk=b.min_free_disk,
                sandbox=b.sandbox,
                env={JOB_VARIABLE: self.job_id},
                python=str(b.python),
                timings=timings,
            )
            log_text = result.log
            failure = result.failure_class
            if result.ok and not self.aborted.is_set():
                for wheel in result.wheels:
                    record, note = self._analyse(wheel, result.build_dir)
                    log_text += note
                    if record is None:
                        failure = "invalid_wheel"
                        break
                    records.append(record)
                    files[record["filename"]] = wheel
        except DiskSpaceLow as exc:
            failure, log_text = "disk_full", f"piwheels builder: build not attempted: {exc}\n"
        except BuildError as exc:
            failure, log_text = "other", f"piwheels builder: build not attempted: {exc}\n"
        except Exception:
            failure = "other"
            log_text += "\npiwheels builder: internal error\n" + traceback.format_exc()
            log.exception("build %d failed inside the builder", self.build_id)
        duration = result.duration if result is not None else time.monotonic() - start
        if self.aborted.is_set():
            failure = "aborted"
        log_text += f"\npiwheels builder: step times: {timings.summary()}\n"
        built = {
            "build_id": self.build_id,
            "status": failure is None,
            "duration": timedelta(seconds=duration),
            "failure_class": failure,
            "log": log_text[-protocols.LOG_LIMIT :],
            "files": records if failure is None else [],
            "environment": self.environment,
        }
        held = HeldBuild(self.build_id, built, files if failure is None else {}, result)
        if self.held_folder is not None and not self.aborted.is_set():
            try:
                with timings.step("held save"):
                    held.save(self.held_folder)
            except (OSError, TypeError, ValueError) as exc:
                # Still held in memory: lost only if the builder restarts before DONE.
                log.error("cannot save build %d in %s: %s", self.build_id, self.held_folder, exc)
        log.info("build %d steps: %s", self.build_id, timings.summary())
        self.held = held
        self.done.set()

    def _analyse(self, wheel: Path, work: Path) -> tuple[dict[str, Any] | None, str]:
        try:
            analysis = analyse_wheel(wheel, timings=self.timings)
        except InvalidWheel as exc:
            return None, f"\npiwheels builder: the built wheel is not valid: {exc}\n"
        info = analysis.info
        note = f"\npiwheels builder: {info.filename}: {info.size} bytes, sha256 {info.sha256}\n"
        import_ok: bool | None = None
        import_error: str | None = None
        if self.settings.builder.import_test and not self.aborted.is_set():
            try:
                test = import_test(
                    wheel,
                    python=str(self.settings.builder.python),
                    sandbox=self.settings.builder.sandbox,
                    work_dir=work,
                    memory_limit=self.settings.builder.memory_limit,
                    modules=info.modules,
                    timings=self.timings,
                )
                import_ok, import_error = test.ok, test.error
                note += f"piwheels builder: import test of {', '.join(test.modules) or '(none)'}: "
                note += "ok\n" if test.ok else f"FAILED: {test.error}\n"
            except BuildError as exc:
                import_error = f"import test not run: {exc}"
                note += f"piwheels builder: {import_error}\n"
        record = {
            "filename": info.filename,
            "size": info.size,
            "sha256": info.sha256,
            "requires_python": info.requires_python,
            "requires_dist": list(info.requires_dist),
            "metadata_sha256": info.metadata_sha256,
            "apt_dependencies": list(analysis.apt_packages),
            "missing_libraries": list(analysis.missing_libraries),
            "import_ok": import_ok,
            "import_error": None if import_error is None else import_error[:_ERROR_LIMIT],
        }
        return record, note


# -- the daemon ------------------------------------------------------------------------------


class BuilderDaemon:
    """The builder's main loop (see the module docstring); :meth:`run` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        context: Context | None = None,
        reply_timeout: float | None = None,
        backoff_start: float | None = None,
    ) -> None:
        self.settings = settings
        b = settings.builder
        self.keys, self.server_public = curve_config(settings.keys)
        self.context = context or Context()
        self._own_context = context is None
        # One file connection kept across builds: a new CurveZMQ connection per file costs
        # the master a handshake and a key check each time.
        self.connections = SenderConnections(max_idle=1)
        # The arguments override the settings (tests and embedders use them).
        self.reply_timeout = (
            b.master_timeout.total_seconds() if reply_timeout is None else reply_timeout
        )
        self.systemd = Notifier()
        self.backoff_start = (
            b.reconnect_min.total_seconds() if backoff_start is None else backoff_start
        )
        self.builder_address = f"tcp://{_host(b.master_host)}:{b.builder_port}"
        self.file_address = f"tcp://{_host(b.master_host)}:{b.file_port}"
        b.build_dir.mkdir(parents=True, exist_ok=True)
        self.facts = interpreter_facts(b.python)
        self.sandbox = sandbox_status(b.sandbox)
        self.os_name, self.os_version = os_release()
        self.environment = {
            "python": self.facts["python_version"],
            "abi": self.facts["abi"],
            "platform": self.facts["platform"],
            "os": f"{self.os_name} {self.os_version}".strip(),
            "sandbox": self.sandbox,
            "pip": pip_version(b.python),
            "builder": b.label,
        }
        self._stop = threading.Event()
        self._connected = False
        self.stop_reason = "stopped"
        self.sock: Socket | None = None
        self.job: BuildJob | None = None
        self.held_folder = held_folder(b.build_dir, b.label)
        self.held: HeldBuild | None = self._reload_held()
        self.builder_id: int | None = None
        self.heartbeat = b.heartbeat.total_seconds()
        self.index_url = ""
        self.extra_index_urls: list[str] = []
        self.build_timeout = b.build_timeout.total_seconds()
        #: Waits between reconnection attempts, in order (for the logs and tests).
        self.backoffs: list[float] = []
        #: Every HELLO sent, in order.
        self.hellos: list[dict[str, Any]] = []
        log.info("builder %s: %s %s on %s", b.label, self.facts["abi"], self.facts["platform"],
                 self.environment["os"])  # fmt: skip
        log.info("%s", self.sandbox)
        if "NOT" in self.sandbox:
            log.warning("%s", self.sandbox)

    def _reload_held(self) -> HeldBuild | None:
        """The build this builder held when it last stopped, if any (and if sound)."""
        try:
            loaded = load_held(self.held_folder)
        except HeldStateError as exc:
            log.error("%s; discarding it", exc)
            discard_held(self.held_folder)
            return None
        if loaded is None:
            return None
        built, files = loaded
        log.info("holding build %d from before the restart for the master", built["build_id"])
        return HeldBuild(built["build_id"], built, files, folder=self.held_folder)

    # -- control -----------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the daemon to stop (from a signal handler or another thread)."""
        self.stop_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> int:
        """Serve the master until stopped, told to DIE, or refused (raises BuilderRefused)."""
        delay = self.backoff_start
        self.systemd.ready()
        try:
            while not self.stopping:
                self._connected = False
                try:
                    self._session()
                    return 0
                except MasterLost as exc:
                    if self._connected:
                        delay = self.backoff_start
                    log.warning("%s; reconnecting in %g s", exc, delay)
                    # A build, running or finished, is kept: the next HELLO offers it.
                    self._collect()
                    self._close()
                    self.backoffs.append(delay)
                    if self._stop.wait(delay):
                        break
                    delay = min(delay * 2, self.settings.builder.reconnect_max.total_seconds())
                except _Stop:
                    break
            self._bye()
            return 0
        finally:
            self.systemd.stopping()
            self._collect()  # a finished build stays saved for the next start
            self._abandon_build()
            if self.held is not None:
                # Saved on disk, it is offered to the master after a restart.
                self.held.release()
                self.held = None
            self._close()
            self.connections.close()  # before the context, whose close waits for open sockets
            if self._own_context:
                self.context.close()

    # -- the conversation ------------------------------------------------------------------

    def _session(self) -> None:
        self._collect()
        self.sock = self.context.socket(DEALER, reversed(protocols.builder))
        if self.keys is not None and self.server_public is not None:
            self.sock.curve_client(self.keys, self.server_public)
        self.sock.connect(self.builder_address)
        hello = self._hello()
        self.hellos.append(hello)
        reply = self._request("HELLO", hello)
        if reply.msg == "REFUSED":
            raise BuilderRefused(f"the master refused this builder: {reply.data['reason']}")
        if reply.msg != "ACK":
            raise MasterLost(f"the master answered HELLO with {reply.msg}")
        ack = reply.data
        self.builder_id = ack["builder_id"]
        self.index_url = ack["index_url"]
        self.extra_index_urls = list(ack["extra_index_urls"])
        # At least as often as the master asks, and as this builder's setting says.
        self.heartbeat = max(
            0.05,
            min(ack["heartbeat"].total_seconds(), self.settings.builder.heartbeat.total_seconds()),
        )
        self.build_timeout = min(
            ack["build_timeout"].total_seconds(),
            self.settings.builder.build_timeout.total_seconds(),
        )
        log.info("connected to %s as builder %d", self.builder_address, self.builder_id)
        self._connected = True
        # A build kept across a reconnect (or a restart) is reported first.
        if self.job is not None:
            self._converse(self._watch(self.job))
        elif self.held is not None:
            self._converse(self._request("BUILT", self.held.built))
        else:
            self._converse(self._idle())

    def _converse(self, reply: Received) -> None:
        while True:
            msg, data = reply.msg, reply.data
            if msg == "DIE" and data["reason"].startswith("unknown builder"):
                # A restarted master does not know this connection: greet it again.
                raise MasterLost(f"the master does not know this builder: {data['reason']}")
            if msg == "DIE":
                log.warning("the master says die: %s", data["reason"])
                self.stop_reason = "told to die"
                return
            if msg == "SLEEP":
                seconds = min(data["seconds"], self.settings.builder.sleep_max.total_seconds())
                log.info("sleeping %g s (%s)", seconds, data["reason"])
                if self._stop.wait(seconds):
                    raise _Stop()
                reply = self._idle()
            elif msg == "BUILD":
                reply = self._build(data)
            elif msg == "SEND":
                reply = self._send(data)
            elif msg == "DONE":
                if self.held is not None and self.held.build_id == data["build_id"]:
                    self.held.discard()
                    self.held = None
                reply = self._idle()
            elif msg == "REFUSED":
                raise BuilderRefused(f"the master refused this builder: {data['reason']}")
            else:
                # CONT, ABORT or ACK out of turn: say where we are.
                log.warning("unexpected %s from the master", msg)
                reply = self._idle()

    def _idle(self) -> Received:
        stats = host_stats(self.settings.builder.build_dir)
        if stats["disk_free"] < self.settings.builder.min_free_disk:
            log.warning(
                "only %d MiB free in %s: not building until there is more",
                stats["disk_free"] >> 20,
                self.settings.builder.build_dir,
            )
        return self._request("IDLE", {"stats": stats})

    def _build(self, data: dict[str, Any]) -> Received:
        build_id = data["build_id"]
        if self.held is not None:
            # A new build means the master has given up on the old one.
            self.held.discard()
            self.held = None
        timeout = min(data["timeout"].total_seconds(), self.build_timeout) or self.build_timeout
        log.info("building %s %s (build %d)", data["package"], data["version"], build_id)
        job = BuildJob(
            build_id=build_id,
            package=data["package"],
            version=data["version"],
            timeout=max(1.0, timeout),
            settings=self.settings,
            index_url=self.index_url,
            extra_index_urls=self.extra_index_urls,
            environment=self.environment,
            held_folder=self.held_folder,
        )
        self.job = job
        job.start()
        return self._watch(job)

    def _watch(self, job: BuildJob) -> Received:
        """Say BUSY every heartbeat until *job* ends, then BUILT."""
        build_id = job.build_id
        while True:
            if self._wait_for(job.done, self.heartbeat):
                self.job = None
                self.held = job.held
                assert self.held is not None
                log.info(
                    "build %d %s", build_id, "succeeded" if self.held.built["status"] else "failed"
                )
                return self._request("BUILT", self.held.built)
            reply = self._request(
                "BUSY",
                {"build_id": build_id, "stats": host_stats(self.settings.builder.build_dir)},
            )
            if reply.msg == "CONT":
                continue
            log.warning(
                "abandoning build %d: %s",
                build_id,
                reply.data["reason"] if reply.data else reply.msg,
            )
            self._abandon_build()
            if reply.msg == "ABORT":
                return self._idle()
            return reply

    def _send(self, data: dict[str, Any]) -> Received:
        filename = data["filename"]
        path = self.held.files.get(filename) if self.held is not None else None
        if path is None or self.held is None or self.held.build_id != data["build_id"]:
            log.error("the master asked for %s of build %d, which is not held", filename,
                      data["build_id"])  # fmt: skip
        else:
            sender = FileSender(
                self.context,
                self.file_address,
                path,
                data["transfer"],
                keys=self.keys,
                server_public=self.server_public,
                give_up=self.reply_timeout,
                stop=self._stop,
                connections=self.connections,
            )
            result = sender.run()
            if self.stopping:
                raise _Stop()
            if result.ok:
                log.info("sent %s (%d bytes)", filename, result.size or 0)
            else:
                log.warning("sending %s failed: %s", filename, result.reason)
        return self._request("SENT", {"build_id": data["build_id"], "filename": filename})

    # -- plumbing -------------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        b = self.settings.builder
        hello: dict[str, Any] = {
            "protocol": protocols.PROTOCOL_VERSION,
            "label": b.label,
            "python_version": self.facts["python_version"],
            "abi": self.facts["abi"],
            "platform": self.facts["platform"],
            "os_name": self.os_name,
            "os_version": self.os_version,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count() or 1,
            "board": board_model(),
            "build_timeout": b.build_timeout,
            "sandbox": self.sandbox,
            "stats": host_stats(b.build_dir),
        }
        if self.job is not None:
            hello["resume_build_id"] = self.job.build_id
        elif self.held is not None:
            hello["resume_build_id"] = self.held.build_id
        return hello

    def _request(self, msg: str, data: Any) -> Received:
        """Send *msg* and wait for the master's answer (MasterLost after the timeout)."""
        if self.stopping:
            raise _Stop()
        assert self.sock is not None
        try:
            self.sock.send_msg(msg, data, timeout=self.reply_timeout)
        except TransportTimeout as exc:
            raise MasterLost(f"cannot reach the master at {self.builder_address}") from exc
        deadline = time.monotonic() + self.reply_timeout
        while True:
            if self.stopping:
                raise _Stop()
            self.systemd.watchdog()
            left = deadline - time.monotonic()
            if left <= 0:
                raise MasterLost(
                    f"no answer to {msg} from the master at {self.builder_address} "
                    f"within {self.reply_timeout:g} s"
                )
            try:
                return self.sock.recv_msg(timeout=min(0.1, left))
            except TransportTimeout:
                continue
            except ProtocolError as exc:
                log.warning("bad message from the master: %s", exc)

    def _wait_for(self, event: threading.Event, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not event.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            self.systemd.watchdog()
            if self.stopping:
                raise _Stop()
            if time.monotonic() >= deadline:
                return False
        return True

    def _collect(self) -> None:
        """Move a finished build from its job to the held slot."""
        job = self.job
        if job is not None and job.done.is_set():
            self.job = None
            if job.held is not None and not job.aborted.is_set():
                self.held = job.held

    def _abandon_build(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.abort()

    def _bye(self) -> None:
        if self.sock is None or self.sock.closed:
            return
        try:
            self.sock.send_msg("BYE", {"reason": self.stop_reason[:200]}, timeout=1.0)
        except (TransportTimeout, ProtocolError) as exc:
            log.info("could not say BYE: %s", exc)

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=1.0)
            self.sock = None


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
