"""The PostgreSQL :class:`~piwheels.upstream.follower.UpstreamStore`.

What the follower learns becomes rows: a new project a ``packages`` row (and
its spellings ``package_aliases``), a new release a ``versions`` row through the
batch API (with ``has_sdist``, the upstream wheel tags and whether they already
serve every build target, Requires-Python and the release time) plus its
``upstream_files``; yanks, status, summary and spellings update those rows,
and the build queue follows each change (the data layer keeps it current).

Every project's events, its serial and its removal from the todo are one
transaction, so a crash never leaves a project half-recorded nor recorded and
still in the todo.  With ``batch_size`` above 1 several projects share a
transaction (all of them or none: each stays atomic; a failed batch is retried
one project at a time, so one bad project cannot hold the others back).
Nothing is visible to other connections before :meth:`DbUpstreamStore.flush`,
which every reading method calls first.

Deletions upstream are tombstoned at once (``removed_at``: the queue drops the
releases, the root index drops the project) and listed in
``upstream_removals``; :meth:`DbUpstreamStore.sweep_removals` carries them out
once no build of them is in flight (a build finishing for a purged release
would have nowhere to go): the release's rows are purged and the page writer
asked for ``DELETE_VERSION``, or the project's releases are purged (its row and
spellings stay, which ``DELETE_PACKAGE`` needs to find the alias links) and the
page writer asked for ``DELETE_PACKAGE``.

Page requests are kept durably in ``rewrites_pending`` in the same transaction
and handed to the caller with :meth:`DbUpstreamStore.take_requests`; the caller
confirms with :meth:`DbUpstreamStore.requests_sent`, so a crash between commit
and send loses no page (see :meth:`DbUpstreamStore.unsent_requests`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from piwheels.errors import InvalidName, UpstreamError
from piwheels.upstream.events import (
    Event,
    FilesAdded,
    FilesRemoved,
    KnownProject,
    KnownRelease,
    NewAlias,
    NewProject,
    NewRelease,
    ProjectRemoved,
    ProjectStatus,
    ReleaseRemoved,
    Summary,
    Unyank,
    UpstreamFile,
    Yank,
)

from . import abis as abis_mod
from . import admin as admin_mod
from . import packages as packages_mod
from . import queue as queue_mod
from . import upstream as upstream_mod
from . import versions as versions_mod
from ._common import canonical, check_version
from .schema import PROJECT_STATUSES

log = logging.getLogger("piwheels.upstream")


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A message for the page writer (``pages`` protocol) once a change is committed."""

    msg: str  # PROJECT, ROOT, DELETE_VERSION or DELETE_PACKAGE
    package: str | None = None
    version: str | None = None

    @property
    def data(self) -> dict[str, str] | None:
        if self.package is None:
            return None
        if self.version is None:
            return {"package": self.package}
        return {"package": self.package, "version": self.version}


@dataclass
class _Item:
    name: str
    events: list[Event]
    serial: int | None


@dataclass
class _Plan:
    """One batch turned into the statements that record it."""

    projects: dict[str, str] = field(default_factory=dict)  # new: name -> display
    aliases: dict[str, str] = field(default_factory=dict)  # spelling -> name
    summaries: dict[str, str] = field(default_factory=dict)
    releases: list[NewRelease] = field(default_factory=list)
    files: list[tuple[str, str, UpstreamFile]] = field(default_factory=list)
    later: list[Event] = field(default_factory=list)  # one statement or a few each
    serials: dict[str, int] = field(default_factory=dict)  # 0: forget
    done: list[str] = field(default_factory=list)
    pages: set[str] = field(default_factory=set)
    root: bool = False


def _check(item: _Item) -> None:
    """Refuse an event list that is not about *item.name* (before anything is written)."""
    if canonical(item.name) != item.name:
        raise InvalidName(f"upstream store: {item.name!r:.80} is not a canonical project name")
    for event in item.events:
        if event.name != item.name:
            raise InvalidName(
                f"upstream store: event {type(event).__name__} names {event.name!r:.80}, "
                f"applied to {item.name}"
            )
        version = getattr(event, "version", None)
        if version is not None:
            check_version(version)
        if isinstance(event, ProjectStatus) and event.status not in PROJECT_STATUSES:
            raise InvalidName(f"{item.name}: unknown project status {event.status!r:.40}")
        if isinstance(event, NewAlias) and canonical(event.spelling) != item.name:
            raise InvalidName(f"{item.name}: {event.spelling!r:.80} is not a spelling of it")


