"""``piw-demo``: a whole piwheels farm on this machine, in one folder, in one command.

``python3 -m piwheels.devenv demo`` runs this inside ``.venv``.  It:

1. starts a private PostgreSQL (:class:`~piwheels.pgcluster.Cluster`) in
   ``DATA/postgres`` and creates or upgrades the database
   (:func:`piwheels.db.initdb.upgrade`);
2. fills a local upstream folder ``DATA/upstream/sdists`` with real sdists,
   fetched with ``pip download --no-binary :all: --no-deps`` through pip's own
   configuration (the user's pip config is honoured), or copied from
   ``--sdists DIR``; and ``DATA/upstream/build-requirements`` with what those
   sdists need to build (setuptools, flit_core, ... read from each
   ``pyproject.toml``), also fetched through pip's configuration;
3. writes a PEP 503 index of both (``DATA/build-index``) and serves it on a
   loopback port: the builder downloads sources *and* build requirements from
   it, so builds need nothing but this machine once the fetch is done;
4. makes CurveZMQ key pairs for the master and the builder (once);
5. starts the master (its tasks as threads of this process), one builder
   (``piw-builder`` in a subprocess) and nginx serving the master's output on a
   free loopback port; without nginx, a plain static server with a warning;
6. records the releases and shows progress until Ctrl-C (or, with
   ``--exit-when-built``, until the first round of builds is done).

Everything lives in ``DATA`` (default ``./.piwheels-demo``), so running it
again resumes: the same database, the same wheels, nothing rebuilt.

With ``--upstream URL`` the builder takes sources and build requirements from
that PyPI-compatible index instead, and only the newest release of each
``--package`` is recorded (never the whole index).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import http.server
import io
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from piwheels import __version__
from piwheels.cli import setup_logging
from piwheels.errors import (
    ConfigError,
    DatabaseError,
    PiwheelsError,
    UpstreamError,
    UsageError,
    report,
)
from piwheels.pgcluster import Cluster
from piwheels.settings import load_settings
from piwheels.web.nginx import PrivateNginx, free_port, render_config

__all__ = ["DEFAULT_PACKAGES", "Demo", "DemoOptions", "Progress", "main", "parse_args"]

log = logging.getLogger("piwheels.demo")

#: Small, quick sdists: two C extensions (markupsafe, wrapt), two pure (six, idna; one
#: built with setuptools, one with flit_core).
DEFAULT_PACKAGES = ("markupsafe", "wrapt", "six", "idna")

#: What pip assumes an sdist without ``[build-system]`` needs (PEP 518).
LEGACY_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")

_SDIST_SUFFIXES = (".tar.gz", ".zip")
_BUILDER_LABEL = "demo-builder"


def say(text: str) -> None:
    """A line for the person watching (stdout, flushed at once)."""
    print(f"piw-demo: {text}", flush=True)


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class DemoOptions:
    """What the command line asked for."""

    data: Path
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    upstream: str | None = None
    sdists: Path | None = None
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    exit_when_built: bool = False
    port: int = 0
    interval: float = 2.0
    build_timeout: int = 900


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piw-demo",
        description=(
            "Run a whole piwheels farm on this machine (private PostgreSQL, master, one builder, "
            "nginx) from a folder of its own, build a few real packages and serve them."
        ),
        epilog=(
            "Sources and build requirements are fetched with pip through pip's own "
            "configuration (pip.conf, PIP_* variables), once; the builds then use only "
            "the demo's local index. Ctrl-C stops everything; run again to resume."
        ),
    )
    parser.add_argument("--version", action="version", version=f"piw-demo piwheels {__version__}")
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        default=Path(".piwheels-demo"),
        help="folder for everything the demo keeps [default: ./.piwheels-demo]",
    )
    parser.add_argument(
        "--package",
        metavar="NAME",
        action="append",
        dest="packages",
        help="a project to build (repeatable) [default: " + ", ".join(DEFAULT_PACKAGES) + "]",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="a PyPI-compatible simple index (PEP 691) to take sources and build "
        "requirements from instead of a local folder; the newest release of each "
        "--package is built",
    )
    parser.add_argument(
        "--sdists",
        metavar="DIR",
        type=Path,
        help="copy the sdists of this folder into the local upstream instead of downloading",
    )
    parser.add_argument(
        "--index-url",
        metavar="URL",
        help="passed to pip download (sources and build requirements)",
    )
    parser.add_argument(
        "--find-links",
        metavar="DIR_OR_URL",
        action="append",
        default=[],
        help="passed to pip download (repeatable)",
    )
    parser.add_argument("--no-index", action="store_true", help="passed to pip download")
    parser.add_argument(
        "--port", type=int, default=0, help="port of the index web server [default: a free one]"
    )
    parser.add_argument(
        "--exit-when-built",
        action="store_true",
        help="stop (cleanly) once the first round of builds is done and published",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how often progress is checked [default: 2]",
    )
    parser.add_argument(
        "--build-timeout",
        type=int,
        default=900,
        metavar="SECONDS",
        help="limit of one build [default: 900]",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> DemoOptions:
    """Parse the command line; :class:`UsageError` for bad values."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.upstream and ns.sdists:
        raise UsageError("--upstream and --sdists exclude each other")
    if ns.upstream and not ns.upstream.startswith(("http://", "https://")):
        raise UsageError(f"--upstream must be an http(s) URL, not {ns.upstream!r:.80}")
    if ns.sdists is not None and not ns.sdists.is_dir():
        raise UsageError(f"--sdists {ns.sdists}: not a folder")
    if not 0 <= ns.port <= 65535:
        raise UsageError(f"--port {ns.port}: not a port number")
    if ns.interval <= 0 or ns.build_timeout <= 0:
        raise UsageError("--interval and --build-timeout must be positive")
    packages = tuple(ns.packages or ())
    from piwheels.db._common import check_name

    for name in packages:
        try:
            check_name(name)
        except PiwheelsError as exc:
            raise UsageError(f"--package {name!r:.80}: {exc}") from exc
    if not packages and ns.sdists is None:
        packages = DEFAULT_PACKAGES
    return DemoOptions(
        data=ns.data,
        packages=packages,
        upstream=ns.upstream,
        sdists=ns.sdists,
        index_url=ns.index_url,
        find_links=tuple(ns.find_links),
        no_index=ns.no_index,
        exit_when_built=ns.exit_when_built,
        port=ns.port,
        interval=ns.interval,
        build_timeout=ns.build_timeout,
    )


