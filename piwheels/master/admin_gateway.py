"""The admin gateway: requests from piw-add, piw-remove, piw-rebuild and piw-import.

The ``admin`` socket (ROUTER, local by default) takes one request at a time
per tool; each gets zero or more PROGRESS messages and then OK or ERROR, both
with a code (NEWPKG, UNCHANGED, NOPKG, INVALID, ...) and a one-line message.
Every request is idempotent: asking twice changes nothing the second time and
says UNCHANGED.  A malformed request is answered ERROR INVALID with the reason.

Removals are ordered so that nothing is left behind and nothing listed is
missing:

* a project: mark it removed (no more builds, off the root index), wait for
  builds in flight to end, ask the page writer to DELETE_PACKAGE (it reads the
  aliases from the database, so the rows must still be there), wait until its
  folders and alias links are gone, and only then purge the rows;
* a release: mark it removed, wait for builds in flight, purge its rows (the
  page writer's DELETE_VERSION needs the pages to no longer list it), ask for
  DELETE_VERSION, wait until the project's index no longer lists its files,
  then make sure the files are gone;
* only builds: delete the finished builds' rows (the release is queued again
  unless skipped), ask for the project's pages, wait until the index no longer
  lists the files, then delete the files and build logs.

While a removal waits the tool gets a PROGRESS message every second.

An import (IMPORT) has the file receiver EXPECT each wheel, tells the tool to
SEND it over the file socket, has the receiver VERIFY it, and once every file
is verified has each PUBLISHED and records the build, so a page never lists a
file that is not there.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import protocols
from ..db import abis as db_abis
from ..db import admin as db_admin
from ..db import builds as db_builds
from ..db import packages as db_packages
from ..db import versions as db_versions
from ..db._common import canonical, check_name, check_version
from ..db.files import Dependency, FileRecord
from ..errors import (
    BuildError,
    InvalidName,
    InvalidWheel,
    PiwheelsError,
    ProtocolError,
    TransportError,
)
from ..filetransfer import new_token
from ..tasks import Endpoint, Task
from ..transport import DEALER, PULL, PUSH, ROUTER, Context, Socket
from ..web import layout
from ..wheels import abis_served, parse_wheel_filename
from .env import MasterEnv

__all__ = ["AdminGateway"]

Peer = tuple[bytes, ...]


class _Refused(Exception):
    """Answer the request with ERROR *code*."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Removal:
    """A removal waiting for the build dispatcher or the page writer."""

    peer: Peer
    package: str
    version: str | None
    builds_only: bool
    stage: str  # "builds": builds in flight; "pages": the page writer
    started: float
    last_progress: float
    aliases: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)
    build_ids: list[int] = field(default_factory=list)
    note: str = ""


@dataclass
class _ImportFile:
    record: dict[str, Any]
    token: str
    state: str = "new"  # new, expecting, sent, verified, published
    facts: dict[str, Any] | None = None


@dataclass
class _Import:
    """An import in progress: its files' transfers, in order."""

    peer: Peer
    package: str
    version: str
    target: db_abis.Abi
    duration: timedelta
    log: str
    files: list[_ImportFile]
    last_activity: float
    failed: bool = False


