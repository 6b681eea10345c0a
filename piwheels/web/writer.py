"""Write the site to the output folder: every file atomically, every deletion complete.

Each file is written to a temporary name in its own directory, given mode 0644 (nginx workers
run as another user), optionally fsynced, and renamed over the old one, so nginx never serves a
partial file.  Index pages larger than ``gzip_threshold`` get a precompressed ``.gz`` twin for
nginx's ``gzip_static``; a twin that would go stale is removed.

:class:`PageCoalescer` is the pure logic the page writer task uses to merge bursts of requests
for the same project.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from piwheels.web import layout, render
from piwheels.web.model import (
    HomeStats,
    ProjectData,
    SearchEntry,
    canonicalize,
    check_canonical,
    check_filename,
)
from piwheels.web.render import SiteConfig

STATIC_DIR = Path(__file__).parent / "static"
_counter = itertools.count()


class SiteWriter:
    """Writes pages and files under *output_path* (created if missing)."""

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        config: SiteConfig | None = None,
        *,
        fsync: bool = False,
        gzip_threshold: int = 4096,
    ) -> None:
        self.root = Path(output_path)
        self.config = config or SiteConfig()
        self.fsync = fsync
        self.gzip_threshold = gzip_threshold
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)

    # --- plumbing -------------------------------------------------------------------------

    def path(self, relpath: str) -> Path:
        """The absolute path of *relpath*, refusing anything that leaves the output folder."""
        parts = relpath.split("/")
        if relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a path inside the site: {relpath!r:.80}")
        return self.root.joinpath(*parts)

    def write_file(self, relpath: str, data: bytes, *, gz: bool = False) -> Path:
        """Atomically replace *relpath* with *data*; with *gz*, keep a ``.gz`` twin in step."""
        target = self.path(relpath)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if gz:
            twin = target.with_name(target.name + ".gz")
            if len(data) >= self.gzip_threshold:
                # mtime=0: the same page always compresses to the same bytes.
                self._atomic(twin, gzip.compress(data, compresslevel=6, mtime=0))
            else:
                try:
                    twin.unlink()
                except FileNotFoundError:
                    pass
        self._atomic(target, data)
        return target

    def _temp_name(self, target: Path) -> Path:
        return target.with_name(f".{target.name}.{os.getpid()}.{next(_counter)}.tmp")

    def _write_temp(self, target: Path, data: bytes) -> Path:
        tmp = self._temp_name(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fchmod(fd, 0o644)  # the umask must not make it unreadable to nginx
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def _atomic(self, target: Path, data: bytes) -> None:
        tmp = self._write_temp(target, data)
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _symlink(self, link: Path, target: str) -> None:
        # Atomic too: make the link under a temporary name and rename it over the old one.
        if link.is_symlink() and os.readlink(link) == target:
            return
        if link.exists() and not link.is_symlink():
            return  # a real directory (another project's): never clobber it
        tmp = self._temp_name(link)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    # --- projects -------------------------------------------------------------------------

    def write_project(self, project: ProjectData) -> None:
        """Write the project's simple pages, project page and JSON API, and alias links."""
        name = project.name
        simple = layout.simple_dir(name)
        proj = layout.project_dir(name)
        self.write_file(f"{simple}/index.html", render.render_simple_project_html(project), gz=True)
        self.write_file(f"{simple}/index.json", render.render_simple_project_json(project), gz=True)
        self.write_file(
            f"{proj}/index.html", render.render_project_html(project, self.config), gz=True
        )
        self.write_file(
            f"{proj}/json/index.json", render.render_project_json(project, self.config), gz=True
        )
        for alias in project.aliases:
            if alias != name:
                # pip and uv ask for canonical names; these keep old links working.
                self._symlink(self.root / "simple" / alias, name)
                self._symlink(self.root / "project" / alias, name)

    def write_metadata(self, name: str, filename: str, data: bytes) -> Path:
        """Write a wheel's core metadata (PEP 658) next to it; returns the path."""
        return self.write_file(layout.metadata_path(name, filename), data)

    def delete_project(self, name: str, aliases: Iterable[str] = ()) -> None:
        """Remove every page and file of *name*, and the alias links given."""
        check_canonical(name)
        for top in ("simple", "project"):
            for alias in aliases:
                if canonicalize(alias) != name or alias == name or "/" in alias:
                    continue
                link = self.root / top / alias
                if link.is_symlink():
                    link.unlink()
            directory = self.root / top / name
            if directory.is_symlink():
                directory.unlink()
            elif directory.exists():
                # Rename first so nginx never sees a half-deleted directory.
                doomed = self._temp_name(directory)
                os.replace(directory, doomed)
                shutil.rmtree(doomed)

    def delete_version(
        self, project: ProjectData, version: str, filenames: Iterable[str] = ()
    ) -> list[str]:
        """Rewrite *project*'s pages (which must no longer list *version*) and remove its files.

        *filenames* names the files to remove; when empty, wheels on disk whose file name
        carries *version* and which the project no longer lists are removed.  Returns the
        file names removed.
        """
        if any(v.version == version for v in project.versions):
            raise ValueError(f"{project.name}: version {version!r:.40} is still listed")
        self.write_project(project)
        listed = {f.filename for f in project.files}
        directory = self.root / layout.simple_dir(project.name)
        names = [check_filename(f) for f in filenames]
        if not names and directory.is_dir():
            escaped = re.sub(r"[^\w\d.]+", "_", version, flags=re.UNICODE).lower()
            for entry in directory.iterdir():
                parts = entry.name.split("-")
                if (
                    entry.name.endswith(".whl")
                    and len(parts) >= 5
                    and parts[1].lower() == escaped
                    and entry.name not in listed
                ):
                    names.append(entry.name)
        removed = []
        for filename in names:
            for path in (directory / filename, directory / (filename + ".metadata")):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                if path.suffix == ".whl":
                    removed.append(filename)
        return removed

    # --- site-wide pages ------------------------------------------------------------------

    def write_root(self, names: Iterable[str]) -> None:
        """``simple/index.html`` and ``simple/index.json`` for every project name."""
        names = list(names)
        self.write_file("simple/index.html", render.render_simple_root_html(names), gz=True)
        self.write_file("simple/index.json", render.render_simple_root_json(names), gz=True)

    def write_home(self, stats: HomeStats) -> None:
        """``index.html``."""
        self.write_file("index.html", render.render_home(stats, self.config), gz=True)

    def write_search_index(self, entries: Iterable[SearchEntry]) -> None:
        """``packages.json``."""
        self.write_file("packages.json", render.render_search_index(entries), gz=True)

    def write_sitemaps(self, names: Iterable[str]) -> list[str]:
        """``sitemap.xml`` and its parts; stale parts from a bigger site are removed."""
        files = render.render_sitemaps(names, self.config)
        written = set()
        for path, data in files:
            self.write_file(path, data, gz=True)
            written.add(path)
        for old in self.root.glob("sitemap*.xml"):
            if old.name not in written:
                old.unlink(missing_ok=True)
                Path(str(old) + ".gz").unlink(missing_ok=True)
        return [p for p, _ in files]

    def write_stats(self, charts: Sequence[tuple[str, str]] = ()) -> None:
        """``stats.html`` showing *charts*: (title, image path) pairs."""
        self.write_file("stats.html", render.render_stats(charts, self.config), gz=True)

    def write_static(self, charts: Sequence[tuple[str, str]] = ()) -> None:
        """Copy ``static/`` and render the FAQ, 404, search and statistics pages."""
        for source in sorted(STATIC_DIR.rglob("*")):
            if source.is_file():
                rel = source.relative_to(STATIC_DIR).as_posix()
                self.write_file(rel, source.read_bytes())
        self.write_file("faq.html", render.render_faq(self.config), gz=True)
        self.write_file("404.html", render.render_404(self.config))
        self.write_file("packages.html", render.render_search(self.config), gz=True)
        self.write_stats(charts)

    def write_log(self, build_id: int, text: str | bytes) -> Path:
        """Store a build log gzipped at :func:`layout.log_path`; an existing log is kept.

        Raises FileExistsError if the build already has a log: logs are never overwritten.
        """
        target = self.path(layout.log_path(build_id))
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        tmp = self._write_temp(target, gzip.compress(data, compresslevel=6, mtime=0))
        try:
            os.link(tmp, target)  # atomic and exclusive: fails if the log exists
        finally:
            tmp.unlink(missing_ok=True)
        return target