# ----------------------------------------------------------------------------- upstream folder


def sdist_project(filename: str) -> tuple[str, str] | None:
    """(canonical project, version) of an sdist file name, or None if it is not one."""
    from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename

    if filename.endswith(".zip"):
        stem = filename[: -len(".zip")]
        name, sep, version = stem.rpartition("-")
        return (canonicalize_name(name), version) if sep and name else None
    try:
        parsed_name, parsed_version = parse_sdist_filename(filename)
    except (InvalidSdistFilename, ValueError):
        return None
    return str(parsed_name), str(parsed_version)


def _read_member(path: Path, suffix: str) -> bytes | None:
    """The top-level ``<dir>/<suffix>`` file of an sdist (tar.gz or zip), or None."""
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if name.count("/") == 1 and name.endswith("/" + suffix):
                        return zf.read(name)
            return None
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                top = member.isfile() and member.name.count("/") == 1
                if top and member.name.endswith("/" + suffix):
                    handle = tar.extractfile(member)
                    return handle.read() if handle is not None else None
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise UpstreamError(f"{path.name}: not a readable sdist: {exc}") from exc
    return None


def build_requires(path: Path) -> list[str]:
    """The build requirements an sdist declares (PEP 518), or pip's legacy default."""
    data = _read_member(path, "pyproject.toml")
    if data is None:
        return list(LEGACY_BUILD_REQUIRES)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UpstreamError(f"{path.name}: pyproject.toml does not parse: {exc}") from exc
    system = doc.get("build-system")
    if not isinstance(system, dict) or "requires" not in system:
        return list(LEGACY_BUILD_REQUIRES)
    requires = system["requires"]
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise UpstreamError(f"{path.name}: build-system.requires is not a list of strings")
    # setuptools' backend without setuptools listed still needs it (pip adds nothing).
    return list(requires)


