"""The page writer: the only task that writes the published site.

Requests arrive on the internal ``pages`` socket.  A request for a project
goes to the site process at once when that project was not written in the last
``[master] page_coalesce`` (so a finished build's pages are replaced within
milliseconds on an idle master); repeated requests for it within that window
are merged into one write at the window's end, and requests arriving while a
batch is being written gather into the next batch, so a burst of builds of one
project rewrites its pages at most twice (see
:class:`piwheels.web.writer.PageCoalescer`).
Every file is written to a temporary name and renamed into place (see
:class:`piwheels.web.writer.SiteWriter`).

The task's thread only routes: project pages, the root index, the home page,
sitemaps and the search index are read, rendered and written by one
long-lived *site process* (so that work never holds the master's GIL, which
the dispatcher and file receiver need).  Due projects go to it in batches
(read with :func:`piwheels.db.projects.get_projects_batch` in a fixed number
of queries and one read-only transaction); one batch at a time, so while it
works later requests gather into the next batch, and a later request is
always written after an earlier one.  Deletions wait for the batch in flight
and are done by the thread, so nothing the process writes afterwards can undo
them.  Logs are written by the thread (one small gzip each).

The root index lists every published project (hundreds of thousands at full
size): it is rewritten only when the set of published names changes (the
task keeps that set, and each batch says which of its projects are
published), and at most once per :data:`ROOT_INTERVAL` (longer when a
rewrite takes long, see :data:`ROOT_SHARE`).

A full rewrite (ALL, from ``piw-rebuild all``) runs beside the task's loop: a
background thread drives :meth:`SiteWriter.write_all` over every project, with
``[master] page_workers`` processes that each read their chunks with the bulk
loader (:class:`piwheels.db.projects.ProjectLoader`) and write them.  The task
keeps serving requests meanwhile; a project it writes or deletes during the
rewrite is written (or deleted) again once the rewrite is over, so the bulk
pass, which may have read it earlier, never has the last word.  Progress and
the outcome go to the ``rewrite_progress`` address the request names.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from .. import protocols
from ..db import figures
from ..db.packages import get_aliases
from ..db.projects import ProjectLoader, get_project_data, get_projects_batch
from ..errors import InvalidName, ProtocolError, TransportError
from ..tasks import Endpoint, Task
from ..transport import PULL, PUSH, Context, Socket
from ..web.gcpause import paused_gc
from ..web.model import ProjectData
from ..web.render import SiteConfig
from ..web.writer import PageCoalescer, SiteWriter
from .env import MasterEnv
from .process import forkserver_context, set_process_name

__all__ = ["BATCH_SIZE", "CHUNK_SIZE", "ROOT_INTERVAL", "ROOT_SHARE", "TICK", "PageWriter"]

#: Projects per chunk of a full rewrite: one bulk read (a query per table) and one unit of
#: work for a worker; large enough that the queries' fixed costs vanish, small enough that
#: a worker holds a few megabytes and progress moves often.
CHUNK_SIZE = 1000
#: Most projects in one batch for the site process (one bulk read of a few queries).
BATCH_SIZE = 200
#: Least time between two rewrites of the root index.  It lists every published project
#: (600,000 names at full size: seconds of work, and a page pip fetches rarely), so a
#: steady stream of new projects rewrites it every few seconds, not after every batch.
ROOT_INTERVAL = 5.0
#: And at most this share of the site process's time goes to the root index: after a
#: rewrite that took *t* seconds the next waits at least ``t / ROOT_SHARE``.
ROOT_SHARE = 0.1
#: Seconds between two looks at due requests and finished batches.
TICK = 0.01
#: Least time between two PROGRESS reports of a full rewrite.
PROGRESS_INTERVAL = 0.25


@dataclass
class _Rewrite:
    """A full rewrite in progress (its thread writes ``done``, ``error`` and ``finished``)."""

    number: int
    reply_to: str | None
    total: int
    started: float
    done: int = 0
    reported: int = -1
    last_report: float = 0.0
    error: BaseException | None = None
    stop: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # Written (or deleted, with their aliases) by the task while the rewrite ran.
    touched: set[str] = field(default_factory=set)
    deleted: dict[str, list[str]] = field(default_factory=dict)


class PageWriter(Task):
    """Renders and writes every page of the site."""

    role = "page_writer"
    binds = (Endpoint("pages", "PULL", "pages", "page and log requests"),)

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        base_url = env.settings.master.base_url or "http://localhost"
        self.writer = SiteWriter(env.output_path, SiteConfig(base_url=base_url.rstrip("/")))
        self.coalescer = PageCoalescer(env.settings.master.page_coalesce.total_seconds())
        self.workers = env.settings.master.page_workers
        self.chunk_size = CHUNK_SIZE
        self.rewrite: _Rewrite | None = None
        self.replies: dict[str, Socket] = {}
        self.site = _SiteProcess(self.writer, env.engine)
        # Due projects not yet handed to the site process (in order; a dict as ordered set).
        self.waiting: dict[str, None] = {}
        # The batch the site process is writing: its future and names.
        self.batch: tuple[Future[tuple[list[str], list[str]]], list[str]] | None = None
        # Other site-process work in flight (root index, home page, search index).
        self.jobs: list[tuple[str, Future[Any]]] = []
        # Published project names (what the root index lists), kept in step with each batch.
        self.published: set[str] = set()
        self.root_dirty = False
        self.root_next = 0.0  # monotonic time before which the root is not rewritten
        self.root_interval = ROOT_INTERVAL
        self.root_writes = 0  # how many times the root index was rewritten (for tests)
        self.pages = self.socket(PULL, protocols.pages, name="pages")
        self.pages.bind(env.addresses["pages"])
        self.register(self.pages)
        # The tick hands over requests whose window ended and takes in finished batches (the
        # next batch starts only then): short, as it bounds the wait of a merged request.
        self.every(TICK, self.flush)
        self.every(60, lambda: self._job("home", _site_home))
        self.every(3600, lambda: self._job("search", _site_search))
        self.written = 0

    def setup(self) -> None:
        # Start the site process now: its start is not paid by the first build's pages.
        self._job("start", _site_ready)
        self.writer.write_static()
        self.write_root()
        self.write_home()
        self.write_search()

    def teardown(self) -> None:
        self.stop_rewrite()
        self._drain()

    def close(self) -> None:
        self.stop_rewrite()
        self.site.close()
        self.writer.close()  # this process's spare files (see SiteWriter.close)
        super().close()

    # -- requests ------------------------------------------------------------------------

    def do_PROJECT(self, data: dict[str, Any]) -> None:
        self.coalescer.request(data["package"])
        due = self.coalescer.next_due()
        if due is not None and due <= self.coalescer.clock():
            # Due now (not written lately): hand it over at once rather than at the next tick.
            self.flush()

    def do_DELETE_PACKAGE(self, data: dict[str, Any]) -> None:
        name = data["package"]
        self._forget(name)
        with self.env.engine.connect() as conn:
            aliases = get_aliases(conn, name)
        self.writer.delete_project(name, aliases)
        if self.rewrite is not None:
            self.rewrite.touched.discard(name)
            self.rewrite.deleted[name] = aliases
        self._set_published(name, False)
        self.log.info("deleted the pages and files of %s", name)

    def do_DELETE_VERSION(self, data: dict[str, Any]) -> None:
        name = data["package"]
        self._forget(name)
        try:
            with self.env.engine.connect() as conn:
                project = get_project_data(conn, name)
                published = name in published_among(conn, [name])
        except InvalidName:
            self.do_DELETE_PACKAGE({"package": name})
            return
        removed = self.writer.delete_version(project, data["version"])
        self._touch(name)
        self._set_published(name, published)
        self.log.info("deleted %s %s (%d files)", name, data["version"], len(removed))

    def do_LOG(self, data: dict[str, Any]) -> None:
        try:
            self.writer.write_log(data["build_id"], data["log"])
        except FileExistsError:
            self.log.warning("build %d already has a log; kept it", data["build_id"])

    def do_HOME(self, data: None) -> None:
        self._job("home", _site_home)

    def do_SEARCH(self, data: None) -> None:
        self._job("search", _site_search)

    def do_ROOT(self, data: None) -> None:
        self.write_root()

    def do_ALL(self, data: dict[str, Any]) -> None:
        number, reply_to = data["rewrite"], data["reply_to"]
        running = self.rewrite
        if running is not None:
            self._reply(
                reply_to,
                "DONE",
                {
                    "rewrite": number,
                    "code": "BUSY",
                    "written": 0,
                    "message": f"a full rewrite is already running ({running.done} of "
                    f"{running.total} projects written)",
                },
            )
            return
        with self.env.engine.connect() as conn:
            names = figures.project_names(conn)
        rewrite = _Rewrite(number, reply_to, len(names), time.monotonic())
        self.rewrite = rewrite
        self.log.info("full rewrite of %d projects with %d worker(s)", len(names), self.workers)
        self._report(rewrite, force=True)
        rewrite.thread = threading.Thread(
            target=self._run_rewrite, args=(rewrite, names), name="page_writer-all", daemon=True
        )
        rewrite.thread.start()

    # -- the full rewrite ------------------------------------------------------------------

    def _run_rewrite(self, rewrite: _Rewrite, names: list[str]) -> None:
        """The background thread: write every project of *names*."""
        try:
            # A pool is worth its start-up only for more than one chunk of work.
            workers = self.workers if len(names) > self.chunk_size else 1
            if workers > 1:
                url = self.env.engine.url.render_as_string(hide_password=False)
                loader = ProjectLoader(url)
            else:
                loader = ProjectLoader(engine=self.env.engine)
            rewrite.done = self.writer.write_all(
                names,
                workers=workers,
                load_many=loader,
                chunk_size=self.chunk_size,
                progress=lambda n: setattr(rewrite, "done", n),
                stop=lambda: rewrite.stop,
            )
        except BaseException as exc:
            rewrite.error = exc
        finally:
            rewrite.finished.set()

    def check_rewrite(self) -> None:
        """Report the running rewrite's progress; finish it once its thread is done."""
        rewrite = self.rewrite
        if rewrite is None:
            return
        if not rewrite.finished.is_set():
            self._report(rewrite)
            return
        if rewrite.thread is not None:
            rewrite.thread.join()
        self.rewrite = None
        if rewrite.error is not None or rewrite.stop:
            exc = rewrite.error
            self.log.error("full rewrite failed after %d projects: %s", rewrite.done, exc)
            message = f"the full rewrite failed after {rewrite.done} project(s): {exc}"
            code = "FAILED"
        else:
            # Site pages after the projects, so the root index and sitemaps list them.
            self.writer.write_static()
            self.write_root()
            self.write_home()
            self.write_search()
            seconds = time.monotonic() - rewrite.started
            self.log.info("full rewrite: %d projects in %.1fs", rewrite.done, seconds)
            message = f"wrote the pages of {rewrite.done} project(s) in {seconds:.1f}s"
            code = "REBUILT"
        # What the task wrote or deleted meanwhile may have been overwritten by older data.
        for name, aliases in rewrite.deleted.items():
            self.writer.delete_project(name, aliases)
        for name in rewrite.touched:
            self.coalescer.request(name)
        if code == "REBUILT":
            self._report(rewrite, force=True, message="written")
        self._reply(
            rewrite.reply_to,
            "DONE",
            {"rewrite": rewrite.number, "code": code, "written": rewrite.done, "message": message},
        )

    def stop_rewrite(self, timeout: float = 60.0) -> None:
        """Stop handing out chunks and wait for those under way (the task is ending)."""
        rewrite = self.rewrite
        if rewrite is not None and rewrite.thread is not None:
            rewrite.stop = True
            rewrite.thread.join(timeout)

    def _report(self, rewrite: _Rewrite, *, force: bool = False, message: str = "") -> None:
        now = time.monotonic()
        if not force and (
            rewrite.done == rewrite.reported or now - rewrite.last_report < PROGRESS_INTERVAL
        ):
            return
        rewrite.reported, rewrite.last_report = rewrite.done, now
        self._reply(
            rewrite.reply_to,
            "PROGRESS",
            {
                "rewrite": rewrite.number,
                "done": rewrite.done,
                "total": rewrite.total,
                "message": message or "writing project pages",
            },
        )

    def _reply(self, address: str | None, msg: str, data: dict[str, Any]) -> None:
        """Send *msg* to the rewrite_progress socket at *address* (if any; never blocks)."""
        if address is None:
            return
        sock = self.replies.get(address)
        try:
            if sock is None:
                sock = self.socket(PUSH, reversed(protocols.rewrite_progress), name="progress")
                sock.connect(address)
                self.replies[address] = sock
            sock.send_msg(msg, data, timeout=0)
        except (TransportError, ProtocolError) as exc:
            self.log.warning("cannot report the full rewrite to %s: %s", address, exc)

    def _touch(self, name: str) -> None:
        if self.rewrite is not None:
            self.rewrite.deleted.pop(name, None)
            self.rewrite.touched.add(name)

    # -- writing ----------------------------------------------------------------------------

    def _forget(self, name: str) -> None:
        """Drop pending writes of *name* and wait for the batch in flight (it is being
        deleted: nothing written before the deletion may land after it)."""
        self.coalescer.delete(name)
        self.waiting.pop(name, None)
        self._drain()

    def _set_published(self, name: str, published: bool) -> None:
        if published != (name in self.published):
            if published:
                self.published.add(name)
            else:
                self.published.discard(name)
            self.root_dirty = True

    def flush(self, *, force: bool = False) -> None:
        """Hand due projects to the site process; take in what it finished.

        With *force*, every pending request is written (and the root index, if it changed)
        before this returns.
        """
        self._collect()
        for name, _kind in self.coalescer.flush(force=force):
            self.waiting[name] = None
        self._submit()
        while force and (self.batch is not None or self.waiting):
            self._collect(wait=True)
            self._submit()
        rooting = any(kind == "root" for kind, _ in self.jobs)
        if self.root_dirty and not rooting and (force or time.monotonic() >= self.root_next):
            self.root_dirty = False
            self._job("root", _site_root)
        if force:
            self._drain()
        if self.rewrite is not None:
            self.check_rewrite()

    def _submit(self) -> None:
        """Start the next batch if the site process is free (one batch at a time, so the
        requests that arrive meanwhile gather into the next one)."""
        if self.batch is not None or not self.waiting:
            return
        names = list(itertools.islice(self.waiting, BATCH_SIZE))
        for name in names:
            del self.waiting[name]
            self._touch(name)
        self.batch = (self.site.submit(_site_projects, names), names)

    def _collect(self, *, wait: bool = False) -> None:
        """Take in the finished batch and jobs (with *wait*, the batch in flight first)."""
        if self.batch is not None and (wait or self.batch[0].done()):
            future, names = self.batch
            self.batch = None
            try:
                written, published = future.result()
            except BrokenProcessPool as exc:
                # The process died (e.g. killed): a new one writes these again.
                self.log.error("the site process died (%s); writing %d again", exc, len(names))
                self.site.restart()
                self.waiting = dict.fromkeys([*names, *self.waiting])
                return
            done = set(written)
            for name in names:
                if name not in done:
                    self.log.warning("no project %s to write", name)
            public = set(published)
            for name in names:
                self._set_published(name, name in public)
            self.written += len(written)
        for job in [j for j in self.jobs if j[1].done()]:
            self.jobs.remove(job)
            self._finish_job(*job)

    def _finish_job(self, kind: str, future: Future[Any]) -> None:
        try:
            result = future.result()
        except BrokenProcessPool as exc:
            self.log.error("the site process died (%s) while writing the %s page", exc, kind)
            self.site.restart()
            if kind == "root":
                self.root_dirty = True
            return
        if kind == "root":
            count, seconds = result
            self.root_writes += 1
            self.root_next = time.monotonic() + max(self.root_interval, seconds / ROOT_SHARE)
            self.log.debug("root index: %d projects in %.2fs", count, seconds)

    def _job(self, kind: str, fn: Callable[[], Any]) -> None:
        self.jobs.append((kind, self.site.submit(fn)))

    def _drain(self) -> None:
        """Wait for everything handed to the site process."""
        while self.batch is not None or self.jobs:
            self._collect(wait=True)
            for job in list(self.jobs):
                self.jobs.remove(job)
                job[1].exception()  # waits
                self._finish_job(*job)

    def write_root(self) -> None:
        """Rewrite the root index now, from the database (and take its names as published)."""
        self._drain()
        start = time.monotonic()
        with self.env.engine.connect() as conn:
            names = figures.published_names(conn)
        self.writer.write_root(names)
        self.root_writes += 1
        self.published = set(names)
        self.root_dirty = False
        seconds = time.monotonic() - start
        self.root_next = time.monotonic() + max(self.root_interval, seconds / ROOT_SHARE)
        self.log.debug("root index: %d projects in %.2fs", len(names), seconds)

    def write_home(self) -> None:
        with self.env.engine.connect() as conn:
            stats = figures.home_stats(conn)
            names = figures.project_names(conn)
        self.writer.write_home(stats)
        self.writer.write_sitemaps(names)

    def write_search(self) -> None:
        with self.env.engine.connect() as conn:
            entries = figures.search_entries(conn)
        self.writer.write_search_index(entries)


