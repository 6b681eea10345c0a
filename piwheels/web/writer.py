"""Write the site to the output folder: every file atomically, every deletion complete.

Each file is written under a name nginx does not serve, given mode 0644 (nginx workers run as
another user), optionally fsynced, and atomically put in place of the old one, so nginx never
serves a partial file.  Where the file system allows (``renameat2(RENAME_EXCHANGE)`` and file
leases: ext4, xfs, tmpfs), a page that already exists is replaced by writing into a *spare*
file in the writer's private folder ``.spare/<pid>-<n>/`` (mode 0700; the shipped nginx
configuration refuses ``/.spare/`` too) and exchanging the two names; the page's old inode
becomes the next spare.  Creating an inode is the dearest step of a write on a busy ext4
(hundreds of microseconds, against tens for the rest), and a rewrite then creates none.  A
spare is reused only when a write lease says no other process has it open (an nginx worker
still sending the old bytes keeps them) and it has no other link; otherwise a new one is made.
Elsewhere (no exchange or no leases) a temporary file in the page's directory is renamed over
the page.  :meth:`SiteWriter.close` removes a process's spares; folders of dead processes are
cleared by the next writer.

Without *fsync* (the default, and what a full rewrite uses: one fsync per file would cost more
than the rest of the write) a page is durable only once the kernel writes it
back, within seconds.  After a power loss a page may hold its previous content (ext4 writes a
file's data before a rename that replaces another file lands, and allocates an emptied spare's
new data when it is closed, before the exchange) or, for a page written for the
first time just before, be empty; pages are derived data, and ``piw-rebuild`` writes them
again.  A running system never sees anything but whole pages.

Index pages larger than ``gzip_threshold`` get a precompressed ``.gz`` twin for nginx's
``gzip_static`` where one pays: the simple pages, which every pip and uv run fetches, and the
site-wide pages.  The project page and its JSON API get none unless *project_twins* is set:
they are read far less than they are rewritten (every build), and each extra file costs an
inode, the dearest step of a write; nginx compresses them on the fly.  A twin that would go
stale is removed.  Twins are made with zlib at ``gzip_level`` (1 by default: on these pages,
mostly hex hashes, level 6 saves under a tenth of the bytes for about twice the time;
``bench/bench_site.py`` prints the figures).

:meth:`SiteWriter.write_all` rewrites many projects, in a pool of processes when asked: the
parent only hands out chunks; each worker renders and writes its projects itself.

:class:`PageCoalescer` is the pure logic the page writer task uses to merge bursts of requests
for the same project.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gzip
import heapq
import itertools
import multiprocessing
import multiprocessing.util
import os
import re
import shutil
import signal
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

from piwheels.web import layout, render
from piwheels.web.gcpause import paused_gc
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

#: The folder under the output path holding each writing process's spare inodes.
SPARE_DIR = ".spare"
#: Spares a process keeps at most (more are unlinked: a few suffice, readers release fast).
SPARES_KEPT = 32


class _Spares:
    """One process's spare files: *dir* is private to it, *pool* holds their paths."""

    def __init__(self, directory: str) -> None:
        self.pid = os.getpid()
        self.dir = directory
        self.pool: deque[str] = deque()
        self.usable = True


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # pragma: no cover - glibc has had it since 2.28
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _load_linkat() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).linkat
    except (AttributeError, OSError):  # pragma: no cover - every libc has it
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_renameat2 = _load_renameat2()
_linkat = _load_linkat()
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_RENAME_EXCHANGE = 2
_TMPFILE_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the names *a* and *b* (both must exist); False if that failed
    (``ctypes.get_errno()`` says why)."""
    if _renameat2 is None:  # pragma: no cover
        ctypes.set_errno(errno.ENOSYS)
        return False
    return _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _clear_dead_spares(top: str) -> None:
    """Remove the spare folders of processes that are gone (named ``<pid>-<n>``)."""
    try:
        entries = os.listdir(top)
    except FileNotFoundError:
        return
    for entry in entries:
        pid = entry.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(f"{top}/{entry}", ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class SiteWriter:
    """Writes pages and files under *output_path* (created if missing).

    *fsync* makes every write durable before its rename; *gzip_threshold* and *gzip_level*
    govern the ``.gz`` twins, and *project_twins* whether the project page and JSON API get
    them; with *skip_unchanged* (the default) a file that already holds exactly the new bytes
    (and whose twin is right) is left alone.
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        config: SiteConfig | None = None,
        *,
        fsync: bool = False,
        gzip_threshold: int = 4096,
        gzip_level: int = 1,
        skip_unchanged: bool = True,
        project_twins: bool = False,
        reuse_inodes: bool = True,
    ) -> None:
        if not 1 <= gzip_level <= 9:
            raise ValueError(f"gzip level must be 1 to 9: {gzip_level!r:.20}")
        self.root = Path(output_path)
        self.config = config or SiteConfig()
        self.fsync = fsync
        self.gzip_threshold = gzip_threshold
        self.gzip_level = gzip_level
        self.skip_unchanged = skip_unchanged
        self.project_twins = project_twins
        self.reuse_inodes = reuse_inodes and _renameat2 is not None
        # New files are made nameless and linked in (see _new_file) until that proves
        # impossible here.
        self._tmpfiles = _linkat is not None and hasattr(os, "O_TMPFILE")
        self._spares: _Spares | None = None
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._root = str(self.root)

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
        self._write_page(str(target), data, True if gz else None)
        return target

    def gzip(self, data: bytes) -> bytes:
        """*data* as a gzip file at ``gzip_level``, always the same bytes for the same data.

        zlib's gzip wrapper (wbits 31) writes a header without a name and with mtime 0.
        """
        return zlib.compress(data, self.gzip_level, 31)

    def _write_page(self, target: str, data: bytes, gz: bool | None) -> bool:
        """Write *target* and keep its twin right; False if both already were.

        *gz* True: a twin when the page reaches the threshold, none below it; False: never a
        twin (a leftover one is removed); None: twins are none of this file's business.
        """
        # Plain string paths: pathlib costs more than the system calls on this hot path.
        twin = target + ".gz"
        big = gz is True and len(data) >= self.gzip_threshold
        found = _on_disk(target, data) if self.skip_unchanged else _DIFFERS
        if found is _MISSING and self._tmpfiles:
            # A new page (first write of a project): no old inode to swap with, and a file
            # made nameless and then linked costs less than a named temporary file renamed.
            if big:
                self._new_file(twin, self.gzip(data))
            elif gz is not None:
                _unlink_quietly(twin)  # a leftover from a write cut short
            self._new_file(target, data)
            return True
        if found is _SAME:
            # Creating a file is the dearest step of a write; reading is cheap.  Skipping also
            # keeps the page's mtime, so nginx's ETag stays valid and clients get 304s.
            if gz is None:
                return False
            if big:
                if _twin_holds(twin, data):
                    return False
            elif not os.path.lexists(twin):
                return False
        if big:
            self._atomic(twin, self.gzip(data))
        elif gz is not None:
            # Gone before the page changes: nginx would go on serving a stale twin.
            try:
                os.unlink(twin)
            except FileNotFoundError:
                pass
        self._atomic(target, data)
        return True

    def _new_file(self, target: str, data: bytes) -> None:
        """Write *target*, which did not exist a moment ago: an ``O_TMPFILE`` inode in its
        directory, filled, then given its name by ``linkat``, which fails rather than replace
        a file.  Readers see no name before the whole file is there, as with a rename, and
        nothing is left behind if anything fails (a nameless inode goes when it is closed).
        Falls back to :meth:`_atomic` where the target appeared meanwhile or the file system
        (or a missing ``/proc``) does not allow it.
        """
        head = target.rpartition("/")[0]
        fd = self._open_nameless(head)
        if fd is None:
            self._atomic(target, data)
            return
        try:
            os.fchmod(fd, 0o644)  # the umask must not make it unreadable to nginx
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
            # /proc/self/fd/N is a link to the nameless inode: AT_SYMLINK_FOLLOW links the
            # inode itself (os.link would link the /proc entry).
            source = b"/proc/self/fd/%d" % fd
            assert _linkat is not None  # self._tmpfiles says so
            failed = _linkat(_AT_FDCWD, source, _AT_FDCWD, os.fsencode(target), _AT_SYMLINK_FOLLOW)
            err = ctypes.get_errno() if failed else 0
        finally:
            os.close(fd)
        if err:
            if err != errno.EEXIST:  # EEXIST: the page appeared meanwhile
                if err not in (errno.ENOENT, errno.EPERM, errno.EXDEV, errno.ENOSYS):
                    raise OSError(err, os.strerror(err), target)
                self._tmpfiles = False  # no /proc, or such links refused: named temp files
            self._atomic(target, data)

    def _open_nameless(self, head: str) -> int | None:
        """A nameless writable file in the directory *head* (made if missing), or None
        (and no more tries) where the file system has no ``O_TMPFILE``."""
        for attempt in (1, 2):
            try:
                return os.open(head, _TMPFILE_FLAGS, 0o644)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                # Only the first page of a new project pays for making its directories.
                os.makedirs(head, mode=0o755, exist_ok=True)
            except OSError as exc:
                # EOPNOTSUPP: this file system cannot; EISDIR: a kernel without O_TMPFILE.
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._tmpfiles = False
                return None
        return None  # pragma: no cover - the loop returns or raises

    def _temp_name(self, target: Path | str) -> Path:
        head, name = os.path.split(target)
        return Path(head, f".{name}.{os.getpid()}.{next(_counter)}.tmp")

    def _open_temp(self, target: str) -> tuple[str, int]:
        head, name = os.path.split(target)
        tmp = f"{head}/.{name}.{os.getpid()}.{next(_counter)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return tmp, os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            # Only the first page of a new project pays for making its directories.
            os.makedirs(head, mode=0o755, exist_ok=True)
            return tmp, os.open(tmp, flags, 0o644)

    def _write_temp(self, target: Path | str, data: bytes) -> str:
        tmp, fd = self._open_temp(str(target))
        try:
            os.fchmod(fd, 0o644)  # the umask must not make it unreadable to nginx
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        self._fill(fd, tmp, data)
        return tmp

    def _fill(self, fd: int, path: str, data: bytes) -> None:
        """Write all of *data* to *fd* (fsynced if asked) and close it; on any error the
        file at *path* is removed."""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)
            raise
        os.close(fd)

    def _atomic(self, target: Path | str, data: bytes) -> None:
        if self.reuse_inodes and self._swap_in(str(target), data):
            return
        tmp = self._write_temp(target, data)
        try:
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    # --- inode reuse: write into a spare, exchange it with the page ---------------------------

    def _spare_state(self) -> _Spares | None:
        """This process's spares, made on first use; None once reuse proved impossible here."""
        state = self._spares
        if state is not None and state.pid == os.getpid():
            return state if state.usable else None
        top = f"{self._root}/{SPARE_DIR}"
        os.makedirs(top, mode=0o700, exist_ok=True)
        _clear_dead_spares(top)
        own = f"{top}/{os.getpid()}-{next(_counter)}"
        os.mkdir(own, 0o700)  # private: nginx must never serve a spare's old bytes
        state = self._spares = _Spares(own)
        return state

    def _take_spare(self, state: _Spares) -> tuple[str, int] | None:
        """A spare opened for writing and emptied, or None if none is free now.

        A write lease is granted only when no other process has the file open: a reader
        still sending a page's old bytes (an nginx worker) keeps its inode out of reuse.
        The link count must be 1 (a hard link elsewhere, e.g. a snapshot, would see it).
        """
        pool = state.pool
        for _ in range(len(pool)):
            try:
                path = pool.popleft()
            except IndexError:
                return None
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # gone, or not a plain file: forget it
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EAGAIN:
                    pool.append(path)  # still open somewhere: try again later
                elif exc.errno in (errno.EACCES, errno.EPERM):
                    _unlink_quietly(path)  # another user's inode: let it go
                else:
                    state.usable = False  # no leases on this file system: no reuse
                    _unlink_quietly(path)
                    return None
                continue
            # The lease was only the question "is it open anywhere else?": give it back at
            # once.  Held while writing, anyone opening the spare (root reading the tree, say)
            # would break it and the kernel would send this process SIGIO, which kills it.
            # Nobody can open it afresh: its page name is gone and its folder is private.
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            if os.fstat(fd).st_nlink != 1:
                os.close(fd)
                _unlink_quietly(path)
                continue
            os.ftruncate(fd, 0)
            return path, fd
        return None

    def _swap_in(self, target: str, data: bytes) -> bool:
        """Replace *target* with *data* by exchanging it with a spare; False to fall back.

        Creating an inode is by far the dearest step of a write on a busy ext4 (hundreds of
        microseconds, against tens for everything else), so the page's new bytes go into a
        spare inode, in this writer's private folder, and ``renameat2(RENAME_EXCHANGE)`` swaps
        the two names atomically: the page's old inode becomes the next spare.  A new page
        (no old inode) takes the spare's place by a plain rename.
        """
        state = self._spare_state()
        if state is None:
            return False
        taken = self._take_spare(state)
        if taken is None:
            path = f"{state.dir}/{next(_counter)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.fchmod(fd, 0o644)  # the umask must not make it unreadable to nginx
        else:
            path, fd = taken
        self._fill(fd, path, data)
        if _exchange(path, target):
            if len(state.pool) < SPARES_KEPT:
                state.pool.append(path)
            else:
                _unlink_quietly(path)
            return True
        err = ctypes.get_errno()
        if err != errno.ENOENT:
            # The file system cannot exchange (or the target is odd): plain renames from now.
            state.usable = False
        try:
            try:
                os.replace(path, target)
            except FileNotFoundError:
                # Only the first page of a new project pays for making its directories.
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                os.replace(path, target)
        except BaseException:
            _unlink_quietly(path)
            raise
        return True

    def close(self) -> None:
        """Remove this process's spares (they are only old bytes kept for their inodes)."""
        state, self._spares = self._spares, None
        if state is not None and state.pid == os.getpid():
            shutil.rmtree(state.dir, ignore_errors=True)

    def __getstate__(self) -> dict[str, Any]:
        # Spares belong to the process that made them; another process makes its own.
        return {**self.__dict__, "_spares": None}

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
        """Write the project's simple pages, project page and JSON API, and alias links.

        nginx redirects other spellings to the canonical pages; the alias links only serve
        a tree published without the shipped nginx configuration.
        """
        name = project.name
        # layout checks the name, so these paths cannot leave the output folder.
        simple = f"{self._root}/{layout.simple_dir(name)}"
        proj = f"{self._root}/{layout.project_dir(name)}"
        write = self._write_page
        twins = self.project_twins
        write(f"{simple}/index.html", render.render_simple_project_html(project), True)
        write(f"{simple}/index.json", render.render_simple_project_json(project), True)
        write(f"{proj}/index.html", render.render_project_html(project, self.config), twins)
        write(f"{proj}/json/index.json", render.render_project_json(project, self.config), twins)
        for alias in project.aliases:
            if alias != name:
                # nginx redirects other spellings before it looks at the disk (see
                # piwheels.web.nginx); these links serve them where the tree is served
                # without that configuration (the demo's plain HTTP server).
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
            _unlink_quietly(tmp)
        return target

    # --- full rewrite -----------------------------------------------------------------------

    def write_all(
        self,
        items: Iterable[Any],
        *,
        workers: int = 1,
        load: Callable[[Any], ProjectData | None] | None = None,
        load_many: Callable[[list[Any]], Iterable[ProjectData]] | None = None,
        chunk_size: int = 50,
        progress: Callable[[int], None] | None = None,
        stop: Callable[[], bool] | None = None,
        mp_context: str = "spawn",
    ) -> int:
        """Write the pages of every project in *items*; returns how many were written.

        *items* are :class:`ProjectData`, or anything *load* turns into one (or into None to
        skip it, e.g. a project deleted meanwhile).  With ``workers > 1`` a pool of that many
        processes does the work: the parent only cuts *items* into chunks of *chunk_size* and
        hands them out, keeping two chunks per worker in flight, so a lazy *items* is read as
        the workers need it.  *load* then runs in the workers (give it a module-level function,
        e.g. one that reads the database), and sending names instead of projects spares the
        parent the pickling.  *progress* is called in the parent with the running count.  The
        first error in any worker stops the rewrite and is raised here.

        *load_many* takes the place of *load* for loaders that read a whole chunk at once
        (:class:`piwheels.db.projects.ProjectLoader` reads a chunk in a fixed number of
        queries); it returns the chunk's projects, leaving out those that are gone.  *stop*
        is asked before each chunk is handed out: once it says True no more chunks start and
        the count written so far is returned.

        The ``spawn`` start method is the default because the master has threads; ``fork`` is
        safe only in a single-threaded caller.
        """
        if workers < 1 or chunk_size < 1:
            raise ValueError(f"workers and chunk size must be positive: {workers}, {chunk_size}")
        if load is not None and load_many is not None:
            raise ValueError("give load or load_many, not both")
        chunks = _chunks(items, chunk_size, stop)
        if workers == 1:
            done = 0
            for chunk in chunks:
                done += _write_chunk_with(self, load, load_many, chunk)
                if progress:
                    progress(done)
            return done
        settings = (
            self._root,
            self.config,
            self.fsync,
            self.gzip_threshold,
            self.gzip_level,
            self.skip_unchanged,
            self.project_twins,
            self.reuse_inodes,
        )
        done = 0
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(mp_context),
            initializer=_worker_init,
            initargs=(settings, load, load_many),
        ) as pool:
            pending: set[Future[int]] = set()
            try:
                for chunk in chunks:
                    if len(pending) >= 2 * workers:
                        done += _collect(pending, progress, done)
                    pending.add(pool.submit(_worker_write, chunk))
                while pending:
                    done += _collect(pending, progress, done)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return done


