"""A local folder of sdists and wheels as the upstream, for private farms,
offline use and the demo.

:class:`LocalDirUpstream` implements the same interface as the HTTP client, so
the same :class:`~piwheels.upstream.follower.Follower` follows a folder: each
:meth:`~LocalDirUpstream.get_root` rescans it (polling by mtime), and a
project's serial moves whenever its set of files (names, sizes, mtimes) does.

Serials are microsecond timestamps.  On the first scan of a process a project
gets the newest of its files' mtimes and the folder's mtime (which moves when
a file is added or removed), so a restart re-examines projects only if the
folder changed while we were away; a change seen later gets the scan time.
The root carries no global serial: a folder has no journal to be stale against.

:func:`write_simple_index` writes a PEP 503 (and PEP 691 JSON) index of the
folder, so builders can ``pip download --index-url file://...`` the sdists or
nginx can serve them.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from piwheels.errors import InvalidName
from piwheels.upstream.faults import FolderUnavailable
from piwheels.upstream.pages import (
    SDIST_SUFFIXES,
    FileInfo,
    ProjectInfo,
    ProjectPage,
    RootIndex,
    canonical_name,
    classify_filename,
)

log = logging.getLogger("piwheels.upstream")

MARKER = ".piwheels-local-index"
_TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", "~")


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path
    filename: str
    size: int
    mtime_ns: int
    kind: str
    version: str
    tags: str
    spelling: str  # the project name as the file spells it


def _split_name(filename: str) -> str | None:
    """The project name part of a distribution file name, or None."""
    if filename.endswith(".whl"):
        return filename.split("-", 1)[0] if filename.count("-") >= 4 else None
    lower = filename.lower()
    for suffix in SDIST_SUFFIXES:
        if lower.endswith(suffix):
            stem = filename[: -len(suffix)]
            name, sep, _ = stem.rpartition("-")
            return name if sep else None
    return None


class _HashCache:
    """sha256 of files, remembered by (path, size, mtime) so rescans are cheap."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], str] = {}

    def sha256(self, f: LocalFile) -> str:
        key = (str(f.path), f.size, f.mtime_ns)
        digest = self._cache.get(key)
        if digest is None:
            h = hashlib.sha256()
            with f.path.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
            digest = self._cache[key] = h.hexdigest()
        return digest


def scan_folder(
    path: Path, *, settle: float = 0.0, now: float | None = None, warned: set[str] | None = None
) -> tuple[dict[str, dict[str, LocalFile]], int]:
    """Distribution files under *path* by canonical project, and the newest
    directory mtime (ns).  Files younger than *settle* seconds are left for the
    next scan (they may still be being copied in); names that are not
    distributions are ignored, with one warning each (tracked in *warned*)."""
    projects: dict[str, dict[str, LocalFile]] = {}
    newest_dir = 0
    now = time.time() if now is None else now
    warned = set() if warned is None else warned
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        try:
            newest_dir = max(newest_dir, os.stat(root).st_mtime_ns)
        except OSError:
            continue
        for filename in files:
            if filename.startswith(".") or filename.endswith(_TEMP_SUFFIXES):
                continue
            full = Path(root, filename)
            spelling = _split_name(filename)
            try:
                if spelling is None:
                    raise ValueError("not a wheel or sdist name")
                name = canonical_name(spelling)
                kind, version, tags = classify_filename(filename, name)
            except (ValueError, InvalidName) as exc:
                if str(full) not in warned:
                    warned.add(str(full))
                    log.warning("local upstream: ignoring %s: %s", full, exc)
                continue
            try:
                st = full.stat()
            except OSError:
                continue  # removed while we looked
            if settle and now - st.st_mtime < settle:
                continue
            found = LocalFile(
                full, filename, st.st_size, st.st_mtime_ns, kind, version, tags, spelling
            )
            project = projects.setdefault(name, {})
            if filename not in project:  # the same file in two subfolders: first wins
                project[filename] = found
    return projects, newest_dir


