"""A whole farm on loopback: a real Master, real builders, real pip, real PostgreSQL.

The ``farm`` fixture (module-scoped, so a test module shares one farm) runs a
:class:`~piwheels.master.main.Master` in threads on a database of its own made
from the migrated template, with the builder and file sockets on tcp
(127.0.0.1, ports of their own) under CurveZMQ with keys made by
:func:`piwheels.transport.generate_keys`, and the monitor sockets on ipc.
Builders are :class:`~piwheels.builder.daemon.BuilderDaemon` threads or real
``piw-builder`` processes; they build generated sdists from the loopback
index of ``tests/builder/conftest.py``.  The master learns about releases
through the database layer (:func:`piwheels.db.versions.add_versions`).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from piwheels.builder.daemon import BuilderDaemon
from piwheels.db import packages as db_packages
from piwheels.db import versions as db_versions
from piwheels.master import build_dispatcher
from piwheels.master.main import Master
from piwheels.settings import Settings
from piwheels.transport import generate_keys
from piwheels.web.layout import log_path
from tests.builder.conftest import LocalIndex, local_index  # noqa: F401 - a fixture

TEMPLATE = "piwheels_template"
MiB = 1 << 20

#: The master's builder timeout in these tests: a silent builder is dropped after it.
BUILDER_TIMEOUT = timedelta(seconds=8)
#: Heartbeat the master asks of builders (shorter than the default, so timeouts are short).
HEARTBEAT = timedelta(seconds=1)
#: The longest any build may run (the sleeper is killed at this).
BUILD_TIMEOUT = timedelta(seconds=40)
#: Largest file the master accepts.
MAX_FILE_SIZE = 4 * MiB


def free_port() -> int:
    """A tcp port on 127.0.0.1 nobody listens on now (the master binds it again on restart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 60.0, what: str = "condition"
) -> Any:
    """Poll *condition* until it returns something true; return that (fail after *timeout*)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g}s")
        time.sleep(0.05)


@dataclass
class FarmKeys:
    """The master's key pair, the folder of admitted builder keys, and per-builder secrets."""

    root: Path
    server_secret: Path
    server_public: Path
    authorized: Path

    def builder(self, label: str, *, admitted: bool = True) -> Path:
        """A new key pair for *label*; its public key is admitted unless *admitted* is false."""
        folder = self.authorized if admitted else self.root / "strangers"
        public, secret = generate_keys(folder, label)
        if admitted:
            # The secret half stays with the builder, not among the admitted keys.
            own = self.root / "builders"
            own.mkdir(exist_ok=True)
            moved = own / secret.name
            shutil.move(secret, moved)
            shutil.copy(public, own / public.name)
            return moved
        return secret


class RunningBuilder:
    """A BuilderDaemon in a thread."""

    def __init__(self, daemon: BuilderDaemon, label: str) -> None:
        self.daemon = daemon
        self.label = label
        self.result: list[Any] = []
        self.thread = threading.Thread(target=self._run, name=f"builder-{label}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result.append(self.daemon.run())
        except BaseException as exc:  # the test looks at it
            self.result.append(exc)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 120.0) -> Any:
        self.daemon.stop("test over")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"builder {self.label} did not stop"
        return self.result[0] if self.result else None


