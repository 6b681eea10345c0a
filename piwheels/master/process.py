"""Master tasks that run in a child process of their own.

A task is a thread, and every thread of one process shares one interpreter lock: on the
master's busiest path the build dispatcher, the file receiver and the page writer took
turns on it (about 4 ms of CPU per build, all in one process).  A task that shares no
state with the others but its sockets (the file receiver: its table of transfers is its
own, and it speaks to the rest only over ``transfers``) can run in a process of its
own instead, so its work and the dispatcher's run on both cores at once.  Such a task
class sets ``process = True``; the master then runs it through :class:`TaskProcess`,
which the master handles like any other task (start, quit, join, is_alive).

The child runs the very same task class (the tests that drive the task directly, in a
thread, still cover all it does); only the endpoints it binds or connects that are
internal become ``ipc://`` sockets in a folder private to this master.  The child:

* sends every log record to the master, which hands it to its own loggers (so the
  console, the log file and ``--debug`` work as for a thread);
* reads the authorized keys folder again when the master does (``RELOAD_KEYS``);
* ignores SIGINT and SIGTERM (they reach the whole process group; the master decides
  when its tasks stop, in order) and stops when the master says QUIT, or when the
  master is gone (the pipe between them closes);
* reports a failure to start (e.g. an address in use) as the exception itself, which
  the master raises as its own, and a failure later by exiting non-zero, which stops
  the master as a failed thread would.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from ..errors import PiwheelsError
from ..settings import Settings
from ..tasks import Task
from ..transport import Context, CurveKeys
from .env import MasterEnv

__all__ = ["START_TIMEOUT", "TaskProcess", "forkserver_context", "set_process_name"]

log = logging.getLogger("piwheels.master")

#: Modules the fork server imports once, so that the children it forks start in
#: milliseconds: the page writer's site process and the tasks that run in processes.
FORKSERVER_PRELOAD = ("piwheels.master.page_writer", "piwheels.master.file_receiver")
#: How long a child process may take to make its task (seconds).
START_TIMEOUT = 60.0
#: How often the child checks that its task is still running (seconds).
_CHECK = 0.5


def forkserver_context() -> BaseContext:
    """The multiprocessing context of every child process of the master.

    A fork server (the master has threads, which a plain fork would copy half-way),
    preloaded with :data:`FORKSERVER_PRELOAD`; every caller sets the same list, so the
    first to start the server cannot leave out another's modules.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return ctx


def set_process_name(name: str) -> None:
    """Name this process as ps and top show it (Linux keeps 15 bytes of it)."""
    try:
        Path("/proc/self/comm").write_text(name[:15])
    except OSError:
        pass  # not Linux, or no /proc: only the name is lost


@dataclass(frozen=True)
class _Spec:
    """What the child needs to make the task (all of it picklable)."""

    cls: type[Task]
    settings: Settings
    addresses: Mapping[str, str]
    output_path: Path
    server_keys: CurveKeys | None
    authorized_keys: Path | None
    log_level: int
    process_name: str


class _PipeHandler(logging.Handler):
    """Sends each record, formatted and stripped of what cannot be pickled, to the master."""

    def __init__(self, conn: multiprocessing.connection.Connection, lock: threading.Lock) -> None:
        super().__init__()
        self.conn = conn
        self.send_lock = lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.msg = record.getMessage()
            record.args = None
            record.exc_info = None
            with self.send_lock:
                self.conn.send(("LOG", record))
        except (OSError, ValueError):
            pass  # the master is gone: nobody is left to read it
        except Exception:
            self.handleError(record)