PageKind = Literal["simple", "project", "both"]


class PageCoalescer:
    """Merge repeated requests to rewrite the same project's pages within *window* seconds.

    The first request for a project starts its timer; later ones only widen what is to be
    written (``simple`` + ``project`` = ``both``), so a steady stream of requests still gets
    the page written every *window* seconds.  :meth:`flush` returns what is due.
    """

    def __init__(self, window: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._pending: dict[str, tuple[float, PageKind]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def request(self, name: str, kind: PageKind = "both") -> None:
        """Ask for *name*'s pages of *kind* to be written."""
        if kind not in ("simple", "project", "both"):
            raise ValueError(f"unknown page kind: {kind!r:.40}")
        old = self._pending.get(name)
        if old is None:
            self._pending[name] = (self.clock() + self.window, kind)
        else:
            due, was = old
            self._pending[name] = (due, was if was == kind else "both")

    def delete(self, name: str) -> bool:
        """Forget pending writes of *name* (it is being deleted); True if there were any."""
        return self._pending.pop(name, None) is not None

    def next_due(self) -> float | None:
        """The clock time at which the next request falls due, or None if none is pending."""
        return min((due for due, _ in self._pending.values()), default=None)

    def flush(self, *, force: bool = False) -> list[tuple[str, PageKind]]:
        """Remove and return the (name, kind) requests that are due (all with *force*)."""
        now = self.clock()
        due = [(name, kind) for name, (at, kind) in self._pending.items() if force or at <= now]
        for name, _ in due:
            del self._pending[name]
        return due