@dataclass
class Farm:
    """One master (restartable on the same database and endpoints) and its builders."""

    url: str
    settings: Settings
    keys: FarmKeys
    index: LocalIndex
    root: Path
    sockets: Path
    sdists: Path
    master: Master | None = None
    master_thread: threading.Thread | None = None
    master_result: list[int] = field(default_factory=list)
    builders: list[RunningBuilder] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    _engine: Any = None

    # -- the master ---------------------------------------------------------------------

    @property
    def output(self) -> Path:
        return self.settings.master.output_path

    @property
    def builder_port(self) -> int:
        return int(self.settings.master.builder_endpoint.rsplit(":", 1)[1])

    @property
    def file_port(self) -> int:
        return int(self.settings.master.file_endpoint.rsplit(":", 1)[1])

    def start_master(self) -> Master:
        assert self.master is None, "a master is already running"
        master = Master(self.settings, engine=create_engine(self.url, pool_size=5))
        master.start()
        result: list[int] = []
        thread = threading.Thread(
            target=lambda: result.append(master.run()), name="master", daemon=True
        )
        thread.start()
        self.master, self.master_thread, self.master_result = master, thread, result
        return master

    def stop_master(self) -> int:
        """Stop the master as SIGTERM would (QUIT); returns its exit code."""
        assert self.master is not None and self.master_thread is not None
        self.master.request("QUIT")
        self.master_thread.join(60)
        assert not self.master_thread.is_alive(), "the master did not stop"
        self.master = self.master_thread = None
        return self.master_result[0]

    def dispatcher(self) -> build_dispatcher.BuildDispatcher:
        assert self.master is not None
        for task in self.master.tasks:
            if isinstance(task, build_dispatcher.BuildDispatcher):
                return task
        raise AssertionError("the master has no build dispatcher")

    # -- builders -----------------------------------------------------------------------

    def admit(self, label: str) -> Path:
        """A key pair for a new builder, admitted by the running master at once."""
        secret = self.keys.builder(label)
        if self.master is not None:
            # The authenticator reads the folder when it starts; new keys need a reload.
            self.master.reload_keys()
        return secret

    def builder_settings(self, label: str, *, secret: Path | None = None, **over: Any) -> Settings:
        values: dict[str, Any] = {
            "master_host": "127.0.0.1",
            "builder_port": self.builder_port,
            "file_port": self.file_port,
            "label": label,
            "build_dir": self.root / "builds" / label,
            "build_timeout": BUILD_TIMEOUT,
            "memory_limit": 4096 * MiB,
            "min_free_disk": 1 * MiB,
            "reconnect_max": timedelta(seconds=1),
        }
        values.update(over)
        return (
            Settings()
            .replace("builder", **values)
            .replace(
                "keys",
                curve=True,
                secret_key_file=secret or self.admit(label),
                server_public_key_file=self.keys.server_public,
            )
        )

    def start_builder(
        self, label: str | None = None, *, reply_timeout: float = 5.0, **over: Any
    ) -> RunningBuilder:
        """A BuilderDaemon thread with an admitted key."""
        label = label or f"b-{uuid.uuid4().hex[:6]}"
        daemon = BuilderDaemon(
            self.builder_settings(label, **over), reply_timeout=reply_timeout, backoff_start=0.2
        )
        running = RunningBuilder(daemon, label)
        self.builders.append(running)
        return running

    def spawn_builder(self, label: str | None = None, *, master_timeout: float = 5.0) -> Any:
        """A real ``piw-builder`` process (its own session, so a kill takes its children)."""
        label = label or f"p-{uuid.uuid4().hex[:6]}"
        settings = self.builder_settings(label)
        b, k = settings.builder, settings.keys
        config = self.root / f"{label}.conf"
        config.write_text(
            "[builder]\n"
            f"master_host = 127.0.0.1\nbuilder_port = {b.builder_port}\n"
            f"file_port = {b.file_port}\nlabel = {label}\nbuild_dir = {b.build_dir}\n"
            f"build_timeout = {int(b.build_timeout.total_seconds())}s\n"
            "min_free_disk = 1M\nreconnect_max = 1s\n"
            "[keys]\ncurve = true\n"
            f"secret_key_file = {k.secret_key_file}\n"
            f"server_public_key_file = {k.server_public_key_file}\n"
        )
        log_file = open(self.root / f"{label}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piwheels.builder.main",
                "-c",
                str(config),
                "--master-timeout",
                str(master_timeout),
                "-v",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HOME": str(self.root), "PIP_CONFIG_FILE": os.devnull},
            start_new_session=True,
        )
        log_file.close()
        proc.label = label  # type: ignore[attr-defined]
        self.processes.append(proc)
        return proc

    def process_log(self, proc: Any) -> str:
        return (self.root / f"{proc.label}.log").read_text(errors="replace")

    # -- releases -----------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = create_engine(self.url, pool_size=2)
        return self._engine

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))

    def execute(self, query: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(query), params)

    def publish_sdist(self, make: Callable[..., Path], *args: Any, **kwargs: Any) -> Path:
        """Put an sdist made by a ``tests.sdists`` function on the loopback index."""
        path = make(self.sdists, *args, **kwargs)
        self.index.add(path)
        return path

    def add_release(
        self,
        package: str,
        version: str = "1.0",
        *,
        released_at: datetime | None = None,
        skip_abis: tuple[str, ...] = (),
    ) -> None:
        """Tell the master about a release, as the upstream watcher would (the data layer)."""
        with self.engine.begin() as conn:
            db_versions.add_versions(
                conn,
                [
                    db_versions.NewVersion(
                        package,
                        version,
                        released_at=released_at or datetime.now(UTC),
                    )
                ],
            )
            for abi in skip_abis:
                db_packages.skip_package_abi(conn, package, abi, "not for this builder")

    def builds(self, package: str, version: str = "1.0") -> list[Any]:
        return self.sql(
            "SELECT build_id, status, failure_class, abi, builder_id, log_path, duration "
            "FROM builds WHERE package = :p AND version = :v ORDER BY build_id",
            p=package,
            v=version,
        )

    def wait_finished(
        self, package: str, version: str = "1.0", *, timeout: float = 180.0, count: int = 1
    ) -> list[Any]:
        """The builds of a release once *count* of them have finished (success or failed)."""

        def finished() -> list[Any] | None:
            rows = [r for r in self.builds(package, version) if r.status in ("success", "failed")]
            return rows if len(rows) >= count else None

        return wait_until(finished, timeout=timeout, what=f"{count} finished build(s) of {package}")

    def wait_success(self, package: str, version: str = "1.0", timeout: float = 180.0) -> Any:
        try:
            return wait_until(
                lambda: next(
                    (r for r in self.builds(package, version) if r.status == "success"), None
                ),
                timeout=timeout,
                what=f"a successful build of {package}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; builds: {self.builds(package, version)}") from None

    def files(self, package: str) -> list[Any]:
        return self.sql(
            "SELECT f.filename, f.size, f.sha256, f.import_test, f.import_error "
            "FROM files f JOIN builds b USING (build_id) WHERE b.package = :p ORDER BY f.filename",
            p=package,
        )

    def dependencies(self, filename: str) -> list[tuple[str, str]]:
        return [
            (r.tool, r.requirement)
            for r in self.sql(
                "SELECT tool, requirement FROM dependencies WHERE filename = :f "
                "ORDER BY tool, requirement",
                f=filename,
            )
        ]

    # -- the published site --------------------------------------------------------------

    def simple_json(self, package: str) -> dict[str, Any]:
        return json.loads((self.output / "simple" / package / "index.json").read_bytes())

    def project_json(self, package: str) -> dict[str, Any]:
        return json.loads((self.output / "project" / package / "json" / "index.json").read_bytes())

    def wait_page_lists(self, package: str, filename: str, timeout: float = 30.0) -> dict[str, Any]:
        """The simple JSON page of *package* once it lists *filename*."""

        def listed() -> dict[str, Any] | None:
            try:
                page = self.simple_json(package)
            except (OSError, ValueError):
                return None
            return page if any(f["filename"] == filename for f in page["files"]) else None

        return wait_until(listed, timeout=timeout, what=f"{filename} on the simple page")

    def wait_project(self, package: str, needle: str = "", timeout: float = 30.0) -> dict[str, Any]:
        """The project JSON of *package* once it exists (and its text holds *needle*)."""

        def ready() -> dict[str, Any] | None:
            path = self.output / "project" / package / "json" / "index.json"
            try:
                raw = path.read_bytes()
                return json.loads(raw) if needle.encode() in raw else None
            except (OSError, ValueError):
                return None

        return wait_until(ready, timeout=timeout, what=f"the project JSON of {package}")

    def build_log(self, build_id: int, timeout: float = 30.0) -> str:
        path = self.output / log_path(build_id)
        wait_until(path.exists, timeout=timeout, what=f"the log of build {build_id}")
        return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")

    def staged(self) -> list[Path]:
        """Every file in the staging folder (transfers in progress)."""
        staging = self.output / ".transfers"
        return [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []

    def published(self) -> list[Path]:
        simple = self.output / "simple"
        return sorted(p for p in simple.rglob("*.whl") if p.is_file())

    # -- teardown -----------------------------------------------------------------------

    def close(self) -> None:
        for running in self.builders:
            if running.alive:
                try:
                    running.stop()
                except AssertionError:
                    logging.getLogger(__name__).error("builder %s did not stop", running.label)
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(10)
        if self.master is not None:
            self.stop_master()
        if self._engine is not None:
            self._engine.dispose()


def make_farm(
    new_database: Callable[..., str], index: LocalIndex, *, max_attempts: int = 3, **master: Any
) -> Farm:
    """A farm (master not started yet) on a fresh database from the template.

    Transient failures (a lost builder, a timeout) come back at once rather than
    after the configured backoff, at most *max_attempts* times.
    """
    url = new_database(template=TEMPLATE, prefix="piwfarm")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE configuration SET retry_base = interval '0 seconds', max_attempts = :n"),
            {"n": max_attempts},
        )
    engine.dispose()
    root = Path(tempfile.mkdtemp(prefix="piwfarm-"))
    # ipc paths must stay short (108 bytes): a folder of its own directly in the temp dir.
    sockets = Path(tempfile.mkdtemp(prefix="piwf-", dir="/tmp"))
    keys_root = root / "keys"
    server_public, server_secret = generate_keys(keys_root / "server", "master")
    authorized = keys_root / "authorized"
    authorized.mkdir(parents=True)
    keys = FarmKeys(keys_root, server_secret, server_public, authorized)
    values: dict[str, Any] = {
        "output_path": root / "www",
        "builder_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "file_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "status_endpoint": f"ipc://{sockets}/status",
        "control_endpoint": f"ipc://{sockets}/control",
        "admin_endpoint": f"ipc://{sockets}/admin",
        "log_endpoint": f"ipc://{sockets}/logger",
        "builder_timeout": BUILDER_TIMEOUT,
        "build_timeout": BUILD_TIMEOUT,
        "max_file_size": MAX_FILE_SIZE,
        "stats_interval": timedelta(seconds=1),
        "page_coalesce": timedelta(0),
        "min_free_disk": 1 * MiB,
    }
    values.update(master)
    settings = (
        Settings()
        .replace("database", dsn=url)
        .replace("master", **values)
        .replace("builder", min_free_disk=1 * MiB)
        .replace("upstream", build_index=index.url)
        .replace(
            "keys",
            curve=True,
            secret_key_file=server_secret,
            authorized_keys_dir=authorized,
        )
    )
    sdists = root / "sdists"
    sdists.mkdir()
    return Farm(url, settings, keys, index, root, sockets, sdists)


@pytest.fixture(scope="module")
def farm_factory(
    new_database: Callable[..., str],
    local_index: LocalIndex,  # noqa: F811 - the imported fixture
) -> Iterator[Callable[..., Farm]]:
    """Make farms for this module (each on its own database, ports and folders)."""
    made: list[Farm] = []
    with pytest.MonkeyPatch.context() as mp:
        # Builders check in every second, so a short builder timeout does not drop them.
        mp.setattr(build_dispatcher, "HEARTBEAT", HEARTBEAT)

        def make(**options: Any) -> Farm:
            farm = make_farm(new_database, local_index, **options)
            made.append(farm)
            return farm

        yield make
        for farm in made:
            farm.close()
            shutil.rmtree(farm.sockets, ignore_errors=True)
            shutil.rmtree(farm.root, ignore_errors=True)


@pytest.fixture(scope="module")
def farm(farm_factory: Callable[..., Farm]) -> Farm:
    """A running master (no builders yet) shared by the tests of a module."""
    f = farm_factory()
    f.start_master()
    return f