class LocalDirUpstream:
    """The upstream client interface over a folder of sdists and wheels."""

    def __init__(
        self,
        path: Path | str,
        *,
        settle: float = 2.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = Path(path)
        self.settle = settle
        self.clock_ns = clock_ns
        self._files: dict[str, dict[str, LocalFile]] = {}
        self._serials: dict[str, int] = {}
        self._prints: dict[str, frozenset[tuple[str, int, int]]] = {}
        self._hashes = _HashCache()
        self._warned: set[str] = set()

    def scan(self) -> RootIndex:
        """Rescan the folder; the root listing as it now stands."""
        # A folder that is gone (an unmounted share, say) must not read as
        # "every project was removed": it is a fault to wait out.
        if not self.path.is_dir() or not os.access(self.path, os.R_OK | os.X_OK):
            raise FolderUnavailable(f"local upstream folder is missing or unreadable: {self.path}")
        projects, newest_dir = scan_folder(
            self.path, settle=self.settle, now=self.clock_ns() / 1e9, warned=self._warned
        )
        dir_us = newest_dir // 1000
        now_us = self.clock_ns() // 1000
        serials: dict[str, int] = {}
        prints: dict[str, frozenset[tuple[str, int, int]]] = {}
        for name, files in projects.items():
            fp = frozenset((f.filename, f.size, f.mtime_ns) for f in files.values())
            newest = max(f.mtime_ns for f in files.values()) // 1000
            old = self._prints.get(name)
            if old is None:
                serial = max(dir_us, newest)
                if name in self._serials:  # removed and back: never go backwards
                    serial = max(serial, self._serials[name] + 1)
            elif old != fp:
                serial = max(now_us, newest, dir_us, self._serials[name] + 1)
            else:
                serial = self._serials[name]
            serials[name] = serial
            prints[name] = fp
        self._files, self._prints = projects, prints
        self._serials.update(serials)
        spellings = {}
        for name, files in projects.items():
            spelling = min(files.values(), key=lambda f: f.mtime_ns).spelling
            if spelling != name:
                spellings[name] = spelling
        return RootIndex(None, serials, spellings)

    # ---- UpstreamClient ------------------------------------------------------

    def get_root(self, *, etag: str | None = None) -> RootIndex | None:
        return self.scan()

    def get_project(self, name: str, *, min_serial: int | None = None) -> ProjectPage | None:
        files = self._files.get(name)
        if files is None:
            return None
        infos = []
        for f in sorted(files.values(), key=lambda f: (f.mtime_ns, f.filename)):
            try:
                digest = self._hashes.sha256(f)
            except OSError:
                continue  # gone since the scan; the next scan says so
            infos.append(
                FileInfo(
                    filename=f.filename,
                    url=f.path.as_uri(),
                    version=f.version,
                    kind=f.kind,  # type: ignore[arg-type]
                    sha256=digest,
                    upload_time=datetime.fromtimestamp(f.mtime_ns / 1e9, UTC),
                    size=f.size,
                    tags=f.tags,
                )
            )
        return ProjectPage(name=name, serial=self._serials.get(name), files=tuple(infos))

    def get_info(self, name: str) -> ProjectInfo | None:
        return None

    def close(self) -> None:
        self._hashes = _HashCache()

    def write_index(self, target: Path | str) -> int:
        """Write the simple index of the folder as last scanned (see :func:`write_simple_index`)."""
        return _write_index(self._files, Path(target), self._hashes)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_symlink(source: Path, link: Path) -> None:
    relative = os.path.relpath(source, link.parent)
    try:
        if os.readlink(link) == relative:
            return
    except OSError:
        pass
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(relative)
    os.replace(tmp, link)


def write_simple_index(source: Path | str, target: Path | str, *, settle: float = 0.0) -> int:
    """Write a PEP 503 HTML (and PEP 691 JSON) index of the sdists and wheels in
    *source* into *target*: ``index.html``/``index.json`` at the root and in one
    folder per project, the files linked in by relative symlinks and listed with
    ``#sha256=``.  Serve *target* with nginx, or give pip
    ``--index-url file://<target>/``.  Projects and files that left *source* are
    removed from *target* (only in a folder this function made).  Returns the
    number of projects."""
    projects, _ = scan_folder(Path(source), settle=settle)
    return _write_index(projects, Path(target), _HashCache())


def _write_index(
    projects: dict[str, dict[str, LocalFile]], target: Path, hashes: _HashCache
) -> int:
    target.mkdir(parents=True, exist_ok=True)
    marker = target / MARKER
    if not marker.exists():
        if any(p.name != MARKER for p in target.iterdir()):
            raise FileExistsError(
                f"will not write a local index into a folder it did not make: {target}"
            )
        marker.write_text("written by piwheels; files here are replaced and removed\n")
    for name, files in sorted(projects.items()):
        folder = target / name
        folder.mkdir(exist_ok=True)
        entries = []
        for f in sorted(files.values(), key=lambda f: f.filename):
            try:
                digest = hashes.sha256(f)
            except OSError:
                continue
            _atomic_symlink(f.path, folder / f.filename)
            entries.append((f.filename, digest, f.size))
        for stale in folder.iterdir():
            if stale.is_symlink() and stale.name not in files:
                stale.unlink()
        links = "".join(
            f'<a href="{quote(fn)}#sha256={digest}">{html.escape(fn)}</a><br>\n'
            for fn, digest, _ in entries
        )
        _atomic_write(
            folder / "index.html",
            (
                '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" '
                f'content="1.0"><title>Links for {name}</title></head>\n<body>'
                f"<h1>Links for {name}</h1>\n{links}</body></html>\n"
            ).encode(),
        )
        _atomic_write(
            folder / "index.json",
            json.dumps(
                {
                    "meta": {"api-version": "1.1"},
                    "name": name,
                    "files": [
                        {"filename": fn, "url": quote(fn), "hashes": {"sha256": d}, "size": s}
                        for fn, d, s in entries
                    ],
                    "versions": sorted({f.version for f in files.values()}),
                }
            ).encode(),
        )
    for folder in target.iterdir():
        if folder.is_dir() and not folder.is_symlink() and folder.name not in projects:
            shutil.rmtree(folder)
    names = sorted(projects)
    anchors = "".join(f'<a href="{n}/">{n}</a><br>\n' for n in names)
    _atomic_write(
        target / "index.html",
        (
            '<!DOCTYPE html>\n<html><head><meta name="pypi:repository-version" content="1.0">'
            f"<title>Simple index</title></head>\n<body>\n{anchors}</body></html>\n"
        ).encode(),
    )
    _atomic_write(
        target / "index.json",
        json.dumps(
            {"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}
        ).encode(),
    )
    return len(projects)