def list_sdists(folder: Path) -> dict[str, Path]:
    """Canonical project -> sdist path, for the sdists directly in *folder*."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(_SDIST_SUFFIXES):
            parsed = sdist_project(path.name)
            if parsed is not None:
                found.setdefault(parsed[0], path)
    return found


def pip_command(opts: DemoOptions) -> list[str]:
    """``python -m pip download`` with the options given for the fetch.

    PIP_CONFIG_FILE is deliberately left alone: the person's own pip
    configuration (mirrors, proxies, certificates) decides where pip fetches from.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q"]
    if opts.index_url:
        cmd += ["--index-url", opts.index_url]
    for link in opts.find_links:
        cmd += ["--find-links", link]
    if opts.no_index:
        cmd.append("--no-index")
    return cmd


def _run_pip(cmd: list[str], what: str, log_path: Path) -> None:
    with open(log_path, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise UpstreamError(
            f"pip could not download {what} (exit {result.returncode}): "
            + " | ".join(line.strip() for line in tail)
            + f" (full log: {log_path})"
        )


def fill_upstream(opts: DemoOptions, upstream: Path, log_path: Path) -> dict[str, Path]:
    """Put the sdists in ``upstream/sdists`` (copy or download what is missing)."""
    sdists = upstream / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    if opts.sdists is not None:
        given = list_sdists(opts.sdists)
        if not given:
            raise UsageError(f"--sdists {opts.sdists}: no sdists (.tar.gz or .zip) in it")
        wanted = {canonical(p) for p in opts.packages}
        unknown = wanted - set(given)
        if unknown:
            raise UsageError(
                f"--package {', '.join(sorted(unknown))}: no sdist of it in {opts.sdists}"
            )
        for name, path in given.items():
            if wanted and name not in wanted:
                continue
            target = sdists / path.name
            if not target.exists():
                shutil.copy2(path, target)
        return list_sdists(sdists)
    have = list_sdists(sdists)
    missing = [p for p in opts.packages if canonical(p) not in have]
    if missing:
        say(f"fetching sdists with pip (your pip configuration): {' '.join(missing)}")
        cmd = [*pip_command(opts), "--no-binary", ":all:", "--no-deps", "--dest", str(sdists)]
        _run_pip([*cmd, *missing], "the sdists", log_path)
        have = list_sdists(sdists)
        still = [p for p in missing if canonical(p) not in have]
        if still:
            raise UpstreamError(f"pip found no sdist of: {', '.join(still)}")
    return have


def fill_build_requirements(
    opts: DemoOptions, sdists: dict[str, Path], upstream: Path, log_path: Path
) -> list[str]:
    """Download what the sdists need to build into ``upstream/build-requirements``.

    Done again only when the set of requirements changes (a stamp file keeps it).
    """
    folder = upstream / "build-requirements"
    folder.mkdir(parents=True, exist_ok=True)
    # "wheel" too: setuptools before 70.1 asks for it only while building
    # (get_requires_for_build_wheel), which pyproject.toml does not show.
    requires = sorted({"wheel", *(r for path in sdists.values() for r in build_requires(path))})
    stamp = folder / ".requirements.json"
    try:
        done = json.loads(stamp.read_text())
    except (OSError, ValueError):
        done = None
    if done == requires:
        return requires
    say(f"fetching build requirements with pip (your pip configuration): {' '.join(requires)}")
    cmd = [*pip_command(opts), "--only-binary", ":all:", "--dest", str(folder)]
    # Requirement strings go after "--" would confuse pip; each is one argument.
    _run_pip([*cmd, *requires], "the build requirements", log_path)
    stamp.write_text(json.dumps(requires))
    return requires


def canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


# ----------------------------------------------------------------------------- static servers


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the types an index needs; quiet."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".json": "application/json",
        ".whl": "application/octet-stream",
        ".metadata": "application/octet-stream",
        ".gz": "application/gzip",
        ".zip": "application/zip",
        ".svg": "image/svg+xml",
    }

    def log_message(self, format: str, *args: object) -> None:
        pass


