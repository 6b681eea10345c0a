"""``piw-master``: starts the master's tasks and stops them, together.

The tasks start in the order their endpoint declarations require (whoever
binds an endpoint starts before whoever connects to it) and stop in the
reverse order.  The main thread only waits: for SIGTERM or SIGINT, for a
monitor's QUIT, or for a task that failed, in which case the whole master
stops and exits non-zero rather than running on half-alive; and on SIGHUP it
has every process read the authorized keys again.  A task class with
``process = True`` runs in a child process (see :mod:`piwheels.master.process`).
"""

from __future__ import annotations

import argparse
import logging
import queue
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..cli import Command
from ..errors import ConfigError, PiwheelsError
from ..settings import Settings
from ..systemd import Notifier
from ..tasks import Task, start_order
from ..transport import Context, load_keys
from .admin_gateway import AdminGateway
from .build_dispatcher import BuildDispatcher
from .env import MasterEnv
from .file_receiver import FileReceiver
from .log_ingest import LogIngest
from .page_writer import PageWriter
from .process import TaskProcess
from .stats_collector import StatsCollector
from .status_hub import StatusHub
from .upstream_watcher import UpstreamWatcher

log = logging.getLogger("piwheels.master")

#: Every task of the master.
TASKS: tuple[type[Task], ...] = (
    StatusHub,
    PageWriter,
    FileReceiver,
    BuildDispatcher,
    AdminGateway,
    LogIngest,
    UpstreamWatcher,
    StatsCollector,
)

#: Endpoints private to one master process.
INTERNAL = ("pages", "status_feed", "builder_control", "transfers")


def addresses(settings: Settings) -> dict[str, str]:
    """Every endpoint's address: external ones from the settings, internal ones unique."""
    master = settings.master
    tag = uuid.uuid4().hex[:8]
    out = {
        "builder": master.builder_endpoint,
        "file": master.file_endpoint,
        "status": master.status_endpoint,
        "control": master.control_endpoint,
        "admin": master.admin_endpoint,
        "logger": master.log_endpoint,
    }
    out.update({name: f"inproc://{name}-{tag}" for name in INTERNAL})
    return out


def private_endpoints(
    addresses: dict[str, str], tasks: Sequence[type[Task]], folder: Path
) -> dict[str, str]:
    """*addresses* with the internal endpoints of tasks run in processes as ``ipc://`` sockets.

    ``inproc://`` reaches only threads of one process; the sockets go in *folder*, which
    only this master's user may enter.
    """
    out = dict(addresses)
    for cls in tasks:
        if not cls.process:
            continue
        for ep in (*cls.binds, *cls.connects):
            if out.get(ep.name, "").startswith("inproc://"):
                out[ep.name] = f"ipc://{folder / ep.name}"
    return out


def sqlalchemy_url(dsn: str) -> str:
    """A SQLAlchemy URL for a libpq DSN or URL (psycopg2 driver)."""
    if dsn.startswith("postgresql+"):
        return dsn
    if dsn.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + dsn.split("://", 1)[1]
    raise ConfigError(f"[database] dsn must be a postgresql:// URL, not {dsn!r:.60}")


def make_engine(settings: Settings) -> Engine:
    """The master's connection pool (the database service every task draws from)."""
    return create_engine(
        sqlalchemy_url(settings.database.dsn),
        pool_size=settings.database.pool_size,
        max_overflow=2,
        pool_pre_ping=True,
    )


def server_keys(settings: Settings) -> tuple[Any, Path | None]:
    """The master's CurveZMQ key pair and authorized keys folder (None, None when off)."""
    keys = settings.keys
    if not keys.curve:
        return None, None
    problems = []
    if keys.secret_key_file is None:
        problems.append("[keys] secret_key_file: needed when curve is on (or set curve = false)")
    if keys.authorized_keys_dir is None:
        problems.append(
            "[keys] authorized_keys_dir: needed when curve is on (the builders' public keys)"
        )
    if problems:
        raise ConfigError(problems)
    assert keys.secret_key_file is not None
    return load_keys(keys.secret_key_file), keys.authorized_keys_dir


