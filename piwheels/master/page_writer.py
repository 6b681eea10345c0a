"""The page writer: the only task that writes the published site.

Requests arrive on the internal ``pages`` socket.  Project rewrites are
merged: repeated requests for one project within ``[master] page_coalesce``
become one write, so a burst of builds of one project rewrites its pages once.
Logs, deletions and site pages are written at once.  Every file is written to
a temporary name and renamed into place (see :class:`piwheels.web.writer.SiteWriter`).

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

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import protocols
from ..db import figures
from ..db.packages import get_aliases
from ..db.projects import ProjectLoader, get_project_data
from ..errors import InvalidName, ProtocolError, TransportError
from ..tasks import Endpoint, Task
from ..transport import PULL, PUSH, Context, Socket
from ..web.render import SiteConfig
from ..web.writer import PageCoalescer, SiteWriter
from .env import MasterEnv

__all__ = ["CHUNK_SIZE", "PageWriter"]

#: Projects per chunk of a full rewrite: one bulk read and one unit of work for a worker.
CHUNK_SIZE = 200
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
        self.root_dirty = False
        self.pages = self.socket(PULL, protocols.pages, name="pages")
        self.pages.bind(env.addresses["pages"])
        self.register(self.pages)
        self.every(0.05, self.flush)
        self.every(60, self.write_home)
        self.every(3600, self.write_search)
        self.written = 0

    def setup(self) -> None:
        self.writer.write_static()
        self.write_root()
        self.write_home()
        self.write_search()

    def teardown(self) -> None:
        self.stop_rewrite()

    def close(self) -> None:
        self.stop_rewrite()
        super().close()

    # -- requests ------------------------------------------------------------------------

    def do_PROJECT(self, data: dict[str, Any]) -> None:
        self.coalescer.request(data["package"])

    def do_DELETE_PACKAGE(self, data: dict[str, Any]) -> None:
        name = data["package"]
        self.coalescer.delete(name)
        with self.env.engine.connect() as conn:
            aliases = get_aliases(conn, name)
        self.writer.delete_project(name, aliases)
        if self.rewrite is not None:
            self.rewrite.touched.discard(name)
            self.rewrite.deleted[name] = aliases
        self.root_dirty = True
        self.log.info("deleted the pages and files of %s", name)

    def do_DELETE_VERSION(self, data: dict[str, Any]) -> None:
        name = data["package"]
        try:
            with self.env.engine.connect() as conn:
                project = get_project_data(conn, name)
        except InvalidName:
            self.do_DELETE_PACKAGE({"package": name})
            return
        removed = self.writer.delete_version(project, data["version"])
        self.coalescer.delete(name)
        self._touch(name)
        self.root_dirty = True
        self.log.info("deleted %s %s (%d files)", name, data["version"], len(removed))

    def do_LOG(self, data: dict[str, Any]) -> None:
        try:
            self.writer.write_log(data["build_id"], data["log"])
        except FileExistsError:
            self.log.warning("build %d already has a log; kept it", data["build_id"])

    def do_HOME(self, data: None) -> None:
        self.write_home()

    def do_SEARCH(self, data: None) -> None:
        self.write_search()

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

    def flush(self, *, force: bool = False) -> None:
        """Write the projects whose coalescing window has passed."""
        due = self.coalescer.flush(force=force)
        if due:
            with self.env.engine.connect() as conn:
                for name, _kind in due:
                    try:
                        project = get_project_data(conn, name)
                    except InvalidName:
                        self.log.warning("no project %s to write", name)
                        continue
                    self.writer.write_project(project)
                    self._touch(name)
                    self.written += 1
            self.root_dirty = True
        if self.root_dirty:
            self.write_root()
        if self.rewrite is not None:
            self.check_rewrite()

    def write_root(self) -> None:
        start = time.monotonic()
        with self.env.engine.connect() as conn:
            names = figures.published_names(conn)
        self.writer.write_root(names)
        self.root_dirty = False
        self.log.debug("root index: %d projects in %.2fs", len(names), time.monotonic() - start)

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