# What _on_disk found at a page's path.
_MISSING, _DIFFERS, _SAME = "missing", "differs", "same"


def _on_disk(path: str, data: bytes) -> str:
    """_SAME if the file at *path* holds exactly *data*, _MISSING if there is none, else
    _DIFFERS."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _MISSING
    try:
        if os.fstat(fd).st_size != len(data):
            return _DIFFERS
        chunks = []
        while chunk := os.read(fd, len(data) + 1):
            chunks.append(chunk)
        return _SAME if b"".join(chunks) == data else _DIFFERS
    finally:
        os.close(fd)


def _twin_holds(twin: str, data: bytes) -> bool:
    """True if the gzip file *twin* was made from *data* (whatever level made it).

    Twins are only ever put in place whole (see :meth:`SiteWriter._atomic`), so a gzip
    header and a trailer holding *data*'s CRC-32 and length say which page a twin was made
    from: a twin of other bytes is told apart (CRC-32 and length both matching by chance:
    about one in 4 billion) without decompressing it, which cost five times as much.
    """
    try:
        fd = os.open(twin, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # Only the header and the trailer are read (os calls: io.open costs more here).
        size = os.fstat(fd).st_size
        return (
            size >= 18
            and os.pread(fd, 3, 0) == b"\x1f\x8b\x08"
            and os.pread(fd, 8, size - 8) == _TRAILER.pack(zlib.crc32(data), len(data) & 0xFFFFFFFF)
        )
    finally:
        os.close(fd)


_TRAILER = struct.Struct("<II")


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _chunks(
    items: Iterable[Any], size: int, stop: Callable[[], bool] | None = None
) -> Iterator[list[Any]]:
    it = iter(items)
    while not (stop is not None and stop()) and (chunk := list(itertools.islice(it, size))):
        yield chunk


def _collect(pending: set[Future[int]], progress: Callable[[int], None] | None, done: int) -> int:
    """Wait for at least one chunk; return how many projects the finished chunks wrote."""
    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
    count = 0
    for future in finished:
        pending.discard(future)
        count += future.result()  # raises the worker's error here
        if progress:
            progress(done + count)
    return count


_Load = Callable[[Any], ProjectData | None]
_LoadMany = Callable[[list[Any]], Iterable[ProjectData]]


def _write_chunk_with(
    writer: SiteWriter, load: _Load | None, load_many: _LoadMany | None, chunk: list[Any]
) -> int:
    # The chunk's rows and pages form no cycles and are gone when it is done: collections
    # meanwhile would only walk them again and again (see piwheels.web.gcpause).  The
    # loaded projects live only in _write_items' frame, so they are freed before collection
    # resumes (alive then, the young collection the next allocation sets off walks them all).
    with paused_gc():
        return _write_items(writer, load, load_many(chunk) if load_many is not None else chunk)


def _write_items(writer: SiteWriter, load: _Load | None, loaded: Iterable[Any]) -> int:
    count = 0
    for item in loaded:
        project = load(item) if load is not None else item
        if project is None:
            continue
        if not isinstance(project, ProjectData):
            raise TypeError(f"not a ProjectData: {type(project).__name__}")
        writer.write_project(project)
        count += 1
    return count


# Each pool worker keeps its own writer (and its own template and escaping caches).
_worker_state: tuple[SiteWriter, _Load | None, _LoadMany | None] | None = None


def _worker_init(
    settings: tuple[str, SiteConfig, bool, int, int, bool, bool, bool],
    load: _Load | None,
    load_many: _LoadMany | None,
) -> None:
    global _worker_state
    # Ctrl-C reaches the whole process group; the parent stops the pool (see _site_init).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root, config, fsync, threshold, level, skip, twins, reuse = settings
    writer = SiteWriter(
        root,
        config,
        fsync=fsync,
        gzip_threshold=threshold,
        gzip_level=level,
        skip_unchanged=skip,
        project_twins=twins,
        reuse_inodes=reuse,
    )
    # The worker's spares go when it exits (multiprocessing runs these, not atexit).
    multiprocessing.util.Finalize(writer, writer.close, exitpriority=10)
    _worker_state = (writer, load, load_many)


def _worker_write(chunk: list[Any]) -> int:
    if _worker_state is None:  # pragma: no cover - the pool always runs the initializer
        raise RuntimeError("page writer worker not initialised")
    writer, load, load_many = _worker_state
    return _write_chunk_with(writer, load, load_many, chunk)


PageKind = Literal["simple", "project", "both"]


class PageCoalescer:
    """Merge repeated requests to rewrite the same project's pages within *window* seconds.

    A request for a project whose pages were not handed out in the last *window* seconds is
    due at once, so an idle writer starts on a finished build's pages without delay.  A request
    that arrives within *window* of the project's last hand-out waits for that window to end,
    and every further request meanwhile merges into it (kinds widen: ``simple`` + ``project``
    = ``both``).  So a burst of requests for one project is written twice at most (its first
    request at once, the rest together at the end of the window), and a steady stream is
    written once per window, never postponed forever.  :meth:`flush` returns what is due.
    """

    def __init__(self, window: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 0:
            raise ValueError(f"coalescing window must not be negative: {window!r}")
        self.window = window
        self.clock = clock
        # Pending requests: name -> (due, kind); a heap of (due, seq, name) finds the due ones
        # without scanning every pending name (entries for names since flushed are stale).
        self._pending: dict[str, tuple[float, PageKind]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        # When each recently handed-out name left, oldest first (pruned after *window*).
        self._released: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def request(self, name: str, kind: PageKind = "both") -> None:
        """Ask for *name*'s pages of *kind* to be written."""
        if kind not in ("simple", "project", "both"):
            raise ValueError(f"unknown page kind: {kind!r:.40}")
        old = self._pending.get(name)
        if old is not None:
            due, was = old
            self._pending[name] = (due, was if was == kind else "both")
            return
        now = self.clock()
        self._prune(now)
        last = self._released.get(name)
        due = now if last is None else max(now, last + self.window)
        self._pending[name] = (due, kind)
        heapq.heappush(self._heap, (due, next(self._seq), name))

    def delete(self, name: str) -> bool:
        """Forget pending writes of *name* (it is being deleted); True if there were any."""
        return self._pending.pop(name, None) is not None

    def next_due(self) -> float | None:
        """The clock time at which the next request falls due, or None if none is pending."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def flush(self, *, force: bool = False) -> list[tuple[str, PageKind]]:
        """Remove and return the (name, kind) requests that are due (all with *force*),
        earliest first."""
        now = self.clock()
        due: list[tuple[str, PageKind]] = []
        heap = self._heap
        while heap and (force or heap[0][0] <= now):
            at, _, name = heapq.heappop(heap)
            entry = self._pending.get(name)
            if entry is None or entry[0] != at:
                continue  # deleted, or already handed out
            del self._pending[name]
            due.append((name, entry[1]))
            # Re-insert so the dict stays in release order for _prune.
            self._released.pop(name, None)
            self._released[name] = now
        return due

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            at, _, name = heap[0]
            entry = self._pending.get(name)
            if entry is not None and entry[0] == at:
                return
            heapq.heappop(heap)

    def _prune(self, now: float) -> None:
        """Forget hand-outs older than the window (they no longer delay a request)."""
        released = self._released
        while released:
            name = next(iter(released))
            if now - released[name] < self.window:
                return
            del released[name]