class Master:
    """The master's tasks and their lifetime."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        tasks: Sequence[type[Task]] = TASKS,
        address_map: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        keys, authorized = server_keys(settings)
        self.authorized_keys = authorized
        self.context = Context(authorized_keys=authorized)
        self.engine = engine if engine is not None else make_engine(settings)
        self.task_classes = start_order(tasks)
        # Sockets between the master and its task processes (see private_endpoints).
        self.runtime_dir: Path | None = None
        endpoints = address_map or addresses(settings)
        if any(cls.process for cls in self.task_classes):
            # Named now (the addresses need it), made by start(): a master that is made
            # and never started leaves nothing behind.  The random name cannot be guessed,
            # and mkdir refuses one that someone else made first.
            name = f"piw-master-{uuid.uuid4().hex[:12]}"
            self.runtime_dir = Path(tempfile.gettempdir()) / name
            endpoints = private_endpoints(endpoints, self.task_classes, self.runtime_dir)
        self.env = MasterEnv(
            settings=settings,
            addresses=endpoints,
            output_path=settings.master.output_path,
            engine=self.engine,
            server_keys=keys,
        )
        self.tasks: list[Task | TaskProcess] = []
        self.requests: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.failed: Task | None = None
        self.started = threading.Event()
        self.systemd = Notifier()

    def _on_fatal(self, task: Task | TaskProcess, exc: BaseException) -> None:
        self.requests.put(("FATAL", task))

    def request(self, action: str) -> None:
        """Ask the master (from any thread) to PAUSE, RESUME, RELOAD (keys) or QUIT."""
        self.requests.put((action, None))

    def reload_keys(self) -> None:
        """Read the folder of authorized keys again, in this process and every task process.

        Returns once each has (a builder whose key was just added is admitted from then on).
        """
        self.context.reload_keys()
        for task in self.tasks:
            if isinstance(task, TaskProcess) and not task.reload_keys():
                log.error("the %s process did not read the keys again", task.role)
        log.info("authorized keys read again")

    def _make(self, cls: type[Task]) -> Task | TaskProcess:
        if cls.process:
            return TaskProcess(
                cls, self.env, authorized_keys=self.authorized_keys, on_fatal=self._on_fatal
            )
        kwargs: dict[str, Any] = {"on_fatal": self._on_fatal}
        if cls is StatusHub:
            kwargs["master_action"] = self.request
        if cls is StatsCollector:
            ingest = next((t for t in self.tasks if isinstance(t, LogIngest)), None)
            if ingest is not None:
                kwargs["ingest_rate"] = lambda: ingest.ingest_rate
            watcher = next((t for t in self.tasks if isinstance(t, UpstreamWatcher)), None)
            if watcher is not None:
                kwargs["upstream_lag"] = lambda: watcher.upstream_lag
        return cls(self.context, self.env, **kwargs)  # type: ignore[call-arg,arg-type]

    def start(self) -> None:
        """Create and start every task in order."""
        self.env.output_path.mkdir(parents=True, exist_ok=True)
        if self.runtime_dir is not None:
            self.runtime_dir.mkdir(mode=0o700)
        for cls in self.task_classes:
            task = self._make(cls)
            task.start()  # a task process raises here what stopped it from starting
            self.tasks.append(task)
            log.debug("started %s", cls.role)
        self.started.set()
        self.systemd.ready()
        log.info("master started with %d tasks", len(self.tasks))

    def run(self, *, stop: threading.Event | None = None) -> int:
        """Wait for QUIT, a signal (via :meth:`request`) or a failure; return the exit code."""
        try:
            while True:
                if stop is not None and stop.is_set():
                    break
                # Ping only while every task is alive: a stuck master gets restarted.
                if all(task.is_alive() for task in self.tasks):
                    self.systemd.watchdog()
                try:
                    action, arg = self.requests.get(timeout=0.2)
                except queue.Empty:
                    continue
                if action == "QUIT":
                    log.info("stopping on request")
                    break
                if action == "FATAL":
                    self.failed = arg
                    log.error("stopping: task %s failed", arg.role)
                    break
                if action == "RELOAD":
                    self.reload_keys()
                elif action in ("PAUSE", "RESUME"):
                    for task in self.tasks:
                        task.send_control(action)
                    log.info("master %s", "paused" if action == "PAUSE" else "resumed")
        finally:
            self.stop()
        return 1 if self.failed is not None else 0

    def stop(self) -> None:
        """Stop every task (in reverse start order), then the context and the pool."""
        self.systemd.stopping()
        for task in reversed(self.tasks):
            task.quit()
            task.join(10)
            if task.is_alive():
                log.error("task %s did not stop within 10 s", task.role)
        self.tasks.clear()
        self.context.close()
        self.engine.dispose()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-master."""
    from ..db.initdb import check_schema

    master = Master(settings)
    with master.engine.connect() as conn:
        check_schema(conn)

    def on_signal(signum: int, frame: object) -> None:
        master.request("QUIT")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # SIGHUP (systemctl reload): read the authorized keys again, e.g. after adding a builder.
    signal.signal(signal.SIGHUP, lambda signum, frame: master.request("RELOAD"))
    try:
        master.start()
    except PiwheelsError:
        master.stop()
        raise
    if args.pause:
        master.request("PAUSE")
    return master.run()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pause", action="store_true", help="start paused (no builds handed out)")


COMMAND = Command(
    serve,
    prog="piw-master",
    description="Run the master of a piwheels farm.",
    sections=("database", "master", "upstream", "keys"),
    tasks={cls.role: f"piwheels.{cls.role}" for cls in TASKS},
    add_arguments=_arguments,
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)


run_master: Callable[..., int] = COMMAND.run