def _child_main(spec: _Spec, conn: multiprocessing.connection.Connection) -> None:
    """The body of the child process: make the task, run it until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_process_name(spec.process_name)
    lock = threading.Lock()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_PipeHandler(conn, lock))
    root.setLevel(spec.log_level)

    def send(message: tuple[str, Any]) -> None:
        with lock:
            conn.send(message)

    context = Context(authorized_keys=spec.authorized_keys)
    env = MasterEnv(
        settings=spec.settings,
        addresses=spec.addresses,
        output_path=spec.output_path,
        server_keys=spec.server_keys,
    )
    try:
        task = spec.cls(context, env)  # type: ignore[call-arg,arg-type]
    except BaseException as exc:
        try:
            send(("ERROR", exc))
        except Exception:  # e.g. an exception that does not pickle
            send(("ERROR", PiwheelsError(f"{type(exc).__name__}: {exc}")))
        # Not context.close(): the half-made task's sockets are still open, and ZeroMQ
        # would wait for them for ever.  Nothing here needs cleaning up.
        os._exit(1)
    task.start()
    send(("READY", None))
    try:
        while task.is_alive():
            if not conn.poll(_CHECK):
                continue
            msg = conn.recv()
            if msg == "QUIT":
                break
            if msg == "RELOAD_KEYS":
                context.reload_keys()
                send(("RELOADED", None))
            else:
                task.send_control(msg)
    except (EOFError, OSError):
        log.error("the master is gone: %s stops", spec.cls.role)
    task.quit()
    task.join(10)
    if task.is_alive():
        log.error("task %s did not stop within 10 s", spec.cls.role)
        os._exit(1)  # its sockets are open: closing the context would wait for ever
    context.close()
    sys.exit(1 if task.failure is not None else 0)


class TaskProcess(threading.Thread):
    """One task run in a child process, handled by the master like a task thread.

    The thread receives the child's log records and watches for its end; :meth:`start`
    returns once the task is made (or raises what made it fail).
    """

    def __init__(
        self,
        cls: type[Task],
        env: MasterEnv,
        *,
        authorized_keys: Path | None,
        on_fatal: Callable[[Any, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name=f"{cls.role}-process", daemon=True)
        self.cls = cls
        self.role = cls.role
        self._on_fatal = on_fatal
        self.failure: BaseException | None = None
        self._spec = _Spec(
            cls=cls,
            settings=env.settings,
            addresses=dict(env.addresses),
            output_path=Path(env.output_path),
            server_keys=env.server_keys,
            authorized_keys=authorized_keys,
            log_level=logging.getLogger(f"piwheels.{cls.role}").getEffectiveLevel(),
            process_name=cls.process_name or f"piw-{cls.role}",
        )
        self._send_lock = threading.Lock()
        self._reloaded = threading.Event()
        self._quitting = False
        self.process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (None before it starts)."""
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        """Start the child and wait until its task is made; raise why it was not."""
        ctx = forkserver_context()
        parent, child = ctx.Pipe()
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main, args=(self._spec, child), name=f"piw-{self.role}", daemon=True
        )
        self.process.start()
        child.close()
        self._conn = parent
        try:
            self._await_ready()
        except BaseException:
            self._conn.close()
            self.process.kill()
            self.process.join(5)
            raise
        super().start()

    def _next(self, deadline: float | None = None) -> tuple[str, Any]:
        """The child's next message other than a log record (logged here) or RELOADED:
        ``("END", None)`` once the child closed its end or exited, ``("TIMEOUT", None)``
        at *deadline* (``time.monotonic()``)."""
        assert self._conn is not None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([self._conn, self.process.sentinel], timeout)
            if not ready:
                return "TIMEOUT", None
            if self._conn not in ready:
                return "END", None
            try:
                kind, data = self._conn.recv()
            except (EOFError, OSError):
                return "END", None
            if kind == "LOG":
                _log_record(data)
            elif kind == "RELOADED":
                self._reloaded.set()
            else:
                return kind, data

    def _await_ready(self) -> None:
        kind, data = self._next(time.monotonic() + START_TIMEOUT)
        if kind == "READY":
            return
        if kind == "ERROR":
            raise data
        if kind == "TIMEOUT":
            raise PiwheelsError(
                f"the {self.role} process did not start within {START_TIMEOUT:.0f} s"
            )
        self.process.join(5)
        raise PiwheelsError(
            f"the {self.role} process exited with code {self.process.exitcode} while "
            "starting (see the log above)"
        )

    def run(self) -> None:
        assert self._conn is not None
        # Nothing but log records and RELOADED comes after READY; its last records are
        # read before END.
        while self._next()[0] != "END":
            pass
        self.process.join()
        self._conn.close()
        code = self.process.exitcode
        if code != 0:
            self.failure = PiwheelsError(f"the {self.role} process exited with code {code}")
            log.error("%s", self.failure)
            if self._on_fatal is not None and not self._quitting:
                self._on_fatal(self, self.failure)

    def send_control(self, msg: str) -> None:
        """Send PAUSE, RESUME or QUIT to the task in the child."""
        if self._conn is None:
            return
        with self._send_lock:
            try:
                self._conn.send(msg)
            except (OSError, ValueError):
                pass  # the child is gone already

    def reload_keys(self, timeout: float = 10.0) -> bool:
        """Have the child read the authorized keys folder again; True once it has."""
        self._reloaded.clear()
        self.send_control("RELOAD_KEYS")
        return self._reloaded.wait(timeout)

    def quit(self) -> None:
        """Ask the child's task to end; use join() to wait for it."""
        self._quitting = True
        self.send_control("QUIT")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to end; one still running when told to quit is killed."""
        super().join(timeout)
        if self.is_alive() and self._quitting and self.process is not None:
            log.error("the %s process did not stop: killing it", self.role)
            self.process.kill()
            super().join(5)


def _log_record(record: logging.LogRecord) -> None:
    """Hand a record from a child to this process's logger of the same name."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