class DbUpstreamStore:
    """Keeps the follower's place and what it learns in PostgreSQL (*engine*)."""

    def __init__(self, engine: Engine, *, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self._pending: list[_Item] = []
        self._pending_names: set[str] = set()
        self._requests: list[PageRequest] = []
        # The todo's projects that are not known here (no live row), read once
        # per pass: get_known answers None for them without a query, which is
        # most of the work when a pass meets many new projects.
        self._absent: set[str] = set()
        self.applied = 0  # projects committed by this store

    # ---- UpstreamStore ---------------------------------------------------------

    def get_last_serial(self) -> int | None:
        self.flush()
        with self.engine.connect() as conn:
            row = conn.execute(text("SELECT last_serial, updated_at FROM upstream_state")).one()
        return None if row.updated_at is None else int(row.last_serial)

    def get_project_serials(self) -> Mapping[str, int]:
        """Projects seen upstream (a serial above 0) and not removed.

        Projects only an operator added (serial 0) are left out, so a private
        project that upstream does not list is never taken for a deleted one.
        """
        self.flush()
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT name, upstream_serial FROM packages "
                    "WHERE removed_at IS NULL AND upstream_serial > 0"
                )
            )
            return {name: int(serial) for name, serial in rows}

    def get_known(self, name: str) -> KnownProject | None:
        if name in self._pending_names:
            self.flush()
        if name in self._absent:
            return None
        with self.engine.connect() as conn:
            return self._known(conn, name)

    @staticmethod
    def _known(conn: Connection, name: str) -> KnownProject | None:
        row = conn.execute(
            text(
                """
                SELECT p.upstream_serial, p.status, p.status_reason, p.summary,
                       ARRAY(SELECT alias FROM package_aliases a WHERE a.package = p.name)
                           AS aliases
                FROM packages p WHERE p.name = :n AND p.removed_at IS NULL
                """
            ),
            {"n": name},
        ).first()
        if row is None:
            return None
        releases: dict[str, tuple[set[str], bool, str]] = {}
        for version, yanked, reason, filename in conn.execute(
            text(
                """
                SELECT v.version, v.yanked, v.yank_reason, f.filename
                FROM versions v LEFT JOIN upstream_files f
                  ON f.package = v.package AND f.version = v.version
                WHERE v.package = :n AND v.removed_at IS NULL
                """
            ),
            {"n": name},
        ):
            entry = releases.setdefault(version, (set(), yanked, reason))
            if filename is not None:
                entry[0].add(filename)
        return KnownProject(
            name=name,
            serial=int(row.upstream_serial) or None,
            releases={
                v: KnownRelease(v, frozenset(files), yanked, reason or None)
                for v, (files, yanked, reason) in releases.items()
            },
            status=row.status,
            status_reason=row.status_reason or None,
            aliases=frozenset(row.aliases),
            summary=row.summary,
        )

    def apply(self, events: Sequence[Event], name: str, serial: int | None) -> None:
        item = _Item(name, list(events), serial)
        _check(item)
        self._pending.append(item)
        self._pending_names.add(name)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def save_todo(self, target_serial: int, names: Mapping[str, int]) -> None:
        self.flush()
        buf = io.StringIO()
        for name, serial in names.items():
            canonical(name)  # names come from the root, checked there; a tab would break COPY
            buf.write(f"{name}\t{int(serial)}\n")
        buf.seek(0)
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM upstream_todo"))
            cursor = conn.connection.cursor()
            try:
                cursor.copy_expert("COPY upstream_todo (package, serial) FROM STDIN", buf)
            finally:
                cursor.close()
            conn.execute(text("UPDATE upstream_state SET todo_serial = :s"), {"s": target_serial})
            self._absent = self._absent_in_todo(conn)

    @staticmethod
    def _absent_in_todo(conn: Connection) -> set[str]:
        rows = conn.execute(
            text(
                "SELECT t.package FROM upstream_todo t LEFT JOIN packages p "
                "ON p.name = t.package AND p.removed_at IS NULL WHERE p.name IS NULL"
            )
        )
        return {name for (name,) in rows}

    def load_todo(self) -> tuple[int, dict[str, int]] | None:
        self.flush()
        with self.engine.connect() as conn:
            target = conn.execute(text("SELECT todo_serial FROM upstream_state")).scalar_one()
            if target is None:
                return None
            rows = conn.execute(text("SELECT package, serial FROM upstream_todo"))
            todo = {name: int(serial) for name, serial in rows}
            self._absent = self._absent_in_todo(conn)
            return int(target), todo

    def set_last_serial(self, serial: int) -> None:
        self.flush()
        with self.engine.begin() as conn:
            upstream_mod.set_serial(conn, serial)
            conn.execute(text("UPDATE upstream_state SET todo_serial = NULL"))
            conn.execute(text("DELETE FROM upstream_todo"))
        self._absent = set()

    # ---- batching --------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Projects applied but not yet committed."""
        return len(self._pending)

    def flush(self) -> None:
        """Commit every buffered project (one transaction; one each if that fails)."""
        if not self._pending:
            return
        items, self._pending = self._pending, []
        self._pending_names = set()
        try:
            self._commit(items)
            return
        except OperationalError:
            # The database is unreachable: nothing was committed and the todo
            # still holds these projects; the next pass does them again.
            raise
        except DBAPIError as err:
            if len(items) == 1:
                first = str(err).splitlines()[0][:200]
                raise UpstreamError(
                    f"upstream store: could not record {items[0].name}: {first}"
                ) from err
            log.warning("upstream store: a batch of %d failed; retrying one by one", len(items))
        failed: list[tuple[str, Exception]] = []
        for item in items:
            try:
                self._commit([item])
            except OperationalError:
                raise
            except DBAPIError as err:
                failed.append((item.name, err))
        if failed:
            name, cause = failed[0]
            first = str(cause).splitlines()[0][:200]
            raise UpstreamError(
                f"upstream store: could not record {len(failed)} project(s), first {name}: {first}"
            ) from cause

    def _commit(self, items: list[_Item]) -> None:
        plan = self._plan(items)
        with self.engine.begin() as conn:
            self._write(conn, plan)
        self.applied += len(items)
        self._absent.difference_update(plan.projects)
        self._requests.extend(PageRequest("PROJECT", name) for name in sorted(plan.pages))
        if plan.root:
            self._requests.append(PageRequest("ROOT"))

    @staticmethod
    def _plan(items: list[_Item]) -> _Plan:
        plan = _Plan()
        for item in items:
            name = item.name
            plan.done.append(name)
            plan.serials[name] = item.serial if item.serial is not None else 0
            removed = False
            for event in item.events:
                if isinstance(event, NewProject):
                    plan.projects[name] = event.display_name
                elif isinstance(event, NewAlias):
                    plan.aliases[event.spelling] = name
                elif isinstance(event, Summary):
                    plan.summaries[name] = event.summary
                elif isinstance(event, NewRelease):
                    plan.releases.append(event)
                    plan.files.extend((name, event.version, f) for f in event.files)
                elif isinstance(event, FilesAdded):
                    plan.files.extend((name, event.version, f) for f in event.files)
                    plan.later.append(event)
                else:
                    plan.later.append(event)
                    if isinstance(event, ProjectRemoved):
                        removed = True
                        plan.root = True
                    elif isinstance(event, ProjectStatus):
                        plan.root = True
            if item.events and not removed:
                plan.pages.add(name)
            if removed:
                plan.pages.discard(name)
        return plan

    def _write(self, conn: Connection, plan: _Plan) -> None:
        if plan.projects:
            self._new_projects(conn, plan.projects)
        if plan.aliases:
            spellings = sorted(plan.aliases)
            names = [plan.aliases[s] for s in spellings]
            conn.execute(
                text(
                    """
                    INSERT INTO package_aliases (alias, package)
                    SELECT * FROM unnest(CAST(:a AS text[]), CAST(:n AS text[]))
                    ON CONFLICT (alias) DO UPDATE SET last_seen = now()
                    """
                ),
                {"a": spellings, "n": names},
            )
            # The newest spelling upstream uses is the display name.
            conn.execute(
                text(
                    """
                    UPDATE packages p SET display_name = t.alias
                    FROM unnest(CAST(:a AS text[]), CAST(:n AS text[])) AS t(alias, name)
                    WHERE p.name = t.name AND p.display_name <> t.alias
                    """
                ),
                {"a": spellings, "n": names},
            )
        if plan.summaries:
            names = sorted(plan.summaries)
            conn.execute(
                text(
                    """
                    UPDATE packages p SET summary = t.summary
                    FROM unnest(CAST(:n AS text[]), CAST(:s AS text[])) AS t(name, summary)
                    WHERE p.name = t.name
                    """
                ),
                {"n": names, "s": [plan.summaries[n] for n in names]},
            )
        targets: list[abis_mod.Abi] | None = None
        serves: dict[tuple[str, ...], bool] = {}

        def wheel_serves(tags: tuple[str, ...]) -> bool:
            nonlocal targets
            if not tags:
                return False
            if tags not in serves:
                if targets is None:
                    targets = abis_mod.list_abis(conn, enabled_only=True)
                serves[tags] = bool(targets) and all(
                    any(kind == "upstream_wheel" for kind, _ in abis_mod.exclusions(a, "", tags))
                    for a in targets
                )
            return serves[tags]

        if plan.releases:
            self._new_releases(conn, plan.releases, wheel_serves)
        if plan.files:
            self._add_files(conn, plan.files)
        for event in plan.later:
            self._event(conn, event, wheel_serves)
        names = list(plan.serials)
        conn.execute(
            text(
                """
                UPDATE packages p SET upstream_serial = t.serial
                FROM unnest(CAST(:n AS text[]), CAST(:s AS bigint[])) AS t(name, serial)
                WHERE p.name = t.name AND p.upstream_serial <> t.serial
                """
            ),
            {"n": names, "s": [plan.serials[n] for n in names]},
        )
        conn.execute(
            text("DELETE FROM upstream_todo WHERE package = ANY(CAST(:n AS text[]))"),
            {"n": plan.done},
        )
        if plan.pages:
            conn.execute(
                text(
                    """
                    INSERT INTO rewrites_pending (package, kind)
                    SELECT unnest(CAST(:n AS text[])), 'both'
                    ON CONFLICT (package) DO UPDATE SET kind = 'both'
                    """
                ),
                {"n": sorted(plan.pages)},
            )

    @staticmethod
    def _new_projects(conn: Connection, projects: dict[str, str]) -> None:
        names = sorted(projects)
        displays = [projects[n] for n in names]
        # A tombstone (a project upstream deleted, now created again) comes back
        # as new: live, active, and nothing left of its old upstream state.
        revived = [
            r[0]
            for r in conn.execute(
                text(
                    """
                    INSERT INTO packages (name, display_name)
                    SELECT * FROM unnest(CAST(:n AS text[]), CAST(:d AS text[]))
                    ON CONFLICT (name) DO UPDATE
                    SET removed_at = NULL, status = 'active', status_reason = '',
                        display_name = EXCLUDED.display_name, upstream_serial = 0
                    WHERE packages.removed_at IS NOT NULL
                    RETURNING name, (xmax <> 0) AS updated
                    """
                ),
                {"n": names, "d": displays},
            )
            if r[1]
        ]
        conn.execute(
            text(
                """
                INSERT INTO package_aliases (alias, package)
                SELECT * FROM unnest(CAST(:d AS text[]), CAST(:n AS text[]))
                ON CONFLICT (alias) DO NOTHING
                """
            ),
            {"n": names, "d": displays},
        )
        if revived:
            conn.execute(
                text("DELETE FROM upstream_removals WHERE package = ANY(CAST(:n AS text[]))"),
                {"n": revived},
            )
            # Its old releases stay tombstoned; those that upstream still has come
            # back with their NewRelease, the others are purged by the sweep.
            conn.execute(
                text(
                    """
                    INSERT INTO upstream_removals (package, version)
                    SELECT package, version FROM versions
                    WHERE package = ANY(CAST(:n AS text[])) AND removed_at IS NOT NULL
                    ON CONFLICT DO NOTHING
                    """
                ),
                {"n": revived},
            )
            for name in revived:
                queue_mod.update_package(conn, name)

    @staticmethod
    def _new_releases(conn: Connection, releases: list[NewRelease], wheel_serves: Any) -> None:
        rows = [
            versions_mod.NewVersion(
                package=r.name,
                version=r.version,
                released_at=r.released,
                requires_python=r.requires_python or "",
                has_sdist=r.has_sdist,
                upstream_wheel_tags=r.wheel_tags,
                upstream_wheel_serves=wheel_serves(r.wheel_tags),
            )
            for r in releases
        ]
        added = set(versions_mod.add_versions(conn, rows))
        for r, row in zip(releases, rows, strict=True):
            if (r.name, r.version) in added:
                continue
            # Known here but new upstream: added by an operator, or tombstoned
            # and published again.  Upstream's facts win; its old files go.
            admin_mod.restore_version(conn, r.name, r.version)
            conn.execute(
                text("DELETE FROM upstream_removals WHERE package = :p AND version = :v"),
                {"p": r.name, "v": r.version},
            )
            conn.execute(
                text("DELETE FROM upstream_files WHERE package = :p AND version = :v"),
                {"p": r.name, "v": r.version},
            )
            versions_mod.set_upstream(
                conn,
                r.name,
                r.version,
                requires_python=row.requires_python,
                upstream_wheel_tags=r.wheel_tags,
                upstream_wheel_serves=row.upstream_wheel_serves,
                has_sdist=r.has_sdist,
                released_at=r.released,
            )

    @staticmethod
    def _add_files(conn: Connection, files: list[tuple[str, str, UpstreamFile]]) -> None:
        conn.execute(
            text(
                """
                INSERT INTO upstream_files (package, version, filename, sha256, size)
                SELECT * FROM unnest(CAST(:p AS text[]), CAST(:v AS text[]), CAST(:f AS text[]),
                                     CAST(:h AS text[]), CAST(:s AS bigint[]))
                ON CONFLICT DO NOTHING
                """
            ),
            {
                "p": [p for p, _, _ in files],
                "v": [v for _, v, _ in files],
                "f": [f.filename for _, _, f in files],
                "h": [f.sha256 for _, _, f in files],
                "s": [f.size for _, _, f in files],
            },
        )

    @staticmethod
    def _event(conn: Connection, event: Event, wheel_serves: Any) -> None:
        name = event.name
        if isinstance(event, (FilesAdded, FilesRemoved)):
            if isinstance(event, FilesRemoved):
                conn.execute(
                    text(
                        "DELETE FROM upstream_files WHERE package = :p AND version = :v "
                        "AND filename = ANY(CAST(:f AS text[]))"
                    ),
                    {"p": name, "v": event.version, "f": list(event.filenames)},
                )
            versions_mod.set_upstream(
                conn,
                name,
                event.version,
                upstream_wheel_tags=event.wheel_tags,
                upstream_wheel_serves=wheel_serves(event.wheel_tags),
                has_sdist=event.has_sdist,
            )
        elif isinstance(event, Yank):
            versions_mod.yank_version(conn, name, event.version, event.reason or "")
        elif isinstance(event, Unyank):
            versions_mod.unyank_version(conn, name, event.version)
        elif isinstance(event, ProjectStatus):
            packages_mod.set_status(conn, name, event.status, event.reason or "")
        elif isinstance(event, ReleaseRemoved):
            info = versions_mod.get_version(conn, name, event.version)
            if info is not None and info.removed_at is None:
                versions_mod.remove_version(conn, name, event.version)
            conn.execute(
                text(
                    "INSERT INTO upstream_removals (package, version) VALUES (:p, :v) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"p": name, "v": event.version},
            )
        elif isinstance(event, ProjectRemoved):
            conn.execute(
                text(
                    "UPDATE versions SET removed_at = now() "
                    "WHERE package = :p AND removed_at IS NULL"
                ),
                {"p": name},
            )
            conn.execute(
                text(
                    "UPDATE packages SET removed_at = now() WHERE name = :p AND removed_at IS NULL"
                ),
                {"p": name},
            )
            queue_mod.update_package(conn, name)
            conn.execute(
                text(
                    "INSERT INTO upstream_removals (package, version) VALUES (:p, '') "
                    "ON CONFLICT DO NOTHING"
                ),
                {"p": name},
            )
        else:  # pragma: no cover - every kind is planned above
            raise UpstreamError(f"upstream store: unexpected event {event!r:.200}")

    # ---- page requests ----------------------------------------------------------

    def take_requests(self) -> list[PageRequest]:
        """Page requests of what was committed since the last call (oldest first)."""
        out, self._requests = self._requests, []
        return out

    def unsent_requests(self) -> list[PageRequest]:
        """PROJECT requests committed but never confirmed sent (after a crash)."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT package FROM rewrites_pending ORDER BY added_at"))
            return [PageRequest("PROJECT", name) for (name,) in rows]

    def requests_sent(self, requests: Iterable[PageRequest]) -> None:
        """The page writer has been given *requests*: forget them durably."""
        names = sorted({r.package for r in requests if r.msg == "PROJECT" and r.package})
        if names:
            with self.engine.begin() as conn:
                conn.execute(
                    text("DELETE FROM rewrites_pending WHERE package = ANY(CAST(:n AS text[]))"),
                    {"n": names},
                )

    # ---- deletions --------------------------------------------------------------

    def pending_removals(self) -> list[tuple[str, str | None]]:
        """Upstream deletions not yet carried out: (project, version or None)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT package, version FROM upstream_removals ORDER BY requested_at")
            )
            return [(p, v or None) for p, v in rows]

    def sweep_removals(self) -> list[PageRequest]:
        """Carry out the deletions no build in flight holds up; their page requests.

        Each deletion is its own transaction.  A release or project that came
        back upstream since is simply taken off the list.
        """
        out: list[PageRequest] = []
        for package, version in self.pending_removals():
            with self.engine.begin() as conn:
                request = self._remove(conn, package, version)
            if request is not None:
                out.append(request)
        return out

    @staticmethod
    def _remove(conn: Connection, package: str, version: str | None) -> PageRequest | None:
        key = {"p": package, "v": version or ""}
        # Lock the entry so two sweeps (or a restart mid-sweep) do it once.
        if (
            conn.execute(
                text(
                    "SELECT 1 FROM upstream_removals WHERE package = :p AND version = :v "
                    "FOR UPDATE SKIP LOCKED"
                ),
                key,
            ).first()
            is None
        ):
            return None
        if admin_mod.active_builds(conn, package, version):
            return None  # a build in flight must find its rows when it ends
        forget = text("DELETE FROM upstream_removals WHERE package = :p AND version = :v")
        if version is not None:
            info = versions_mod.get_version(conn, package, version)
            conn.execute(forget, key)
            if info is None:
                return None
            if info.removed_at is None:
                return None  # published again upstream
            admin_mod.purge_version(conn, package, version)
            log.info("upstream deleted %s %s: its builds and files go", package, version)
            return PageRequest("DELETE_VERSION", package, version)
        pkg = packages_mod.get_package(conn, package)
        conn.execute(forget, key)
        if pkg is None or pkg.removed_at is None:
            return None
        conn.execute(text("DELETE FROM versions WHERE package = :p"), {"p": package})
        conn.execute(text("DELETE FROM upstream_removals WHERE package = :p"), {"p": package})
        log.info("upstream deleted %s: its builds, pages and files go", package)
        return PageRequest("DELETE_PACKAGE", package)

    # ---- figures ----------------------------------------------------------------

    def lag(self) -> tuple[int | None, int]:
        """(last serial, projects still in the todo) as stored."""
        with self.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT last_serial, updated_at, (SELECT count(*) FROM upstream_todo) AS todo "
                    "FROM upstream_state"
                )
            ).one()
        return (None if row.updated_at is None else int(row.last_serial)), int(row.todo)


__all__ = ["DbUpstreamStore", "PageRequest"]
