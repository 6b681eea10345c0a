"""The page writer: the only task that writes the published site.

Requests arrive on the internal ``pages`` socket.  Project rewrites are
merged: repeated requests for one project within ``[master] page_coalesce``
become one write, so a burst of builds of one project rewrites its pages once.
Logs, deletions and site pages are written at once.  Every file is written to
a temporary name and renamed into place (see :class:`piwheels.web.writer.SiteWriter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import protocols
from ..db import figures
from ..db.packages import get_aliases
from ..db.projects import get_project_data
from ..errors import InvalidName
from ..tasks import Endpoint, Task
from ..transport import PULL, Context
from ..web.render import SiteConfig
from ..web.writer import PageCoalescer, SiteWriter
from .env import MasterEnv


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

    # -- requests ------------------------------------------------------------------------

    def do_PROJECT(self, data: dict[str, Any]) -> None:
        self.coalescer.request(data["package"])

    def do_DELETE_PACKAGE(self, data: dict[str, Any]) -> None:
        name = data["package"]
        self.coalescer.delete(name)
        with self.env.engine.connect() as conn:
            aliases = get_aliases(conn, name)
        self.writer.delete_project(name, aliases)
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

    def do_ALL(self, data: None) -> None:
        with self.env.engine.connect() as conn:
            names = figures.project_names(conn)
        for name in names:
            self.coalescer.request(name)
        self.flush(force=True)
        self.writer.write_static()
        self.write_root()
        self.write_home()
        self.write_search()

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
                    self.written += 1
            self.root_dirty = True
        if self.root_dirty:
            self.write_root()

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
