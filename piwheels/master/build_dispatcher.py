"""The build dispatcher: the master's side of the builder protocol.

It greets builders, hands each the next build of its target from the queue
PostgreSQL keeps, follows the build through BUSY heartbeats, and when a build
ends either records the failure or asks for each wheel in turn, which the file
receiver pulls and checks.  Only when every file is verified and published is
the build recorded as a success.

It never hands the same release to two builders (the database refuses a
second start), drops a builder that falls silent for longer than
``[master] builder_timeout`` and gives its build back to the queue, and obeys
the monitors' actions: global pause, and per-builder sleep, wake, skip and kill.

Throughput: the dispatcher reads a burst of builder messages at a time and
does their database work together afterwards (one transaction starts the
builds every idle builder asked for, one records every build that ended),
answering each builder only once its change is committed.  It never waits
for the file receiver: requests go out tagged with their transfer token and
the answers are routed back to their build as they come, so verifying and
publishing one builder's wheel never holds up the others.  A build whose
files are all verified and being published ends by itself even if its
builder goes away meanwhile (the files are good; it is recorded, not lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .. import protocols, wheels
from ..db import abis as db_abis
from ..db import builds as db_builds
from ..db import queue as db_queue
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
from ..transport import PULL, PUSH, ROUTER, Context, Received
from ..web.layout import log_url
from .env import MasterEnv
from .transfers import REPLY_TIMEOUT, TransferClient, VerifiedFile

#: Builders are told to check in this often while building.
HEARTBEAT = timedelta(seconds=5)
#: Messages read from one socket before the batched database work is done.
BURST = 64
#: Queue entries read beyond the number of builders asking (some may be taken).
SPARE = 10
#: Routine builder state changes (building, sending, idle) reach monitors this often:
#: a builder passes through three of them per build, and monitors need the latest only.
STATUS_INTERVAL = 0.5
#: The dispatcher's kept database connection is pinged before use after this long idle.
PING_AFTER = 1.0


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class BuildInFlight:
    """A build a builder holds, and the files still to collect.

    ``phase``: building, sending (files coming one at a time), publishing
    (every file verified or being verified by PUBLISH; ends by itself) or
    recording (waiting for the batched database write).
    """

    build_id: int
    package: str
    version: str
    started_at: datetime
    timeout: timedelta
    target: str = ""
    abi: str | None = None
    platform: str | None = None
    label: str = ""
    phase: str = "building"
    files: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    transfers: dict[str, str] = field(default_factory=dict)  # filename -> token
    published: dict[str, VerifiedFile] = field(default_factory=dict)  # filename -> facts
    sending: str | None = None
    result: dict[str, Any] | None = None
    asked_at: float | None = None  # monotonic time of an unanswered file receiver request


@dataclass
class _Finish:
    """A build outcome waiting for the batched database write."""

    build: BuildInFlight
    status: str
    failure: str | None
    log: str
    duration: timedelta
    records: list[FileRecord]


@dataclass
class BuilderState:
    """What the dispatcher knows of one connected builder."""

    peer: tuple[bytes, ...]
    builder_id: int
    label: str
    abi: str
    platform: str
    target: str
    os_name: str
    os_version: str
    first_seen: datetime
    last_seen: datetime
    stats: dict[str, Any] | None = None
    state: str = "idle"
    asleep: bool = False
    skip: bool = False
    kill: bool = False
    build: BuildInFlight | None = None

    def as_message(self) -> dict[str, Any]:
        build = None
        if self.build is not None:
            build = {
                "build_id": self.build.build_id,
                "package": self.build.package,
                "version": self.build.version,
                "started_at": self.build.started_at,
                "timeout": self.build.timeout,
            }
        return {
            "builder_id": self.builder_id,
            "label": self.label,
            "abi": self.abi,
            "platform": self.platform,
            "os_name": self.os_name,
            "os_version": self.os_version,
            "state": self.state,
            "paused": self.asleep,
            "build": build,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "stats": self.stats,
        }


class BuildDispatcher(Task):
    """Hands out builds and follows them to the end."""

    role = "build_dispatcher"
    # Keeps serving builders while paused: it answers SLEEP instead of BUILD.
    pausable = False
    binds = (Endpoint("builder", "ROUTER", "builder", "builders connect here"),)
    connects = (
        Endpoint("builder_control", "PULL", "builder_control", "builder actions from monitors"),
        Endpoint("transfers", "DEALER", "transfers", "asks the file receiver for files"),
        Endpoint("pages", "PUSH", "pages", "asks for pages and logs to be written"),
        Endpoint("status_feed", "PUSH", "status_feed", "reports builder states"),
    )

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        clock: Callable[[], datetime] = now,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.clock = clock
        master = env.settings.master
        self.builder_timeout = master.builder_timeout
        self.build_timeout = master.build_timeout
        self.max_file_size = master.max_file_size
        self.min_builder_disk = env.settings.builder.min_free_disk
        upstream = env.settings.upstream
        self.index_url = upstream.build_index or upstream.url or ""
        self.builders: dict[tuple[bytes, ...], BuilderState] = {}
        self._next_local_id = 1
        self._conn: Connection | None = None
        self._conn_used = 0.0

        self.builder = self.socket(ROUTER, protocols.builder, name="builder")
        if env.server_keys is not None:
            self.builder.curve_server(env.server_keys)
        self.builder.bind(env.addresses["builder"])
        self.register(self.builder)
        self.actions = self.socket(PULL, protocols.builder_control, name="builder_control")
        self.actions.connect(env.addresses["builder_control"])
        self.register(self.actions, lambda: self.dispatch_action())
        self.pages = self.socket(PUSH, reversed(protocols.pages), name="pages")
        self.pages.connect(env.addresses["pages"])
        self.status = self.socket(PUSH, reversed(protocols.status_feed), name="status_feed")
        self.status.connect(env.addresses["status_feed"])
        self.transfers = TransferClient(self, env.addresses["transfers"])
        self.register(self.transfers.socket, self.handle_transfers)
        # Builds in flight by id; transfer tokens -> (build id, filename).
        self.inflight: dict[int, BuildInFlight] = {}
        self.tokens: dict[str, tuple[int, str]] = {}
        # The batched work: builders waiting for a build, builds waiting to be recorded.
        self.wanting: dict[tuple[bytes, ...], BuilderState] = {}
        self.finishing: list[_Finish] = []
        # Builders whose routine state changes wait for the next status round.
        self.changed: dict[tuple[bytes, ...], BuilderState] = {}
        self.every(1.0, self.expire, pausable=False)
        self.every(STATUS_INTERVAL, self.publish_changed, pausable=False)
        # Builds left unfinished by a previous master (or by a COMMIT whose answer was
        # lost): their builders get one builder timeout from here to come back and
        # resume them; the rest are given back.
        self.started_at = self.clock()
        self.orphans: set[int] = set()

    def setup(self) -> None:
        with self._db() as conn:
            self.orphans = set(db_builds.unfinished_builds(conn))
        if self.orphans:
            self.log.info(
                "%d builds were in flight when the master last stopped; waiting %ds for "
                "their builders",
                len(self.orphans),
                int(self.builder_timeout.total_seconds()),
            )

    # -- helpers ---------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[Connection]:
        """A transaction on the dispatcher's own kept connection.

        Drawn from the pool once and kept: a checkout pings the server first
        (a round trip per transaction at a few transactions per burst).  The
        kept connection is pinged only after it sat idle for ``PING_AFTER``
        seconds, and replaced when that ping or a statement finds it broken.
        """
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated or conn.in_transaction():
            if conn is not None and conn.in_transaction():
                # Called inside another transaction (never on purpose): a pooled one.
                with self.env.engine.begin() as other:
                    yield other
                return
            conn = self._conn = self.env.engine.connect()
        elif time.monotonic() - self._conn_used > PING_AFTER:
            conn = self._checked(conn)
        try:
            with conn.begin():
                yield conn
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._drop_conn()
            raise
        finally:
            self._conn_used = time.monotonic()

    def _checked(self, conn: Connection) -> Connection:
        """*conn* if the server still answers on it, else a new connection (pinged by the pool)."""
        try:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            self.env.engine.dialect.do_ping(dbapi)
            dbapi.rollback()  # the ping's own transaction: now() is the next one's start
            return conn
        except DBAPIError:
            pass
        except Exception as exc:  # the DB-API's own error, not wrapped by SQLAlchemy
            if not isinstance(exc, self.env.engine.dialect.loaded_dbapi.Error):
                raise
        self.log.info("database connection lost: reconnecting")
        self._drop_conn()
        conn = self._conn = self.env.engine.connect()
        return conn

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # already broken: nothing more to release
                pass

    def teardown(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _reply(
        self, state_or_peer: BuilderState | tuple[bytes, ...], msg: str, data: Any = None
    ) -> None:
        peer = state_or_peer.peer if isinstance(state_or_peer, BuilderState) else state_or_peer
        try:
            self.builder.send_msg(msg, data, peer=peer)
        except TransportError as exc:
            self.log.warning("cannot answer %s: %s", msg, exc)

    def _publish(self, builder: BuilderState) -> None:
        """Tell monitors about *builder* now (a new builder, an operator's action)."""
        self.changed.pop(builder.peer, None)
        self.status.send_msg("BUILDER", builder.as_message())

    def _changed(self, builder: BuilderState) -> None:
        """Tell monitors about *builder* with the next status round (its latest state only)."""
        self.changed[builder.peer] = builder

    def publish_changed(self) -> None:
        """Send the builder states that changed since the last round, one message each."""
        changed, self.changed = self.changed, {}
        for peer, state in changed.items():
            if self.builders.get(peer) is state:
                self.status.send_msg("BUILDER", state.as_message())

    def _page(self, msg: str, data: Any = None) -> None:
        self.pages.send_msg(msg, data)

    def on_bad_message(self, sock: Any, exc: PiwheelsError) -> None:
        peer = getattr(exc, "peer", None)
        if sock is self.builder and peer:
            # A builder that breaks the protocol is not trusted with a build.
            state = self.builders.get(peer)
            if state is not None:
                self.drop(state, f"protocol error: {exc}")
            self._reply(peer, "DIE", {"reason": f"protocol error: {str(exc)[:400]}"})

    # -- batching ----------------------------------------------------------------------

    def handle_builder(self) -> None:
        """Read a burst of builder messages, then do their database work together."""
        self._read_builders()
        # The file receiver's answers waiting too: their records share the transaction.
        self._read_transfers()
        self.flush()

    def handle_transfers(self) -> None:
        """Route the file receiver's answers to their builds, then do the database work."""
        self._read_transfers()
        self._read_builders()
        self.flush()

    def _read_builders(self) -> None:
        # Checked before each read: the other handler of this poll round may have
        # drained the socket already (a read would then block).
        for _ in range(BURST):
            if not self.builder.poll(0):
                break
            self.dispatch(self.builder)

    def _read_transfers(self) -> None:
        sock = self.transfers.socket
        for _ in range(BURST):
            if not sock.poll(0):
                break
            try:
                received = sock.recv_msg()
            except ProtocolError as exc:
                self.log.warning("transfers: %s", exc)
            else:
                self._transfer_answer(received)

    def flush(self) -> None:
        """Record the builds that ended and start builds for the builders asking.

        One transaction for both (no savepoints: any error rolls it all back);
        the builders are answered only once it is committed.
        """
        items, self.finishing = self.finishing, []
        asking = self._asking()
        if not items and not asking:
            return
        results = [self._result(item) for item in items]
        try:
            started = self._write(items, results, asking)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The kept connection broke since its last use (e.g. the server restarted):
            # nothing was committed, so the same work goes again on a new connection.  (Had
            # it broken during COMMIT itself and the COMMIT landed, the retry finds those
            # builds finished and refuses them, and the builds it started were never handed
            # out: _suspect_orphans gives them back.)
            self.log.warning("database connection lost: %s; trying again", str(exc).strip()[:200])
            started = self._write(items, results, asking)
            if asking:
                self._suspect_orphans()
        for item in items:
            self._finished(item)
        if asking:
            self._answer(asking, started)

    def _suspect_orphans(self) -> None:
        """Treat every unfinished build as a possible orphan once more.

        After a connection lost around a COMMIT that may have landed, builds that
        transaction started may exist that no builder was told of.  As after a
        restart, :meth:`expire` gives back those nobody holds one builder timeout on.
        """
        with self._db() as conn:
            self.orphans |= set(db_builds.unfinished_builds(conn))
        self.started_at = self.clock()

    def _holder(self, build: BuildInFlight) -> BuilderState | None:
        """The connected builder holding *build* (None once it went away)."""
        for state in self.builders.values():
            if state.build is build:
                return state
        return None

    # -- builder messages ------------------------------------------------------------

    def do_HELLO(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        label = data["label"]
        if data["protocol"] != protocols.PROTOCOL_VERSION:
            reason = (
                f"protocol version {data['protocol']} is not the master's "
                f"{protocols.PROTOCOL_VERSION}; upgrade the builder"
            )
            self.log.warning("refused builder %s: %s", label, reason)
            self._reply(peer, "REFUSED", {"reason": reason})
            return
        old = self.builders.pop(peer, None)
        if old is not None:
            self.drop(old, "said HELLO again", keep_build=data.get("resume_build_id"))
        for other in list(self.builders.values()):
            if other.label == label:
                # The same machine reconnecting: whatever the old connection held
                # is either resumed below or given back to the queue.
                self.drop(other, "reconnected", keep_build=data.get("resume_build_id"))
        try:
            with self._db() as conn:
                target = db_abis.add_abi(conn, data["abi"], data["platform"]).abi
                builder_id = db_builds.register_builder(
                    conn, label, abi=target, platform_tag=data["platform"]
                )
                if not data.get("resume_build_id"):
                    # Builds it held before a master restart are not coming back
                    # (except those already publishing: they end by themselves).
                    held = {
                        b.build_id
                        for b in self.inflight.values()
                        if b.phase in ("publishing", "recording")
                    }
                    lost = set(db_builds.unfinished_builds(conn, builder_id)) - held
                    db_builds.abandon_build_ids(conn, lost)
                    for build_id in lost:
                        self._forget_build(build_id)
        except InvalidName as exc:
            self.log.warning("refused builder %s: %s", label, exc)
            self._reply(peer, "REFUSED", {"reason": str(exc)})
            return
        when = self.clock()
        state = BuilderState(
            peer=peer,
            builder_id=builder_id,
            label=label,
            abi=data["abi"],
            platform=data["platform"],
            target=target,
            os_name=data["os_name"],
            os_version=data["os_version"],
            first_seen=when,
            last_seen=when,
            stats=data["stats"],
        )
        resume = data.get("resume_build_id")
        if resume:
            self._resume(state, resume)
        self.builders[peer] = state
        timeout = min(self.build_timeout, data["build_timeout"])
        self.log.info("builder %s (%s) connected as %d", label, target, builder_id)
        self._reply(
            state,
            "ACK",
            {
                "builder_id": builder_id,
                "index_url": self.index_url,
                "extra_index_urls": [],
                "build_timeout": timeout,
                "heartbeat": HEARTBEAT,
            },
        )
        self._publish(state)

    def _resume(self, state: BuilderState, build_id: int) -> None:
        known = self.inflight.get(build_id)
        if known is not None and known.phase in ("publishing", "recording"):
            # Its files are on their way into the index: DONE follows when recorded.
            known.label = state.label
            state.build = known
            state.state = "sending"
            self.log.info("builder %s is back for build %d (publishing)", state.label, build_id)
            return
        if known is not None:
            # Files half-sent by the old connection are sent again from the start.
            self._cancel_transfers(known)
        with self._db() as conn:
            build = db_builds.get_build(conn, build_id)
        if build is None or build.status != "building":
            self.inflight.pop(build_id, None)
            return
        state.build = self._new_build(state, build_id, build.package, build.version)
        state.state = "building"
        self.log.info("builder %s resumes build %d", state.label, build_id)

    def _new_build(
        self, state: BuilderState, build_id: int, package: str, version: str
    ) -> BuildInFlight:
        build = BuildInFlight(
            build_id=build_id,
            package=package,
            version=version,
            started_at=self.clock(),
            timeout=self.build_timeout,
            target=state.target,
            abi=state.abi,
            platform=state.platform,
            label=state.label,
        )
        self.inflight[build_id] = build
        return build

    def _known(self, peer: tuple[bytes, ...], msg: str) -> BuilderState | None:
        state = self.builders.get(peer)
        if state is None:
            # A builder the master does not know (e.g. after a master restart)
            # must start again with HELLO.
            self.log.info("%s from an unknown builder: asking it to reconnect", msg)
            self._reply(peer, "DIE", {"reason": "unknown builder: reconnect with HELLO"})
            return None
        state.last_seen = self.clock()
        return state

    def do_IDLE(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        state = self._known(peer, "IDLE")
        if state is None:
            return
        state.stats = data["stats"]
        if state.build is not None:
            # The builder gave up its build without reporting it (e.g. after ABORT).
            self._abandon(state, "other", "the builder dropped the build")
        state.skip = False
        if state.kill:
            self._reply(state, "DIE", {"reason": "killed by an operator"})
            self.drop(state, "killed by an operator")
            return
        if self.paused or state.asleep:
            reason = "paused" if self.paused else "asleep"
            self._sleep(state, reason)
            return
        if data["stats"]["disk_free"] < self.min_builder_disk:
            self._sleep(state, "low disk")
            return
        # Answered by flush(), with every other builder asking in this burst.
        self.wanting[peer] = state

    def _sleep(self, state: BuilderState, reason: str) -> None:
        new = "paused" if reason in ("paused", "asleep") else "idle"
        changed = state.state != new
        state.state = new
        self._reply(
            state, "SLEEP", {"seconds": 5.0 if reason == "no work" else 2.0, "reason": reason}
        )
        if changed:
            self._changed(state)

    def _write(
        self,
        items: list[_Finish],
        results: list[db_builds.BuildResult],
        asking: list[BuilderState],
    ) -> list[tuple[BuilderState, db_queue.QueuedBuild, int]]:
        """Record *results* and start builds for *asking*: one transaction if all goes well."""
        started: list[tuple[BuilderState, db_queue.QueuedBuild, int]] = []
        merge = self._one_queue_update(items, results, asking)
        try:
            with self._db() as conn:
                done = []
                if results:
                    done = db_builds.finish_builds(
                        conn, results, savepoint=False, update_queue=not merge
                    )
                if asking:
                    started = self._start(conn, asking, update_queue=not merge)
                if merge:
                    db_queue.update_versions(
                        conn,
                        {(b.package, b.version) for b in done}
                        | {(q.package, q.version) for _, q, _ in started},
                    )
        except (BuildError, InvalidWheel):
            if not results:
                raise
            # One bad outcome must not keep the others out: record them one at a time.
            for item, result in zip(items, results, strict=True):
                self._record_one(item, result)
            if asking:
                with self._db() as conn:
                    started = self._start(conn, asking)
        return started

    @staticmethod
    def _one_queue_update(
        items: list[_Finish], results: list[db_builds.BuildResult], asking: list[BuilderState]
    ) -> bool:
        """Whether the finished and the started releases may share one queue update.

        The finished releases' rows are then recomputed after the queue is read for
        the builders asking, so this is only done when that read could not have
        seen any of them: every build succeeded with files (its release then has
        nothing left for its own target) and every builder asking has that same
        one target (other targets may get rows of those releases back).
        """
        if not results or not asking:
            return False
        targets = {item.build.target for item in items}
        return (
            len(targets) == 1
            and all(r.status == "success" and r.files for r in results)
            and all(s.target in targets for s in asking)
        )

    def _asking(self) -> list[BuilderState]:
        """The builders that asked for a build and still want one."""
        asking = [
            s
            for peer, s in self.wanting.items()
            if self.builders.get(peer) is s and s.build is None
        ]
        self.wanting = {}
        return asking

    def _start(
        self, conn: Connection, asking: list[BuilderState], *, update_queue: bool = True
    ) -> list[tuple[BuilderState, db_queue.QueuedBuild, int]]:
        """Start a build for every builder asking (in the caller's transaction).

        With *update_queue* false the started releases' queue rows are left to the
        caller (only for builders of one target: another target's read of the
        queue would still see them).
        """
        by_target: dict[str, list[BuilderState]] = {}
        for state in asking:
            by_target.setdefault(state.target, []).append(state)
        started: list[tuple[BuilderState, db_queue.QueuedBuild, int]] = []
        for target, states in by_target.items():
            candidates = iter(db_queue.next_builds(conn, target, limit=len(states) + SPARE))
            waiting = list(states)
            while waiting:
                picks = []
                for state in waiting:
                    queued = next(candidates, None)
                    if queued is None:
                        break
                    picks.append((state, queued))
                if not picks:
                    break
                waiting = waiting[len(picks) :]
                ids = db_builds.start_builds(
                    conn,
                    [(q.package, q.version, target, s.builder_id) for s, q in picks],
                    savepoint=False,
                    update_queue=update_queue,
                )
                for (state, queued), build_id in zip(picks, ids, strict=True):
                    if build_id is None:
                        # Another target's builder has this release: try the next one.
                        waiting.append(state)
                    else:
                        started.append((state, queued, build_id))
        return started

    def _answer(
        self,
        asking: list[BuilderState],
        started: list[tuple[BuilderState, db_queue.QueuedBuild, int]],
    ) -> None:
        """Committed: only now may the builders start; the others sleep."""
        given = set()
        for state, queued, build_id in started:
            given.add(state.peer)
            build = self._new_build(state, build_id, queued.package, queued.version)
            state.build = build
            state.state = "building"
            self.log.info(
                "build %d: %s %s for %s on %s",
                build_id,
                queued.package,
                queued.version,
                state.target,
                state.label,
            )
            self._reply(
                state,
                "BUILD",
                {
                    "build_id": build_id,
                    "package": build.package,
                    "version": build.version,
                    "timeout": build.timeout,
                },
            )
            self._changed(state)
        for state in asking:
            if state.peer not in given:
                self._sleep(state, "no work")

    def do_BUSY(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        state = self._known(peer, "BUSY")
        if state is None:
            return
        state.stats = data["stats"]
        build = state.build
        if build is None or build.build_id != data["build_id"]:
            self._reply(
                state,
                "ABORT",
                {"build_id": data["build_id"], "reason": "the master does not know this build"},
            )
            return
        if state.skip or state.kill:
            reason = "killed by an operator" if state.kill else "skipped by an operator"
            self._reply(state, "ABORT", {"build_id": build.build_id, "reason": reason})
            self._abandon(state, "other", reason)
            return
        if self.clock() - build.started_at > build.timeout + self.builder_timeout:
            # The builder should have stopped the build itself at the timeout.
            self._reply(state, "ABORT", {"build_id": build.build_id, "reason": "timed out"})
            self._abandon(state, "timeout", "the build ran past its timeout")
            return
        self._reply(state, "CONT")

    def do_BUILT(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        state = self._known(peer, "BUILT")
        if state is None:
            return
        build = state.build
        if build is None or build.build_id != data["build_id"]:
            # Already recorded (or abandoned): let the builder forget it.
            self._reply(state, "DONE", {"build_id": data["build_id"]})
            return
        if build.phase != "building":
            # Said again (e.g. after reconnecting) while its files are being
            # handled: DONE follows when the build is recorded.
            return
        build.result = data
        if not data["status"]:
            failure = data["failure_class"] or "other"
            if failure not in db_builds.FAILURE_CLASSES:
                failure = "other"
            self._finish(build, "failed", failure, data["log"], data["duration"])
            return
        problem = self._check_files(build, data["files"])
        if problem:
            self.log.warning("build %d refused: %s", build.build_id, problem)
            self._finish(
                build,
                "failed",
                "invalid_wheel",
                data["log"] + f"\n\npiwheels: refused the build: {problem}\n",
                data["duration"],
            )
            return
        build.files = list(data["files"])
        build.pending = list(data["files"])
        build.phase = "sending"
        state.state = "sending"
        self._changed(state)
        self._send_next(build)

    def _check_files(self, build: BuildInFlight, files: list[dict[str, Any]]) -> str | None:
        if not files:
            return "the build reported success but no wheel"
        names = set()
        for rec in files:
            name = rec["filename"]
            if name in names:
                return f"{name} reported twice"
            names.add(name)
            try:
                parsed = wheels.parse_wheel_filename(name)
            except InvalidWheel as exc:
                return str(exc)
            if wheels.canonicalize(parsed.name) != wheels.canonicalize(build.package):
                return f"{name} is not a wheel of {build.package}"
            if rec["size"] > self.max_file_size:
                return f"{name} is {rec['size']} bytes, over the {self.max_file_size} limit"
        return None

    # -- the file receiver -------------------------------------------------------------

    def _ask(self, build: BuildInFlight, msg: str, data: dict[str, Any]) -> None:
        build.asked_at = time.monotonic()
        self.transfers.request(msg, data)

    def _send_next(self, build: BuildInFlight) -> None:
        """Have the file receiver expect the next file (SEND follows its EXPECTING)."""
        rec = build.pending.pop(0)
        token = new_token()
        build.transfers[rec["filename"]] = token
        build.sending = rec["filename"]
        self.tokens[token] = (build.build_id, rec["filename"])
        self._ask(
            build,
            "EXPECT",
            {
                "transfer": token,
                "filename": rec["filename"],
                "package": build.package,
                "version": build.version,
                "abi": build.abi,
                "platform": build.platform,
                "size": rec["size"],
                "sha256": rec["sha256"],
            },
        )

    def do_SENT(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        state = self._known(peer, "SENT")
        if state is None:
            return
        build = state.build
        if build is None or build.build_id != data["build_id"]:
            self._reply(state, "DONE", {"build_id": data["build_id"]})
            return
        if build.phase != "sending" or build.sending != data["filename"]:
            if build.phase == "sending" and build.sending is None:
                return  # said twice: the file is being checked already
            self._reply(state, "DONE", {"build_id": data["build_id"]})
            return
        token = build.transfers[data["filename"]]
        build.sending = None
        if not build.pending and len(build.files) == 1:
            # The only file: PUBLISH verifies it first and publishes nothing unless it passes.
            build.phase = "publishing"
            self._ask(build, "PUBLISH", {"transfer": token})
        else:
            # One of several: each is verified before any is published.
            self._ask(build, "VERIFY", {"transfer": token})

    def _transfer_answer(self, received: Received) -> None:
        token = received.data["transfer"]
        build_id, filename = self.tokens.get(token, (0, ""))
        build = self.inflight.get(build_id)
        if build is None or build.transfers.get(filename) != token:
            return  # a transfer given up meanwhile (cancelled): nothing waits for it
        build.asked_at = None
        msg = received.msg
        if msg == "CANCELLED":
            return
        if msg == "REFUSED":
            if build.phase in ("sending", "publishing"):
                self._fail_files(build, f"{filename}: {received.data['reason']}")
            return
        if msg == "EXPECTING":
            holder = self._holder(build)
            if holder is not None and build.phase == "sending" and build.sending == filename:
                self._reply(
                    holder,
                    "SEND",
                    {"build_id": build.build_id, "filename": filename, "transfer": token},
                )
        elif msg == "VERIFIED":
            if build.phase != "sending":
                return
            if build.pending:
                self._send_next(build)
            else:
                # Every file is verified: publish them all.
                build.phase = "publishing"
                for rec in build.files:
                    self._ask(build, "PUBLISH", {"transfer": build.transfers[rec["filename"]]})
        elif msg == "PUBLISHED":
            if build.phase != "publishing":
                return
            build.published[filename] = VerifiedFile.from_facts(received.data["file"])
            if len(build.published) == len(build.files):
                self._complete(build)

    def _cancel_transfers(self, build: BuildInFlight) -> None:
        for token in build.transfers.values():
            self.tokens.pop(token, None)
            self.transfers.request("CANCEL", {"transfer": token})
        build.transfers = {}
        build.asked_at = None

    def _fail_files(self, build: BuildInFlight, reason: str) -> None:
        assert build.result is not None
        self._cancel_transfers(build)
        self.log.warning("build %d refused: %s", build.build_id, reason)
        self._finish(
            build,
            "failed",
            "invalid_wheel",
            build.result["log"] + f"\n\npiwheels: refused the build: {reason}\n",
            build.result["duration"],
        )

    def _complete(self, build: BuildInFlight) -> None:
        assert build.result is not None
        records = []
        for rec in build.files:
            info = build.published[rec["filename"]]
            deps = [Dependency("apt", d) for d in rec["apt_dependencies"]]
            deps += [Dependency("missing-lib", d) for d in rec["missing_libraries"]]
            deps += [Dependency("pip", d) for d in info.requires_dist]
            import_test = (
                "untested"
                if rec["import_ok"] is None
                else "passed"
                if rec["import_ok"]
                else "failed"
            )
            records.append(
                FileRecord(
                    filename=info.filename,
                    size=info.size,
                    sha256=info.sha256,
                    requires_python=info.requires_python or "",
                    metadata_sha256=info.metadata_sha256,
                    import_test=import_test,
                    import_error=rec["import_error"] or "",
                    dependencies=tuple(deps),
                )
            )
        for token in build.transfers.values():
            self.tokens.pop(token, None)
        self._finish(build, "success", None, build.result["log"], build.result["duration"], records)

    # -- recording ---------------------------------------------------------------------

    def _finish(
        self,
        build: BuildInFlight,
        status: str,
        failure: str | None,
        log: str,
        duration: timedelta,
        records: list[FileRecord] | None = None,
    ) -> None:
        """Queue the outcome for the next batched write (flush)."""
        build.phase = "recording"
        self.finishing.append(_Finish(build, status, failure, log, duration, records or []))

    def _result(self, item: _Finish) -> db_builds.BuildResult:
        return db_builds.BuildResult(
            item.build.build_id,
            item.status,
            item.duration,
            item.failure,
            tuple(item.records),
            log_url(item.build.build_id),
        )

    def _record_one(self, item: _Finish, result: db_builds.BuildResult) -> None:
        try:
            with self._db() as conn:
                db_builds.finish_builds(conn, [result], savepoint=False)
            return
        except (BuildError, InvalidWheel) as exc:
            self.log.error("build %d cannot be recorded: %s", item.build.build_id, exc)
            if item.status != "success":
                return
            reason = str(exc)
        # E.g. a file name the database already holds with other content.
        item.status, item.failure, item.records = "failed", "invalid_wheel", []
        item.log += f"\n\npiwheels: refused the build: {reason}\n"
        try:
            with self._db() as conn:
                db_builds.finish_builds(conn, [self._result(item)], savepoint=False)
        except (BuildError, InvalidWheel) as exc:
            self.log.error("build %d cannot be recorded: %s", item.build.build_id, exc)

    def _finished(self, item: _Finish) -> None:
        build = item.build
        self.inflight.pop(build.build_id, None)
        self._page(
            "LOG", {"build_id": build.build_id, "log": item.log[-protocols.LOG_LIMIT + 1000 :]}
        )
        self._page("PROJECT", {"package": build.package})
        self.status.send_msg(
            "BUILD",
            {
                "build_id": build.build_id,
                "package": build.package,
                "version": build.version,
                "abi": build.target,
                "builder": build.label,
                "status": item.status,
                "duration": item.duration,
                "failure_class": item.failure,
                "finished_at": self.clock(),
            },
        )
        self.log.info("build %d %s (%s)", build.build_id, item.status, item.failure or "ok")
        holder = self._holder(build)
        if holder is not None:
            self._reply(holder, "DONE", {"build_id": build.build_id})
            holder.build = None
            holder.state = "idle"
            self._changed(holder)

    def _forget_build(self, build_id: int) -> None:
        build = self.inflight.pop(build_id, None)
        if build is not None:
            self._cancel_transfers(build)

    def _abandon(self, state: BuilderState, failure: str, reason: str) -> None:
        """Give a build back: recorded as failed (transient failures come back later)."""
        build = state.build
        if build is None:
            return
        state.build = None
        state.state = "idle"
        if build.phase in ("publishing", "recording"):
            # Its files are verified and going into the index: it ends by itself.
            self.log.info("build %d carries on without its builder: %s", build.build_id, reason)
            return
        self._forget_build(build.build_id)
        try:
            with self._db() as conn:
                db_builds.finish_build(
                    conn,
                    build.build_id,
                    "failed",
                    max(self.clock() - build.started_at, timedelta(0)),
                    failure,
                )
        except BuildError as exc:
            self.log.debug("build %d: %s", build.build_id, exc)
        self.log.info("build %d abandoned: %s", build.build_id, reason)
        self._page("PROJECT", {"package": build.package})

    def do_BYE(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        state = self.builders.get(peer)
        if state is not None:
            self.drop(state, f"said goodbye ({data['reason']})")

    # -- builder lifecycle -------------------------------------------------------------

    def drop(self, state: BuilderState, reason: str, *, keep_build: int | None = None) -> None:
        """Forget a builder, giving its build back to the queue (unless it is resumed)."""
        self.builders.pop(state.peer, None)
        self.wanting.pop(state.peer, None)
        if state.build is not None and state.build.build_id != keep_build:
            self._abandon(state, "builder_lost", f"builder {state.label} {reason}")
        self.log.info("builder %s dropped: %s", state.label, reason)
        self.status.send_msg("GONE", {"builder_id": state.builder_id, "reason": reason[:400]})

    def expire(self) -> None:
        """Drop silent builders, give back orphans, fail builds the receiver left hanging."""
        limit = self.clock() - self.builder_timeout
        if self.orphans and self.started_at < limit:
            held = {s.build.build_id for s in self.builders.values() if s.build is not None}
            held |= set(self.inflight)
            lost = self.orphans - held
            self.orphans = set()
            if lost:
                with self._db() as conn:
                    gone = db_builds.abandon_build_ids(conn, lost)
                for build_id in gone:
                    self.log.info("build %d abandoned: its builder never came back", build_id)
        for state in list(self.builders.values()):
            if state.last_seen < limit:
                self.drop(state, f"silent for over {int(self.builder_timeout.total_seconds())}s")
        overdue = time.monotonic() - REPLY_TIMEOUT
        for build in list(self.inflight.values()):
            late = build.asked_at is not None and build.asked_at < overdue
            if late and build.phase in ("sending", "publishing"):
                self._fail_files(build, "the file receiver did not answer")
        self.flush()

    # -- actions from monitors ------------------------------------------------------------

    def dispatch_action(self) -> None:
        try:
            received = self.actions.recv_msg()
        except PiwheelsError as exc:
            self.log.warning("builder_control: %s", exc)
            return
        wanted = received.data["builder_id"]
        targets = [s for s in self.builders.values() if wanted is None or s.builder_id == wanted]
        if not targets:
            self.log.warning("%s: no builder %s connected", received.msg, wanted)
        for state in targets:
            if received.msg == "SLEEP":
                state.asleep = True
            elif received.msg == "WAKE":
                state.asleep = False
            elif received.msg == "SKIP":
                state.skip = state.build is not None
            elif received.msg == "KILL":
                state.kill = True
                state.skip = state.build is not None
            self.log.info("%s builder %s", received.msg.lower(), state.label)
            self._publish(state)

    def on_pause(self) -> None:
        self.log.info("paused: builders get no new builds")

    def on_resume(self) -> None:
        self.log.info("resumed")

    def snapshot(self) -> Mapping[int, BuilderState]:
        """Connected builders by id (for tests and the status hub)."""
        return {s.builder_id: s for s in self.builders.values()}