class AdminGateway(Task):
    """Serves the admin tools; see the module docstring."""

    role = "admin_gateway"
    # Operators must be able to steer a paused master.
    pausable = False
    binds = (Endpoint("admin", "ROUTER", "admin", "piw-add, piw-remove, piw-rebuild, piw-import"),)
    connects = (
        Endpoint("pages", "PUSH", "pages", "asks for pages to be rewritten or deleted"),
        Endpoint("transfers", "DEALER", "transfers", "has the file receiver take imported files"),
    )

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        removal_timeout: float = 60.0,
        import_timeout: float | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.output_path = Path(env.output_path)
        self.removal_timeout = removal_timeout
        self.import_timeout = (
            env.settings.master.builder_timeout.total_seconds()
            if import_timeout is None
            else import_timeout
        )
        self.removals: list[_Removal] = []
        self.imports: dict[Peer, _Import] = {}
        self.tokens: dict[str, _Import] = {}
        # Full rewrites asked of the page writer, by number: who asked (None once gone).
        self.rewrites: dict[int, Peer | None] = {}
        self.rewrite_numbers = itertools.count(1)

        self.admin = self.socket(ROUTER, protocols.admin, name="admin")
        self.admin_address = self.admin.bind(env.addresses["admin"])
        self.register(self.admin)
        self.pages = self.socket(PUSH, reversed(protocols.pages), name="pages")
        self.pages.connect(env.addresses["pages"])
        self.transfers = self.socket(DEALER, reversed(protocols.transfers), name="transfers")
        self.transfers.connect(env.addresses["transfers"])
        self.register(self.transfers, self.handle_transfers)
        # The page writer reports full rewrites here (the address travels in ALL).
        self.rewrite_progress = self.socket(PULL, protocols.rewrite_progress, name="rewrites")
        self.rewrite_address = f"inproc://rewrite-progress-{uuid.uuid4().hex[:12]}"
        self.rewrite_progress.bind(self.rewrite_address)
        self.register(self.rewrite_progress)
        self.every(0.05, self.tick, pausable=False)

    # -- plumbing --------------------------------------------------------------------

    def _send(self, peer: Peer | None, msg: str, data: dict[str, Any]) -> bool:
        if peer is None:
            return False
        try:
            self.admin.send_msg(msg, data, peer=peer)
        except (TransportError, ProtocolError) as exc:
            self.log.warning("cannot answer %s: %s", msg, exc)
            return False
        return True

    def _ok(self, peer: Peer, code: str, message: str) -> None:
        self.log.info("%s: %s", code, message)
        self._send(peer, "OK", {"code": code, "message": message[:10_000]})

    def _error(self, peer: Peer, code: str, message: str) -> None:
        self.log.warning("refused (%s): %s", code, message)
        self._send(peer, "ERROR", {"code": code, "message": message[:10_000]})

    def _progress(self, peer: Peer | None, done: int, total: int, message: str) -> bool:
        return self._send(
            peer, "PROGRESS", {"done": done, "total": total, "message": message[:1000]}
        )

    def _page(self, msg: str, data: dict[str, Any] | None = None) -> None:
        self.pages.send_msg(msg, data)

    def _db(self) -> Any:
        return self.env.engine.begin()

    def on_bad_message(self, sock: Socket, exc: ProtocolError) -> None:
        peer = getattr(exc, "peer", None)
        if sock is self.admin and peer:
            self._error(peer, "INVALID", " ".join(str(exc).split()))

    def handle_message(self, sock: Socket, received: Any) -> None:
        """Run a request; turn refusals and data-layer errors into ERROR replies."""
        if sock is not self.admin:
            super().handle_message(sock, received)
            return
        peer = received.peer
        if peer in self.imports and received.msg != "SENT":
            self._error(peer, "BUSY", "an import is in progress on this connection")
            return
        try:
            super().handle_message(sock, received)
        except _Refused as exc:
            self._error(peer, exc.code, exc.message)
        except (InvalidName, InvalidWheel) as exc:
            self._error(peer, "INVALID", str(exc))
        except BuildError as exc:
            self._error(peer, "BUSY", str(exc))
        except SQLAlchemyError as exc:
            self.log.exception("database error")
            self._error(peer, "DATABASE", f"database error: {str(exc).splitlines()[0][:300]}")

    def tick(self) -> None:
        """Periodic work: removals waiting, stalled imports."""
        if self.removals:
            self._check_removals()
        if self.imports:
            self._expire_imports()

    # -- look-ups --------------------------------------------------------------------

    @staticmethod
    def _get_package(conn: Any, name: str) -> db_packages.Package:
        check_name(name)
        pkg = db_packages.get_package(conn, name)
        if pkg is None:
            raise _Refused("NOPKG", f"no package {canonical(name)}")
        return pkg

    @staticmethod
    def _get_version(conn: Any, package: str, version: str) -> db_versions.VersionInfo:
        check_version(version)
        info = db_versions.get_version(conn, package, version)
        if info is None:
            raise _Refused("NOVER", f"no version {version} of {canonical(package)}")
        return info

    @staticmethod
    def _get_target(conn: Any, abi: str) -> db_abis.Abi:
        """A build target by name (cp311-linux_armv7l) or by an unambiguous ABI tag (cp311)."""
        found = db_abis.get_abi(conn, abi)
        if found is not None:
            return found
        matches = [a for a in db_abis.list_abis(conn) if a.abi_tag == abi]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(a.abi for a in db_abis.list_abis(conn)) or "none"
        if matches:
            raise _Refused("NOABI", f"ABI {abi} is ambiguous; name the target (one of {known})")
        raise _Refused("NOABI", f"no build target {abi} (targets: {known})")

    # -- piw-add ---------------------------------------------------------------------

    def do_ADD_PACKAGE(self, data: dict[str, Any], peer: Peer) -> None:
        name = data["package"]
        canon = canonical(name)
        aliases = data.get("aliases") or []
        for alias in aliases:
            db_admin.check_alias(canon, alias)
        summary = data.get("summary")
        with self._db() as conn:
            pkg = db_packages.get_package(conn, canon)
            changes = []
            if pkg is None:
                db_packages.add_package(conn, name, summary or "")
            else:
                if name not in db_packages.get_aliases(conn, canon):
                    db_admin.add_alias_keep_display(conn, canon, name)
                    changes.append(f"alias {name}")
                if summary is not None and summary != pkg.summary:
                    db_packages.set_summary(conn, canon, summary)
                    changes.append("summary")
                if db_admin.restore_package(conn, canon):
                    changes.append("no longer marked removed")
            for alias in aliases:
                if db_admin.add_alias_keep_display(conn, canon, alias):
                    changes.append(f"alias {alias}")
        if pkg is None:
            self._page("PROJECT", {"package": canon})
            self._ok(peer, "NEWPKG", f"added package {canon}")
        elif changes:
            self._page("PROJECT", {"package": canon})
            self._ok(peer, "UPDPKG", f"updated package {canon}: {', '.join(changes)}")
        else:
            self._ok(peer, "UNCHANGED", f"package {canon} already exists")

    def do_ADD_VERSION(self, data: dict[str, Any], peer: Peer) -> None:
        version = check_version(data["version"])
        released = data.get("released")
        requires_python = data.get("requires_python")
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            info = db_versions.get_version(conn, pkg.name, version)
            changes = []
            if info is None:
                db_versions.add_version(
                    conn,
                    pkg.name,
                    version,
                    released_at=released,
                    requires_python=requires_python or "",
                )
            else:
                update: dict[str, Any] = {}
                if requires_python is not None and requires_python != info.requires_python:
                    update["requires_python"] = requires_python
                    changes.append("requires-python")
                if released is not None and released != info.released_at:
                    update["released_at"] = released
                    changes.append("release time")
                if update:
                    db_versions.set_upstream(conn, pkg.name, version, **update)
                if db_admin.restore_version(conn, pkg.name, version):
                    changes.append("no longer marked removed")
        label = f"{pkg.name} {version}"
        if info is None:
            self._page("PROJECT", {"package": pkg.name})
            self._ok(peer, "NEWVER", f"added version {label}")
        elif changes:
            self._page("PROJECT", {"package": pkg.name})
            self._ok(peer, "UPDVER", f"updated version {label}: {', '.join(changes)}")
        else:
            self._ok(peer, "UNCHANGED", f"version {label} already exists")

    def _skip(self, data: dict[str, Any], peer: Peer, reason: str) -> None:
        version, abi = data["version"], data["abi"]
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            what = pkg.name
            if version is not None:
                info = self._get_version(conn, pkg.name, version)
                what = f"{pkg.name} {info.version}"
            target = self._get_target(conn, abi) if abi is not None else None
            if target is not None:
                what += f" on {target.abi}"
            if version is None and target is None:
                current = pkg.skip_reason
            elif version is None and target is not None:
                current = db_admin.package_abi_skip(conn, pkg.name, target.abi)
            elif target is None:
                current = info.skip_reason
            else:
                current = db_admin.version_abi_skip(conn, pkg.name, info.version, target.abi)
            if current == reason:
                changed = False
            else:
                changed = True
                if version is None and target is None:
                    db_packages.skip_package(conn, pkg.name, reason)
                elif version is None and target is not None:
                    db_packages.skip_package_abi(conn, pkg.name, target.abi, reason)
                elif target is None:
                    db_versions.skip_version(conn, pkg.name, info.version, reason)
                else:
                    db_versions.skip_version_abi(conn, pkg.name, info.version, target.abi, reason)
        if not changed:
            state = f"skipped ({reason})" if reason else "not skipped"
            self._ok(peer, "UNCHANGED", f"{what} is already {state}")
            return
        self._page("PROJECT", {"package": pkg.name})
        if reason:
            self._ok(peer, "SKIPPED", f"{what} will not be built: {reason}")
        else:
            self._ok(peer, "UNSKIPPED", f"{what} will be built again")

    def do_SKIP(self, data: dict[str, Any], peer: Peer) -> None:
        reason = data["reason"].strip()
        if not reason:
            raise _Refused("INVALID", "a skip needs a reason")
        self._skip(data, peer, reason)

    def do_UNSKIP(self, data: dict[str, Any], peer: Peer) -> None:
        self._skip(data, peer, "")

    def do_YANK(self, data: dict[str, Any], peer: Peer) -> None:
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            info = self._get_version(conn, pkg.name, data["version"])
            changed = not info.yanked or info.yank_reason != data["reason"]
            if changed:
                db_versions.yank_version(conn, pkg.name, info.version, data["reason"])
        label = f"{pkg.name} {info.version}"
        if not changed:
            self._ok(peer, "UNCHANGED", f"{label} is already yanked")
            return
        self._page("PROJECT", {"package": pkg.name})
        self._ok(
            peer, "YANKED", f"yanked {label}" + (f": {data['reason']}" if data["reason"] else "")
        )

    def do_UNYANK(self, data: dict[str, Any], peer: Peer) -> None:
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            info = self._get_version(conn, pkg.name, data["version"])
            if info.yanked:
                db_versions.unyank_version(conn, pkg.name, info.version)
        label = f"{pkg.name} {info.version}"
        if not info.yanked:
            self._ok(peer, "UNCHANGED", f"{label} is not yanked")
            return
        self._page("PROJECT", {"package": pkg.name})
        self._ok(peer, "UNYANKED", f"{label} is no longer yanked")

    def do_ALIAS(self, data: dict[str, Any], peer: Peer) -> None:
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            new = db_admin.add_alias_keep_display(conn, pkg.name, data["alias"])
        if not new:
            self._ok(peer, "UNCHANGED", f"{data['alias']} is already an alias of {pkg.name}")
            return
        self._page("PROJECT", {"package": pkg.name})
        self._ok(peer, "ALIASED", f"{data['alias']} is now an alias of {pkg.name}")

    def do_PRIORITY(self, data: dict[str, Any], peer: Peer) -> None:
        priority = data["priority"]
        if not -(2**31) < priority < 2**31:
            raise _Refused("INVALID", f"priority {priority} is out of range")
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            if pkg.priority != priority:
                db_packages.set_priority(conn, pkg.name, priority)
        if pkg.priority == priority:
            self._ok(peer, "UNCHANGED", f"{pkg.name} already has priority {priority}")
        else:
            self._ok(peer, "PRIORITY", f"{pkg.name} priority {pkg.priority} -> {priority}")

    def do_REBUILD_REQUEST(self, data: dict[str, Any], peer: Peer) -> None:
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            if data["version"] is not None:
                vers = [self._get_version(conn, pkg.name, data["version"]).version]
            else:
                vers = [v.version for v in db_versions.get_versions(conn, pkg.name)]
            target = self._get_target(conn, data["abi"]) if data["abi"] is not None else None
            cleared = 0
            for ver in vers:
                cleared += db_builds.request_retry(
                    conn, pkg.name, ver, None if target is None else target.abi
                )
        what = pkg.name if data["version"] is None else f"{pkg.name} {vers[0]}"
        if target is not None:
            what += f" on {target.abi}"
        if not cleared:
            self._ok(peer, "UNCHANGED", f"no failed builds of {what} to retry")
            return
        self._page("PROJECT", {"package": pkg.name})
        self._ok(peer, "RETRY", f"{cleared} failed build(s) of {what} may be tried again")

    # -- piw-remove ------------------------------------------------------------------

    def do_REMOVE(self, data: dict[str, Any], peer: Peer) -> None:
        version, builds_only = data["version"], data["builds_only"]
        now = time.monotonic()
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            if version is not None:
                version = self._get_version(conn, pkg.name, version).version
            removal = _Removal(peer, pkg.name, version, builds_only, "builds", now, now)
            if builds_only:
                finished = db_admin.finished_builds(conn, pkg.name, version)
                active = db_admin.active_builds(conn, pkg.name, version)
                for build in finished:
                    db_builds.delete_build(conn, build.build_id)
                removal.build_ids = [b.build_id for b in finished]
                removal.filenames = [f for b in finished for f in b.filenames]
                if active:
                    removal.note = f"; {len(active)} build(s) in progress were left alone"
            elif version is None:
                removal.aliases = db_packages.get_aliases(conn, pkg.name)
                if pkg.removed_at is None:
                    db_packages.remove_package(conn, pkg.name)
            else:
                info = db_versions.get_version(conn, pkg.name, version)
                assert info is not None
                if info.removed_at is None:
                    db_versions.remove_version(conn, pkg.name, version)
        label = pkg.name if version is None else f"{pkg.name} {version}"
        self.log.info(
            "removing %s%s (%s)", "the builds of " if builds_only else "", label, data["reason"]
        )
        if builds_only:
            if not removal.build_ids:
                self._ok(peer, "UNCHANGED", f"{label} has no finished builds{removal.note}")
                return
            self._page("PROJECT", {"package": pkg.name})
            removal.stage = "pages"
        self.removals.append(removal)
        self._advance(removal)

    def _check_removals(self) -> None:
        for removal in list(self.removals):
            self._advance(removal)

    def _advance(self, removal: _Removal) -> None:
        """Move a removal on as far as it can go now; answer when it is done or stuck."""
        try:
            if removal.stage == "builds":
                with self.env.engine.connect() as conn:
                    busy = db_admin.active_builds(conn, removal.package, removal.version)
                if busy:
                    self._waiting(removal, f"waiting for build(s) {busy} to end")
                    return
                self._start_page_stage(removal)
            if removal.stage == "pages":
                if not self._pages_done(removal):
                    self._waiting(removal, "waiting for the page writer")
                    return
                self._finish_removal(removal)
        except (SQLAlchemyError, PiwheelsError, OSError) as exc:
            self.removals.remove(removal)
            self.log.exception("removal of %s failed", removal.package)
            self._error(removal.peer, "FAILED", f"removal of {removal.package} failed: {exc}")

    def _start_page_stage(self, removal: _Removal) -> None:
        if removal.version is None:
            self._page("DELETE_PACKAGE", {"package": removal.package})
        else:
            with self._db() as conn:
                for build in db_admin.finished_builds(conn, removal.package, removal.version):
                    removal.build_ids.append(build.build_id)
                    removal.filenames.extend(build.filenames)
                db_admin.purge_version(conn, removal.package, removal.version)
            self._page("DELETE_VERSION", {"package": removal.package, "version": removal.version})
        removal.stage = "pages"

    def _waiting(self, removal: _Removal, what: str) -> None:
        now = time.monotonic()
        if now - removal.started > self.removal_timeout:
            if removal.stage == "pages" and (removal.builds_only or removal.version):
                # The rows are gone already: the files must go too, page or no page.
                removal.note += (
                    f"; the page writer had not rewritten the pages within "
                    f"{self.removal_timeout:g} s"
                )
                self._finish_removal(removal)
                return
            self.removals.remove(removal)
            label = removal.package + (f" {removal.version}" if removal.version else "")
            self._error(
                removal.peer,
                "TIMEOUT",
                f"{label}: still {what} after {self.removal_timeout:g} s; it is marked removed "
                "and no longer built; run the removal again to finish it",
            )
            return
        if now - removal.last_progress >= 1.0:
            removal.last_progress = now
            self._progress(removal.peer, 0, 0, what)

    def _pages_done(self, removal: _Removal) -> bool:
        if removal.version is None and not removal.builds_only:
            paths = [self.output_path / layout.simple_dir(removal.package)]
            paths.append(self.output_path / layout.project_dir(removal.package))
            for alias in removal.aliases:
                if alias != removal.package and "/" not in alias:
                    paths += [self.output_path / "simple" / alias]
                    paths += [self.output_path / "project" / alias]
            return not any(os.path.lexists(p) for p in paths)
        return not (set(removal.filenames) & self._listed_files(removal.package))

    def _listed_files(self, package: str) -> set[str]:
        """File names the project's published index lists now."""
        index = self.output_path / layout.simple_dir(package) / "index.json"
        try:
            page = json.loads(index.read_bytes())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            self.log.warning("cannot read %s: %s", index, exc)
            return set()
        return {str(f.get("filename")) for f in page.get("files", []) if isinstance(f, dict)}

    def _finish_removal(self, removal: _Removal) -> None:
        self.removals.remove(removal)
        if removal.version is None and not removal.builds_only:
            with self._db() as conn:
                removal.build_ids = [
                    b.build_id for b in db_admin.finished_builds(conn, removal.package)
                ]
                db_admin.purge_package(conn, removal.package)
            what = f"removed {removal.package}, its pages and files"
        else:
            folder = self.output_path / layout.simple_dir(removal.package)
            gone = 0
            for filename in removal.filenames:
                for path in (folder / filename, folder / f"{filename}.metadata"):
                    try:
                        path.unlink()
                        gone += path.suffix == ".whl"
                    except FileNotFoundError:
                        pass
            if removal.version is not None and not removal.builds_only:
                what = f"removed {removal.package} {removal.version} and its files"
            else:
                label = removal.package + (f" {removal.version}" if removal.version else "")
                what = (
                    f"removed {len(removal.build_ids)} build(s) of {label} "
                    f"and {len(removal.filenames)} file(s)"
                )
            if gone:
                self.log.info("removed %d file(s) the page writer left", gone)
        for build_id in removal.build_ids:
            try:
                (self.output_path / layout.log_path(build_id)).unlink()
            except FileNotFoundError:
                pass
        self._ok(removal.peer, "REMOVED", what + removal.note)

    # -- piw-rebuild -----------------------------------------------------------------

    def do_REBUILD(self, data: dict[str, Any], peer: Peer) -> None:
        part, package = data["part"], data["package"]
        if part == "project":
            if package is None:
                raise _Refused("INVALID", "rebuild project needs a package")
            with self.env.engine.connect() as conn:
                pkg = self._get_package(conn, package)
            self._page("PROJECT", {"package": pkg.name})
            self._ok(peer, "REBUILT", f"asked for the pages of {pkg.name}")
            return
        if package is not None:
            raise _Refused("INVALID", f"rebuild {part} takes no package")
        if part in ("home", "search", "root"):
            self._page(part.upper())
            self._ok(peer, "REBUILT", f"asked for the {part} page")
            return
        if part == "stats":
            raise _Refused(
                "INVALID", "the statistics page is rewritten by the master on its own schedule"
            )
        number = next(self.rewrite_numbers)
        self.rewrites[number] = peer
        self._page("ALL", {"rewrite": number, "reply_to": self.rewrite_address})
        self._progress(peer, 0, 0, "asked the page writer to rewrite every page")

    def do_PROGRESS(self, data: dict[str, Any]) -> None:
        """The page writer's progress with a full rewrite: passed on to whoever asked."""
        number = data["rewrite"]
        peer = self.rewrites.get(number)
        if peer is None:
            return
        if not self._progress(peer, data["done"], data["total"], data["message"]):
            self.rewrites[number] = None  # the tool went away; the rewrite goes on

    def do_DONE(self, data: dict[str, Any]) -> None:
        """A full rewrite ended: OK or ERROR to whoever asked."""
        if data["rewrite"] not in self.rewrites:
            return
        peer = self.rewrites.pop(data["rewrite"])
        if peer is None:
            self.log.info("full rewrite (%s): %s", data["code"], data["message"])
        elif data["code"] == "REBUILT":
            self._ok(peer, "REBUILT", data["message"])
        else:
            self._error(peer, data["code"], data["message"])

    # -- piw-import ------------------------------------------------------------------

    def do_IMPORT(self, data: dict[str, Any], peer: Peer) -> None:
        if not data["files"]:
            raise _Refused("INVALID", "an import needs at least one file")
        with self._db() as conn:
            pkg = self._get_package(conn, data["package"])
            info = self._get_version(conn, pkg.name, data["version"])
            target = self._get_target(conn, data["abi"])
            names = [f["filename"] for f in data["files"]]
            if len(set(names)) != len(names):
                raise _Refused("INVALID", "the same file is listed twice")
            for rec in data["files"]:
                fn = parse_wheel_filename(rec["filename"])
                if fn.name != pkg.name:
                    raise _Refused("INVALID", f"{fn.filename} is not a wheel of {pkg.name}")
                if not abis_served(fn.tags, [(target.abi_tag, target.platform_tag)]):
                    raise _Refused("INVALID", f"{fn.filename} does not serve {target.abi}")
            known = db_admin.file_hashes(conn, names)
            for rec in data["files"]:
                sha = known.get(rec["filename"])
                if sha is not None and sha != rec["sha256"]:
                    raise _Refused(
                        "CONFLICT",
                        f"{rec['filename']} is already published with other content; "
                        "a published file is never replaced",
                    )
            if len(known) == len(names):
                self._ok(peer, "UNCHANGED", f"every file is already published for {pkg.name}")
                return
            if known:
                raise _Refused(
                    "CONFLICT",
                    f"{', '.join(sorted(known))} already published; import the other files alone",
                )
            busy = db_admin.active_builds(conn, pkg.name, info.version)
            if busy:
                raise _Refused(
                    "BUSY", f"{pkg.name} {info.version} is being built (build {busy[0]})"
                )
        job = _Import(
            peer=peer,
            package=pkg.name,
            version=info.version,
            target=target,
            duration=data["duration"],
            log=data["log"] or "Imported with piw-import.",
            files=[_ImportFile(rec, new_token()) for rec in data["files"]],
            last_activity=time.monotonic(),
        )
        self.imports[peer] = job
        for item in job.files:
            self.tokens[item.token] = job
        self.log.info("importing %d file(s) of %s %s", len(job.files), pkg.name, info.version)
        self._import_next(job)

    def do_SENT(self, data: dict[str, Any], peer: Peer) -> None:
        job = self.imports.get(peer)
        if job is None:
            raise _Refused("INVALID", "SENT without an import in progress")
        job.last_activity = time.monotonic()
        for item in job.files:
            if item.record["filename"] == data["filename"] and item.state == "expecting":
                item.state = "sent"
                self.transfers.send_msg("VERIFY", {"transfer": item.token})
                return
        self._import_failed(job, "INVALID", f"{data['filename']} was not asked for")

    def _import_next(self, job: _Import) -> None:
        """Expect the next file, or publish everything once every file is verified."""
        for item in job.files:
            if item.state == "new":
                rec = item.record
                self.transfers.send_msg(
                    "EXPECT",
                    {
                        "transfer": item.token,
                        "filename": rec["filename"],
                        "package": job.package,
                        "version": job.version,
                        "abi": job.target.abi_tag,
                        "platform": job.target.platform_tag,
                        "size": rec["size"],
                        "sha256": rec["sha256"],
                    },
                )
                item.state = "asked"
                return
            if item.state != "verified" and item.state != "published":
                return  # wait for this one
        for item in job.files:
            if item.state == "verified":
                self.transfers.send_msg("PUBLISH", {"transfer": item.token})
                item.state = "publishing"
                return
        self._import_done(job)

    def handle_transfers(self) -> None:
        try:
            received = self.transfers.recv_msg()
        except ProtocolError as exc:
            self.log.warning("transfers: %s", exc)
            return
        token = received.data["transfer"]
        job = self.tokens.get(token)
        if job is None or job.failed:
            return
        item = next(i for i in job.files if i.token == token)
        job.last_activity = time.monotonic()
        if received.msg == "EXPECTING":
            item.state = "expecting"
            self._send(job.peer, "SEND", {"filename": item.record["filename"], "transfer": token})
        elif received.msg == "VERIFIED":
            item.state = "verified"
            item.facts = received.data["file"]
            self._import_next(job)
        elif received.msg == "PUBLISHED":
            item.state = "published"
            item.facts = received.data["file"]
            self._import_next(job)
        elif received.msg == "REFUSED":
            self._import_failed(
                job,
                "REFUSED",
                f"{item.record['filename']} refused ({received.data['code']}): "
                f"{received.data['reason']}",
            )

    def _import_failed(self, job: _Import, code: str, message: str) -> None:
        job.failed = True
        for item in job.files:
            self.tokens.pop(item.token, None)
            if item.state not in ("new", "published"):
                self.transfers.send_msg("CANCEL", {"transfer": item.token})
        self.imports.pop(job.peer, None)
        self._error(job.peer, code, message)

    def _import_done(self, job: _Import) -> None:
        for item in job.files:
            self.tokens.pop(item.token, None)
        self.imports.pop(job.peer, None)
        records = []
        for item in job.files:
            facts, rec = item.facts, item.record
            assert facts is not None
            deps = [Dependency("apt", d) for d in rec["apt_dependencies"]]
            deps += [Dependency("missing-lib", d) for d in rec["missing_libraries"]]
            deps += [Dependency("pip", d) for d in facts["requires_dist"]]
            records.append(
                FileRecord(
                    filename=facts["filename"],
                    size=facts["size"],
                    sha256=facts["sha256"],
                    requires_python=facts["requires_python"] or "",
                    metadata_sha256=facts["metadata_sha256"],
                    import_test=(
                        "untested"
                        if rec["import_ok"] is None
                        else "passed"
                        if rec["import_ok"]
                        else "failed"
                    ),
                    import_error=rec["import_error"] or "",
                    dependencies=tuple(deps),
                )
            )
        try:
            with self._db() as conn:
                build_id = db_builds.start_build(
                    conn, job.package, job.version, job.target.abi, None
                )
                db_builds.finish_build(
                    conn,
                    build_id,
                    "success",
                    job.duration,
                    files=records,
                    log_path=layout.log_url(build_id),
                )
        except (SQLAlchemyError, PiwheelsError) as exc:
            self.log.exception("recording the import failed")
            self._error(
                job.peer,
                "DATABASE",
                f"the files are published but the build was not recorded: {exc}",
            )
            return
        self._page("LOG", {"build_id": build_id, "log": job.log})
        self._page("PROJECT", {"package": job.package})
        self._ok(
            job.peer,
            "IMPORTED",
            f"imported {len(records)} file(s) of {job.package} {job.version} "
            f"for {job.target.abi} as build {build_id}",
        )

    def _expire_imports(self) -> None:
        limit = time.monotonic() - self.import_timeout
        for job in list(self.imports.values()):
            if job.last_activity < limit:
                self._import_failed(
                    job, "TIMEOUT", f"import stalled for over {self.import_timeout:g} s"
                )

    def close(self) -> None:
        for job in list(self.imports.values()):
            self._import_failed(job, "FAILED", "the master is stopping")
        super().close()
