"""``piw-audit``: compare the output folder with the database, and repair what is safe.

It reads the database (``[database] dsn``) and the output folder directly,
so it works with the master stopped.  It reports:

* ``missing``: a file the database lists is not in the folder;
* ``size`` / ``hash``: a listed file has the wrong size or SHA-256;
* ``metadata-missing`` / ``metadata-hash``: its PEP 658 ``.metadata`` is
  missing or is not what the database recorded;
* ``extra``: a file in a project's folder that the database does not list;
* ``extra-project``: a project folder for a project the database does not know;
* ``broken-link``: an alias link pointing nowhere;
* ``page-missing`` / ``page-stale``: a published project's pages are missing,
  or older than its last recorded change.

``--fix`` repairs what is safe: extra files, folders and broken links are
moved to a quarantine folder (never deleted, never anything the database
lists), and missing or stale pages are rewritten by asking the master through
the admin socket.  Missing and damaged files are only reported: they need a
rebuild (``piw-remove --builds``) or an import.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from ..cli import Command
from ..db import admin as db_admin
from ..db import figures
from ..db import packages as db_packages
from ..errors import ConfigError
from ..filetransfer import sha256_of
from ..settings import Settings
from .client import AdminClient, add_timeout_option

__all__ = ["COMMAND", "Problem", "audit", "fix", "main"]

#: Pages every published project has (relative to its folders).
SIMPLE_PAGES = ("index.html", "index.json")
PROJECT_PAGES = ("index.html", "json/index.json")
#: Files in a project's simple folder that are pages, not wheels.
_PAGE_FILES = {"index.html", "index.json", "index.html.gz", "index.json.gz"}


@dataclass(frozen=True)
class Problem:
    """One difference between the output folder and the database."""

    kind: str
    path: str  # relative to the output folder
    detail: str = ""
    package: str | None = None

    def __str__(self) -> str:
        return f"{self.kind:17} {self.path}" + (f": {self.detail}" if self.detail else "")


def _files(conn: Connection, output: Path, hashes: bool) -> Iterable[Problem]:
    for f in db_admin.published_files(conn):
        rel = f"simple/{f.package}/{f.filename}"
        path = output / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            yield Problem("missing", rel, f"{f.size} bytes listed", f.package)
            continue
        if size != f.size:
            yield Problem("size", rel, f"{size} bytes, the database says {f.size}", f.package)
        elif hashes and sha256_of(path)[1] != f.sha256:
            yield Problem("hash", rel, f"sha256 differs from {f.sha256}", f.package)
        if f.metadata_sha256 is not None:
            meta = output / f"{rel}.metadata"
            if not meta.exists():
                yield Problem("metadata-missing", f"{rel}.metadata", "", f.package)
            elif hashes and sha256_of(meta)[1] != f.metadata_sha256:
                yield Problem("metadata-hash", f"{rel}.metadata", "", f.package)


def _extras(conn: Connection, output: Path) -> Iterable[Problem]:
    known = set(db_packages.list_packages(conn, live_only=False))
    listed: dict[str, set[str]] = {}
    for f in db_admin.published_files(conn):
        listed.setdefault(f.package, set()).add(f.filename)
    for top in ("simple", "project"):
        folder = output / top
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            rel = f"{top}/{entry.name}"
            if entry.name.startswith("."):
                continue  # a page being written right now
            if entry.is_symlink():
                if not entry.exists():
                    yield Problem("broken-link", rel, f"points to {os.readlink(entry)}")
                continue
            if not entry.is_dir():
                if top == "simple" and entry.name in _PAGE_FILES:
                    continue
                if top == "simple":
                    yield Problem("extra", rel, "not a page of the index")
                continue
            if entry.name not in known:
                yield Problem("extra-project", rel, "the database has no such project")
                continue
            if top != "simple":
                continue
            names = listed.get(entry.name, set())
            for item in sorted(entry.iterdir()):
                if item.name.startswith(".") or item.name in _PAGE_FILES:
                    continue
                wheel = item.name.removesuffix(".metadata")
                if wheel not in names or item.is_dir():
                    yield Problem("extra", f"{rel}/{item.name}", "not listed", entry.name)


def _pages(conn: Connection, output: Path) -> Iterable[Problem]:
    changes = db_admin.last_changes(conn)
    for name in figures.published_names(conn):
        changed = changes.get(name)
        paths = [f"simple/{name}/{p}" for p in SIMPLE_PAGES]
        paths += [f"project/{name}/{p}" for p in PROJECT_PAGES]
        for rel in paths:
            try:
                mtime = (output / rel).stat().st_mtime
            except FileNotFoundError:
                yield Problem("page-missing", rel, "", name)
                continue
            written = datetime.fromtimestamp(mtime, UTC)
            if changed is not None and written < changed:
                yield Problem("page-stale", rel, f"written {written:%Y-%m-%d %H:%M:%S}, "
                              f"changed {changed:%Y-%m-%d %H:%M:%S}", name)  # fmt: skip
    if not (output / "simple/index.html").exists():
        yield Problem("page-missing", "simple/index.html", "the root index")


def audit(conn: Connection, output: Path, *, hashes: bool = True) -> list[Problem]:
    """Every difference between *output* and the database."""
    out = list(_files(conn, output, hashes))
    out += _extras(conn, output)
    out += _pages(conn, output)
    return out


def fix(
    problems: Iterable[Problem],
    output: Path,
    quarantine: Path,
    rebuild: Callable[[str, str | None], None],
) -> tuple[list[str], list[Problem]]:
    """Repair what is safe; return (what was done, problems left)."""
    done: list[str] = []
    left: list[Problem] = []
    pages: set[str] = set()
    root = False
    for problem in problems:
        if problem.kind in ("extra", "extra-project", "broken-link"):
            source = output / problem.path
            target = quarantine / problem.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            done.append(f"moved {problem.path} to {target}")
        elif problem.kind in ("page-missing", "page-stale"):
            if problem.package is None:
                root = True
            else:
                pages.add(problem.package)
        else:
            left.append(problem)
    for name in sorted(pages):
        rebuild("project", name)
        done.append(f"asked the master to rewrite the pages of {name}")
    if root:
        rebuild("root", None)
        done.append("asked the master to rewrite the root index")
    return done, left


def _url(dsn: str) -> str:
    if dsn.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + dsn.split("://", 1)[1]
    if dsn.startswith("postgresql+"):
        return dsn
    raise ConfigError(f"[database] dsn must be a postgresql:// URL, not {dsn!r:.60}")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fix", action="store_true", help="repair what is safe to repair")
    parser.add_argument(
        "--quick", action="store_true", help="compare sizes only (no SHA-256 of every file)"
    )
    parser.add_argument(
        "--quarantine",
        type=Path,
        metavar="DIR",
        help="where --fix moves extra files [default: <output_path>.quarantine/<time>]",
    )
    add_timeout_option(parser)


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-audit."""
    output = Path(settings.master.output_path)
    if not output.is_dir():
        raise ConfigError(f"[master] output_path: {output} is not a folder")
    engine = create_engine(_url(settings.database.dsn))
    try:
        with engine.connect() as conn:
            problems = audit(conn, output, hashes=not args.quick)
    finally:
        engine.dispose()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) found")
    if not args.fix or not problems:
        return 1 if problems else 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    quarantine = args.quarantine or output.with_name(f"{output.name}.quarantine") / stamp
    client: AdminClient | None = None

    def rebuild(part: str, package: str | None) -> None:
        nonlocal client
        if client is None:
            client = AdminClient(settings.master.admin_endpoint, timeout=args.timeout)
        client.request("REBUILD", {"part": part, "package": package})

    try:
        done, left = fix(problems, output, quarantine, rebuild)
    finally:
        if client is not None:
            client.close()
    for line in done:
        print(line)
    print(f"{len(left)} problem(s) left that need a rebuild or an import")
    return 1 if left else 0


COMMAND = Command(
    run_audit,
    prog="piw-audit",
    description="Compare the output folder with the database: missing, extra and damaged "
    "files, and missing or stale pages. --fix repairs what is safe.",
    sections=("database", "master"),
    add_arguments=_arguments,
    epilog="Exit status: 0 no problems (or all fixed), 1 problems remain, 69 master not "
    "running (--fix rewriting pages), 78 bad configuration.",
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