def published_among(conn: Connection, names: list[str]) -> set[str]:
    """Which of *names* the root index lists (the test of :func:`figures.published_names`)."""
    if not names:
        return set()
    rows = conn.execute(
        text(
            """
            SELECT DISTINCT b.package FROM files f JOIN builds b ON b.build_id = f.build_id
            JOIN packages p ON p.name = b.package
            WHERE b.package = ANY(:n) AND p.removed_at IS NULL AND p.status <> 'quarantined'
            """
        ),
        {"n": names},
    )
    return {r[0] for r in rows}


# -- the site process ---------------------------------------------------------------------------


class _SiteProcess:
    """One long-lived process that reads, renders and writes for the page writer.

    Started on first use (forkserver: the master has threads, and a fork of a preloaded
    server costs far less than a fresh interpreter).  One process runs the work in the
    order it was handed in.
    """

    def __init__(self, writer: SiteWriter, engine: Engine) -> None:
        self.writer = writer
        self.url = engine.url.render_as_string(hide_password=False)
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.pool is None:
            # Children forked from a server that has already imported the renderer and the
            # database layer start in milliseconds.
            ctx = forkserver_context()
            self.pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=ctx,
                initializer=_site_init,
                initargs=(self.writer, self.url),
            )
        return self.pool.submit(fn, *args)

    def restart(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


_site: tuple[SiteWriter, Engine] | None = None
# The site process's connection for project batches, kept between batches (see _site_read).
_site_conn: Connection | None = None


def _end_with_master() -> None:
    master = multiprocessing.parent_process()
    if master is not None:
        master.join()
        os._exit(0)


def _site_init(writer: SiteWriter, url: str) -> None:
    global _site, _site_conn
    # Ctrl-C reaches the whole process group: the master decides when this process stops
    # (it drains the work in hand first), so the interrupt is not for this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_process_name("piw-site")
    # A master killed outright never shuts the pool down, and this process would wait for
    # work forever: it ends when the master does.
    threading.Thread(target=_end_with_master, name="master-watch", daemon=True).start()
    # Two connections: one kept for project batches, one for the root, home and search pages.
    _site = (writer, create_engine(url, pool_size=2, max_overflow=0, pool_pre_ping=True))
    _site_conn = None
    # The writer's spare files go when this process exits (multiprocessing runs these).
    multiprocessing.util.Finalize(writer, writer.close, exitpriority=10)


def _site_read(names: list[str]) -> tuple[dict[str, ProjectData], set[str]]:
    """:func:`get_projects_batch` of *names* on the kept connection.

    A batch is often one project (a finished build), so its fixed costs count: the
    connection stays open between batches in autocommit (no pre-ping, and no transaction
    left open while idle), and the read opens its own read-only REPEATABLE READ transaction
    in its first query's round trip and commits it after its last (one transaction and one
    snapshot for the batch).  If a kept connection fails (e.g. PostgreSQL restarted) the
    batch is read once more on a new one; an error on a new one is raised.
    """
    global _site_conn
    _, engine = _site_state()
    while True:
        conn, fresh = _site_conn, False
        if conn is None:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            _site_conn, fresh = conn, True
        try:
            return get_projects_batch(conn, names)
        except Exception:
            _site_conn = None
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # pragma: no cover - the connection is broken already
                pass
            if fresh:
                raise


def _site_state() -> tuple[SiteWriter, Engine]:
    if _site is None:  # pragma: no cover - the pool always runs the initializer
        raise RuntimeError("site process not initialised")
    return _site


def _site_ready() -> None:
    """Nothing: makes the site process start."""


def _site_projects(names: list[str]) -> tuple[list[str], list[str]]:
    """Read and write the pages of *names*; returns (written, published among them)."""
    # No cycles among the batch's objects: collections would only walk them (gcpause).
    with paused_gc():
        return _site_write(names)


def _site_write(names: list[str]) -> tuple[list[str], list[str]]:
    # The batch's projects die with this frame, before collection resumes (gcpause).
    writer, _ = _site_state()
    projects, published = _site_read(names)
    for project in projects.values():
        writer.write_project(project)
    return list(projects), sorted(published)


def _site_root() -> tuple[int, float]:
    """Rewrite the root index; returns how many projects it lists and the seconds taken."""
    start = time.monotonic()
    writer, engine = _site_state()
    with engine.connect() as conn:
        names = figures.published_names(conn)
    writer.write_root(names)
    return len(names), time.monotonic() - start


def _site_home() -> None:
    writer, engine = _site_state()
    with engine.connect() as conn:
        stats = figures.home_stats(conn)
        names = figures.project_names(conn)
    writer.write_home(stats)
    writer.write_sitemaps(names)


def _site_search() -> None:
    writer, engine = _site_state()
    with engine.connect() as conn:
        entries = figures.search_entries(conn)
    writer.write_search_index(entries)