class StaticServer:
    """A threaded ``http.server`` serving *root* on 127.0.0.1 (nginx's stand-in)."""

    def __init__(self, root: Path, port: int = 0) -> None:
        handler = functools.partial(_StaticHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="static-server", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _world_traversable(path: Path) -> bool:
    """True when every folder from / down to *path* lets others in (nginx's workers)."""
    path = path.resolve()
    for folder in [*reversed(path.parents), path]:
        try:
            mode = folder.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


class DemoNginx(PrivateNginx):
    """A :class:`PrivateNginx` whose workers may run as root.

    As root, nginx's workers become www-data, which cannot enter a data folder
    under a private home; then (loopback only) they stay root instead.
    """

    def __init__(self, *args: Any, user: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def start(self, timeout: float = 10.0) -> None:
        for sub in ("logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            port = self.port or free_port(self.host)
            conf = self.prefix / "nginx.conf"
            conf.write_text(
                render_config(
                    self.output_path, self.prefix, listen=f"{self.host}:{port}", user=self.user
                )
            )
            self.proc = subprocess.Popen(
                [self.nginx, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self.error_log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C goes to us; we stop nginx in order
            )
            if self._wait_ready(port, timeout):
                self.port = port
                return
            err = self._reap()
            if attempt == attempts - 1:
                raise OSError(f"nginx did not start: {err.strip()[-500:]}")


def find_nginx() -> str | None:
    """nginx's path (also in /usr/sbin, which an ordinary user's PATH may lack)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# ----------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    """Counts read from the database."""

    releases: int
    targets: int
    queued: int
    ready: int
    building: int
    built: int
    failed: int
    pending_pages: int

    def line(self) -> str:
        return (
            f"queued {self.queued}, building {self.building}, "
            f"built {self.built}, failed {self.failed}"
        )


def read_progress(engine: Engine) -> Progress:
    """The farm's counts now."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                """
                SELECT
                  (SELECT count(*) FROM versions WHERE removed_at IS NULL),
                  (SELECT count(*) FROM abis),
                  (SELECT count(*) FROM build_queue),
                  (SELECT count(*) FROM build_queue WHERE not_before <= now()),
                  (SELECT count(*) FROM builds WHERE status IN ('pending', 'building')),
                  (SELECT count(*) FROM builds WHERE status = 'success'),
                  (SELECT count(*) FROM builds WHERE status = 'failed'),
                  (SELECT count(*) FROM rewrites_pending)
                """
            )
        ).one()
    return Progress(*(int(v) for v in row))


def published_files(engine: Engine) -> list[tuple[str, str]]:
    """(package, filename) of every file of a successful build."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT b.package, f.filename FROM files f JOIN builds b USING (build_id) "
                "WHERE b.status = 'success' ORDER BY b.package, f.filename"
            )
        )
        return [(r[0], r[1]) for r in rows]


def first_round_done(progress: Progress, engine: Engine, output: Path) -> bool:
    """True once a builder is known, nothing is ready or running, and pages are written."""
    if progress.targets == 0 or progress.releases == 0:
        return False
    if progress.ready or progress.building or progress.pending_pages:
        return False
    for package, filename in published_files(engine):
        folder = output / "simple" / package
        page = folder / "index.html"
        if not (folder / filename).exists() or not page.exists():
            return False
        if filename not in page.read_text(errors="replace"):
            return False
    return True


# ----------------------------------------------------------------------------- the demo


def _short_dir() -> Path:
    """A short private folder for ipc sockets (sun_path is ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="piwdemo-"))


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = ["# Written by piw-demo on each start; edits are replaced.", ""]
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {value}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


class Demo:
    """The demo farm: :meth:`run` brings it up, waits, and takes it down."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.data = opts.data.absolute()
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self._cleanup: list[tuple[str, Any]] = []
        self.cluster: Cluster | None = None
        self.engine: Engine | None = None
        self.builder: subprocess.Popen[bytes] | None = None
        self.index_url = ""
        self.packages: list[str] = []

    # -- lifetime ----------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.stop_event.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> int:
        """Bring the farm up, wait (progress), take it down; the exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            with self._lock():
                try:
                    self._start()
                    if self.stop_event.is_set():
                        return 0
                    return self._watch()
                finally:
                    self._stop_all()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        path = self.data / ".lock"
        with open(path, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"another piw-demo is running with {self.data}; stop it first"
                ) from None
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield

    def _later(self, what: str, action: Any) -> None:
        self._cleanup.append((what, action))

    def _stop_all(self) -> None:
        if self._cleanup:
            say("stopping" + (f" ({self.stop_reason})" if self.stop_reason else ""))
        while self._cleanup:
            what, action = self._cleanup.pop()
            try:
                action()
            except Exception as exc:  # one failure must not leave the rest running
                log.warning("stopping %s: %s", what, exc)
                say(f"warning: could not stop {what} cleanly: {exc}")

    # -- bring-up ------------------------------------------------------------

    def _start(self) -> None:
        opts, data = self.opts, self.data
        (data / "logs").mkdir(exist_ok=True)
        logs = data / "logs"
        self._logging = setup_logging(
            prog="piw-demo", level=logging.WARNING, log_file=logs / "demo.log"
        )
        self._later("logging", self._logging.restore)

        say(f"data folder: {data}")
        # Sources first: bad input is found before anything is started.
        build_index = self._upstream(logs / "pip.log")
        if self.stop_event.is_set():
            return
        admin_url, master_url = self._database()
        if self.stop_event.is_set():
            return
        self.engine = create_engine(admin_url, pool_size=2, max_overflow=2)
        self._later("database connections", self.engine.dispose)
        keys = self._keys()
        output = data / "www"
        output.mkdir(exist_ok=True)
        index_base = self._web_server(output)
        self.index_url = f"{index_base}/simple/"

        sockets = _short_dir()
        self._later("socket folder", lambda: shutil.rmtree(sockets, ignore_errors=True))
        builder_port, file_port = free_port(), free_port()
        while file_port == builder_port:
            file_port = free_port()
        master_conf = data / "master.conf"
        master_conf.write_text(
            _ini(
                {
                    "database": {"dsn": master_url, "pool_size": 4},
                    "master": {
                        "output_path": output,
                        "builder_endpoint": f"tcp://127.0.0.1:{builder_port}",
                        "file_endpoint": f"tcp://127.0.0.1:{file_port}",
                        "status_endpoint": f"ipc://{sockets}/status",
                        "control_endpoint": f"ipc://{sockets}/control",
                        "admin_endpoint": f"ipc://{sockets}/admin",
                        "log_endpoint": f"ipc://{sockets}/logger",
                        "stats_interval": "5s",
                        "min_free_disk": "100M",
                        "base_url": index_base + "/",
                    },
                    "upstream": self._upstream_settings(build_index),
                    "keys": {
                        "curve": "true",
                        "secret_key_file": keys["master"],
                        "public_key_file": keys["master_public"],
                        "authorized_keys_dir": keys["authorized"],
                    },
                }
            )
        )
        builder_conf = data / "builder.conf"
        builder_conf.write_text(
            _ini(
                {
                    "builder": {
                        "master_host": "127.0.0.1",
                        "builder_port": builder_port,
                        "file_port": file_port,
                        "label": _BUILDER_LABEL,
                        "build_dir": data / "builds",
                        "build_timeout": f"{opts.build_timeout}s",
                        "min_free_disk": "200M",
                    },
                    "keys": {
                        "curve": "true",
                        "secret_key_file": keys["builder"],
                        "public_key_file": keys["builder_public"],
                        "server_public_key_file": keys["master_public"],
                    },
                }
            )
        )
        self._master(master_conf)
        self._add_releases(build_index)
        self._builder(builder_conf, logs / "builder.log")
        self._announce(sockets, master_conf)

    def _database(self) -> tuple[str, str]:
        from piwheels.db.initdb import upgrade

        root = self.data / "postgres"
        if len(str(root / "run")) > 90:
            # The socket path would be too long: reach the same folder through a
            # short symlink (the cluster keeps the path it is given).
            short = _short_dir()
            # The target must exist: a dangling link would stop the cluster's mkdir.
            root.mkdir(parents=True, exist_ok=True)
            (short / "pg").symlink_to(root)
            root = short / "pg"
            self._later("socket link", lambda: shutil.rmtree(short, ignore_errors=True))
        cluster = Cluster(root)
        if cluster.running:
            # Left by a demo that was killed: its socket may be elsewhere; restart it.
            cluster.stop()
        say("starting PostgreSQL" + ("" if cluster.initialised else " (first run: initdb)"))
        cluster.start()
        self.cluster = cluster
        self._later("PostgreSQL", cluster.stop)
        admin_url = cluster.url("piwheels")
        steps = upgrade(admin_url, yes=True, user="piwheels", out=io.StringIO())
        if steps:
            say("database: " + "; ".join(steps))
        return admin_url, cluster.dsn("piwheels", user="piwheels")

    def _upstream(self, pip_log: Path) -> str:
        """Prepare the sources; the index URL the builder downloads from."""
        opts = self.opts
        if opts.upstream is not None:
            self.packages = [canonical(p) for p in opts.packages]
            return opts.upstream.rstrip("/") + "/"
        from piwheels.upstream.localdir import write_simple_index

        upstream = self.data / "upstream"
        sdists = fill_upstream(opts, upstream, pip_log)
        self.packages = sorted(sdists)
        fill_build_requirements(opts, sdists, upstream, pip_log)
        root = self.data / "build-index"
        write_simple_index(upstream, root / "simple")
        server = StaticServer(root)
        server.start()
        self._later("build index server", server.stop)
        return f"{server.url}/simple/"

    def _upstream_settings(self, build_index: str) -> dict[str, object]:
        if self.opts.upstream is not None:
            # Not [upstream] url: a watcher following it would add the whole index.
            # The demo records the chosen packages itself (_add_releases).
            return {"build_index": build_index}
        return {"local_path": self.data / "upstream" / "sdists", "build_index": build_index}

    def _keys(self) -> dict[str, Path]:
        from piwheels.transport import generate_keys

        folder = self.data / "keys"
        authorized = folder / "authorized"
        authorized.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for name in ("master", "builder"):
            if not (folder / f"{name}.key_secret").exists():
                generate_keys(folder, name)
        shutil.copy2(folder / "builder.key", authorized / "builder.key")
        return {
            "master": folder / "master.key_secret",
            "master_public": folder / "master.key",
            "builder": folder / "builder.key_secret",
            "builder_public": folder / "builder.key",
            "authorized": authorized,
        }

    def _web_server(self, output: Path) -> str:
        nginx = find_nginx()
        if nginx is not None:
            user = None
            if os.geteuid() == 0 and not _world_traversable(output):
                user = "root"
            server = DemoNginx(output, self.data / "nginx", port=self.opts.port, nginx=nginx,
                               user=user)  # fmt: skip
            try:
                server.start()
            except OSError as exc:
                say(f"warning: nginx would not start ({exc}); serving with Python's http.server")
            else:
                self._later("nginx", server.stop)
                return server.url
        else:
            say(
                "warning: nginx is not installed; serving the index with Python's http.server "
                "(no PEP 691 negotiation, no access log; apt-get install nginx-light for the "
                "real thing)"
            )
        static = StaticServer(output, self.opts.port)
        static.start()
        self._later("web server", static.stop)
        return static.url

    def _master(self, conf: Path) -> None:
        from piwheels.db.initdb import check_schema
        from piwheels.master.main import Master

        settings = load_settings(config_files=[conf], system_path=None, user_path=None, environ={})
        master = Master(settings)
        with master.engine.connect() as conn:
            check_schema(conn)
        master.start()
        result: list[int] = []
        thread = threading.Thread(
            target=lambda: result.append(master.run()), name="master", daemon=True
        )
        thread.start()
        self.master = master
        self.master_result = result

        def stop() -> None:
            master.request("QUIT")
            thread.join(60)
            if thread.is_alive():
                raise RuntimeError("the master did not stop within 60 s")

        self.master_thread = thread
        self._later("master", stop)
        say("master started")

    def _add_releases(self, build_index: str) -> None:
        from piwheels.db.versions import NewVersion, add_versions

        rows: list[NewVersion] = []
        if self.opts.upstream is None:
            for name, path in list_sdists(self.data / "upstream" / "sdists").items():
                parsed = sdist_project(path.name)
                assert parsed is not None
                rows.append(NewVersion(package=name, version=parsed[1], has_sdist=True))
        else:
            rows = newest_releases(build_index, self.packages)
        assert self.engine is not None
        with self.engine.begin() as conn:
            added = add_versions(conn, rows)
        if added:
            say("recorded " + ", ".join(f"{p} {v}" for p, v in added))

    def _builder(self, conf: Path, log_path: Path) -> None:
        code = (
            "import sys; from piwheels.builder.main import COMMAND; "
            "sys.exit(COMMAND.run(sys.argv[1:], system_config=None, user_config=None))"
        )
        out = open(log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.builder = subprocess.Popen(
            [sys.executable, "-c", code, "-c", str(conf), "-v", "--master-timeout", "30"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the builder
        )
        proc = self.builder

        def stop() -> None:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
            finally:
                out.close()

        self._later("builder", stop)
        say(f"builder started (log: {log_path})")

    def _announce(self, sockets: Path, master_conf: Path) -> None:
        # The first package asked for (markupsafe by default: a C extension).
        wanted = [canonical(p) for p in self.opts.packages if canonical(p) in self.packages]
        example = (wanted or self.packages or ["PACKAGE"])[0]
        # The executables are in the demo's venv, which is seldom on PATH.
        beside = Path(sys.executable).parent / "piw-monitor"
        monitor = str(beside) if beside.exists() else "piw-monitor"
        lines = [
            "",
            f"  index:   {self.index_url}",
            f"  site:    {self.index_url[: -len('simple/')]}",
            "  install from it (once a package is built):",
            f"    pip install --index-url {self.index_url} {example}",
            f"    uv pip install --index-url {self.index_url} {example}",
            "  (--index-url: only this index, so the wheel built here is the one installed;",
            "  a farm's users add it with --extra-index-url beside PyPI instead)",
            f"  watch it: {monitor} -c {master_conf}",
            f"  logs:    {self.data / 'logs'}",
            "  Ctrl-C stops everything; run again to resume.",
            "",
        ]
        print("\n".join(lines), flush=True)

    # -- waiting -------------------------------------------------------------

    def _watch(self) -> int:
        assert self.engine is not None
        last = ""
        announced = False
        tty = sys.stdout.isatty()
        output = self.data / "www"
        while not self.stop_event.is_set():
            if self.builder is not None and self.builder.poll() is not None:
                say(
                    f"the builder exited with status {self.builder.returncode}; "
                    f"see {self.data / 'logs' / 'builder.log'}"
                )
                self.request_stop("builder exited")
                return 1
            if not self.master_thread.is_alive():
                say(f"the master stopped; see {self.data / 'logs' / 'demo.log'}")
                self.request_stop("master stopped")
                return 1
            try:
                progress = read_progress(self.engine)
            except Exception as exc:
                raise DatabaseError(f"cannot read progress: {exc}") from exc
            line = progress.line()
            if line != last:
                if tty:
                    print(f"\r{line}   ", end="", flush=True)
                else:
                    print(line, flush=True)
                last = line
            if not announced and first_round_done(progress, self.engine, output):
                announced = True
                if tty:
                    print()
                say(f"first round done: {line}")
                if self.opts.exit_when_built:
                    self.request_stop("built")
                    return 0
                say(f"the wheels are served at {self.index_url}; Ctrl-C stops the farm")
                last = ""
            self.stop_event.wait(self.opts.interval)
        if tty:
            print()
        return 0


def newest_releases(index_url: str, packages: Sequence[str]) -> list[Any]:
    """The newest final release with an sdist of each package on a PEP 691 index."""
    from packaging.version import InvalidVersion, Version

    from piwheels.db.versions import NewVersion
    from piwheels.upstream.client import SimpleClient
    from piwheels.upstream.faults import UpstreamFault
    from piwheels.upstream.pages import group_releases

    client = SimpleClient(index_url)
    rows = []
    try:
        for name in packages:
            try:
                page = client.get_project(name)
            except UpstreamFault as exc:
                raise UpstreamError(f"{index_url}: {name}: {exc}") from exc
            if page is None:
                raise UpstreamError(f"{index_url}: no project {name}")
            best: tuple[Version, str, Any] | None = None
            for version, files in group_releases(page).items():
                sdist = next((f for f in files if f.kind == "sdist" and not f.yanked), None)
                try:
                    parsed = Version(version)
                except InvalidVersion:
                    continue
                if sdist is None or parsed.is_prerelease:
                    continue
                if best is None or parsed > best[0]:
                    best = (parsed, version, sdist)
            if best is None:
                raise UpstreamError(f"{index_url}: {name} has no final release with an sdist")
            _, version, sdist = best
            # Upstream's own wheels are left out on purpose: the demo builds anyway.
            rows.append(
                NewVersion(
                    package=page.display_name or name,
                    version=version,
                    released_at=sdist.upload_time,
                    requires_python=sdist.requires_python or "",
                    has_sdist=True,
                )
            )
    finally:
        client.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """``piw-demo``: run the demo farm; the exit code."""
    try:
        opts = parse_args(argv)
    except SystemExit as exc:  # --help, --version, argparse errors
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except UsageError as exc:
        return report(exc, prog="piw-demo")
    try:
        return Demo(opts).run()
    except (PiwheelsError, OSError, ConfigError) as exc:
        return report(exc, prog="piw-demo")


if __name__ == "__main__":
    sys.exit(main())
