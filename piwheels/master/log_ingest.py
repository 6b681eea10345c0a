"""The log ingest: batches of access-log records from piw-logger into PostgreSQL.

Each BATCH carries its rows as COPY text per hit table, checked once per
batch by the protocol; it is stored in one transaction (each row COPYed once,
straight into its hit table, and what the batch adds to each rollup tallied
here and added by one statement of upserts, see
:func:`piwheels.db.downloads.store_log_batches`) and acknowledged only after
the commit.  Batches that arrive while one is stored wait in the socket and
are then stored together, in one transaction (each still recorded and
acknowledged on its own; if PostgreSQL refuses the group, each is stored
alone so that only the bad one is refused).  A batch seen before (same
logger identity and batch id: a resend whose ACK was lost) is acknowledged
again without being stored twice: each stored batch is recorded in
``log_batches`` in the transaction of its rows, so this holds across a
master restart between the commit and the ACK (recent batch ids are also
remembered in memory, which spares the database a query).  When
PostgreSQL cannot be reached the answer is NACK with a ``retry_after``: the
logger keeps the batch and sends it again, so nothing is lost.  A batch
PostgreSQL refuses (a row the protocol's pattern lets through but the
database does not, such as February 30) is acknowledged with ``stored`` 0
and logged as an error: sending it again would never succeed.

The rollups are current at every commit.  After midnight (UTC) the previous
day is rolled up once more from the raw hits and checked for a download
spike (a warning names the packages behind it); ``rollup_dirty`` does the
same for days given to it (``dirty``), every ``rollup_interval`` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import zmq
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from .. import protocols
from ..db.downloads import LogBatch, store_log_batches
from ..db.stats import batch_days, prune_batches, rollup_day
from ..errors import ProtocolError
from ..tasks import Endpoint, Task
from ..transport import ROUTER, Context, Socket
from .env import MasterEnv

#: Batch keys remembered for deduplication (a logger keeps far fewer unacknowledged).
DEDUP_LIMIT = 100_000
#: First retry_after sent while the database is down; doubles up to MAX_RETRY.
RETRY_AFTER = 1.0
MAX_RETRY = 30.0
#: Batches waiting at once are stored in one transaction: at most this many,
GROUP_BATCHES = 16
#: or this many records.
GROUP_RECORDS = 100_000


#: A received batch: its checked data and the logger's routing identity.
_Item = tuple[dict[str, Any], tuple[bytes, ...]]


def _days(data: dict[str, Any]) -> set[date]:
    """The UTC days a batch brings rows for (from its hourly aggregates when it has them)."""
    rollup = data.get("rollup")
    if rollup is None:
        return batch_days(data["tables"], data["extra"])
    found = {h[3][:10].decode() for h in protocols.parse_rollup(rollup)["hours"]} | {
        e[0] for e in data["extra"]
    }
    return {date.fromisoformat(d) for d in found}


class LogIngest(Task):
    """Stores access-log batches, rolls up the statistics, flags spikes."""

    role = "log_ingest"
    binds = (Endpoint("logger", "ROUTER", "logger", "batches of access-log records"),)

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        rollup_interval: float = 60.0,
        spike_factor: float = 2.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.clock = clock or (lambda: datetime.now(UTC))
        self.spike_factor = spike_factor
        self.logger = self.socket(ROUTER, protocols.logger, name="logger")
        address = env.addresses["logger"]
        if env.server_keys is not None and address.startswith("tcp://"):
            self.logger.curve_server(env.server_keys)
        self.address = self.logger.bind(address)
        self.register(self.logger)
        # Groups are stored by one thread (its own connection); it writes a byte to the
        # pipe when a group is done, which wakes this task to answer the batches.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="log-store")
        self._storing: Future[list[tuple[list[_Item], Any]]] | None = None
        self._wake_r, self._wake_w = os.pipe()
        self.register_fd(self._wake_r, self._on_stored, pausable=False)
        self._wait_poller = zmq.Poller()
        self._wait_poller.register(self.logger.zmq_socket, zmq.POLLIN)
        self._wait_poller.register(self._wake_r, zmq.POLLIN)
        self._seen: OrderedDict[tuple[bytes, int], int] = OrderedDict()
        self.dirty: set[date] = set()  # days to roll up again from the raw hits
        self.touched: set[date] = set()  # days batches brought rows for (current already)
        self.today = self.clock().date()
        self.stored = 0  # records stored since start
        self.batches = 0
        self.groups = 0  # transactions that stored batches
        self.duplicates = 0
        self.refused = 0
        self.rejected = 0  # batches PostgreSQL refused
        # Seconds in the storing thread's transactions: wall, and that thread's CPU (the
        # rest of the wall is waiting for PostgreSQL, while this one receives).
        self.store_wall = 0.0
        self.store_thread: int | None = None  # the storing thread's native id, once it ran
        self.store_cpu = 0.0
        self._retry = RETRY_AFTER
        self._db_down = False
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self.spikes: list[Any] = []  # spike reports found by the daily check
        self.every(rollup_interval, self.rollup_dirty)
        self.every(5.0, self._tick)

    # -- figures -------------------------------------------------------------------

    @property
    def ingest_rate(self) -> float:
        """Records stored per second, over the last few seconds (read from any thread)."""
        return self._rate

    def _tick(self) -> None:
        now = time.monotonic()
        then, count = self._rate_mark
        if now > then:
            self._rate = (self.stored - count) / (now - then)
        self._rate_mark = (now, self.stored)
        today = self.clock().date()
        if today != self.today:
            yesterday, self.today = self.today, today
            self.after_midnight(yesterday)

    # -- batches -------------------------------------------------------------------

    def dispatch(self, sock: Socket) -> None:
        """Receive a BATCH and every one waiting behind it (up to a group), store them together.

        Batches that queue up while one group is stored (the logger keeps
        several unacknowledged) are stored in one transaction: one COPY per
        table and one rollup statement for all of them, so a busy ingest does
        fewer, larger transactions and fewer upserts per record.  Each is still
        recorded in ``log_batches`` and acknowledged once its group commits.

        Groups are stored by a thread of their own (on its own connection)
        while this one receives and checks the next: decoding and checking a
        batch (CBOR, a pattern per table, the aggregates against the rows)
        overlaps PostgreSQL storing the one before, instead of waiting for it.
        At most one group is stored at a time and one more is gathered.
        """
        if sock is not self.logger:
            super().dispatch(sock)
            return
        group: list[tuple[dict[str, Any], tuple[bytes, ...]]] = []
        self._gather(sock, group)
        if self._storing is not None and group:
            # Gather more while the group before is stored; hand over when it is done
            # (with nothing gathered, the wake-up answers that group).
            while not self._full(group):
                events = dict(self._wait_poller.poll())
                if self._wake_r in events:
                    break
                self._gather(sock, group)
            self._finish()
        if group:
            self._submit(group)

    def _full(self, group: list[tuple[dict[str, Any], tuple[bytes, ...]]]) -> bool:
        records = sum(data["records"] for data, _ in group)
        return len(group) >= GROUP_BATCHES or records >= GROUP_RECORDS

    def _gather(self, sock: Socket, group: list[tuple[dict[str, Any], tuple[bytes, ...]]]) -> None:
        """Receive (and check) every message waiting, BATCHes into *group* up to its limits."""
        while not self._full(group) and sock.poll(0):
            try:
                received = sock.recv_msg()
            except ProtocolError as exc:
                self.log.warning("%s", exc)
                self.on_bad_message(sock, exc)
                continue
            if received.msg == "BATCH" and received.peer is not None:
                group.append((received.data, received.peer))
            else:
                self.handle_message(sock, received)

    def do_BATCH(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self.store_group([(data, peer)])

    def store_group(self, group: list[tuple[dict[str, Any], tuple[bytes, ...]]]) -> None:
        """Store batches in one transaction and answer each (ACK, or NACK if the DB is down);
        returns once they are answered."""
        self._finish()
        self._submit(group)
        self._finish()

    def _submit(self, group: list[tuple[dict[str, Any], tuple[bytes, ...]]]) -> None:
        """Answer batches stored before at once; hand the rest to the storing thread."""
        todo: list[tuple[dict[str, Any], tuple[bytes, ...]]] = []
        for data, peer in group:
            stored = self._seen.get((peer[0], data["batch_id"]))
            if stored is None:
                todo.append((data, peer))
                continue
            self.duplicates += 1
            self.log.debug("batch %d from %r again: already stored", data["batch_id"], peer[0])
            self._reply(peer, "ACK", {"batch_id": data["batch_id"], "stored": stored})
        if todo:
            future = self._executor.submit(self._store, todo)
            future.add_done_callback(lambda _f: os.write(self._wake_w, b"."))
            self._storing = future

    def _store(self, todo: list[_Item]) -> list[tuple[list[_Item], Any]]:
        """In the storing thread: store *todo* in one transaction; if PostgreSQL refuses
        a row, each batch alone (so only the bad one is refused).  Returns, for each
        transaction, its batches and its results or the exception."""
        self.store_thread = threading.get_native_id()
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            outcome = self._transaction(todo)
            if isinstance(outcome, (DataError, IntegrityError)) and len(todo) > 1:
                return [
                    (item_list, self._transaction(item_list)) for item_list in ([i] for i in todo)
                ]
            return [(todo, outcome)]
        finally:
            self.store_wall += time.perf_counter() - w0
            self.store_cpu += time.thread_time() - c0

    def _transaction(self, todo: list[_Item]) -> Any:
        batches = [
            LogBatch(data["tables"], data["extra"], peer[0], data["batch_id"], data.get("rollup"))
            for data, peer in todo
        ]
        try:
            with self.env.engine.begin() as conn:
                return store_log_batches(conn, batches)
        except (OperationalError, DBAPIError) as exc:
            return exc

    def _on_stored(self) -> None:
        """The storing thread finished a group: answer its batches."""
        self._finish()

    def _finish(self) -> None:
        """Wait for the group being stored (if any) and answer each of its batches."""
        future, self._storing = self._storing, None
        if future is None:
            return
        outcomes = future.result()
        # The wake-up byte is read here (it may not be written yet: wait for it), so the
        # pipe holds one byte per group being stored at most.
        os.read(self._wake_r, 1)
        for todo, outcome in outcomes:
            if isinstance(outcome, (DataError, IntegrityError)):
                self._refuse(todo[0], outcome)
            elif isinstance(outcome, BaseException):
                self._unavailable(todo, outcome)
            else:
                self._acknowledge(todo, outcome)

    def _acknowledge(self, todo: list[_Item], results: list[Any]) -> None:
        self.groups += 1
        if self._db_down:
            self.log.warning("storing log batches again")
            self._db_down = False
            self._retry = RETRY_AFTER
        for (data, peer), res in zip(todo, results, strict=True):
            batch_id = data["batch_id"]
            self._remember((peer[0], batch_id), res.stored)
            if res.duplicate:
                self.duplicates += 1
                self.log.info(
                    "batch %d from %r was stored before: not stored again", batch_id, peer[0]
                )
            else:
                self.touched |= _days(data)
                self.stored += res.stored
                self.batches += 1
            self._reply(peer, "ACK", {"batch_id": batch_id, "stored": res.stored})

    def _refuse(self, item: _Item, exc: DBAPIError) -> None:
        """Acknowledge a batch PostgreSQL refused with ``stored`` 0 (it would never succeed)."""
        data, peer = item
        self.rejected += 1
        self.log.error(
            "batch %d from %r refused by the database, not stored: %s",
            data["batch_id"],
            peer[0],
            str(exc.orig).splitlines()[0] if exc.orig else exc,
        )
        self._remember((peer[0], data["batch_id"]), 0)
        self._reply(peer, "ACK", {"batch_id": data["batch_id"], "stored": 0})

    def _unavailable(self, todo: list[_Item], exc: BaseException) -> None:
        """NACK each batch with a growing ``retry_after``: the database cannot be reached."""
        self.refused += len(todo)
        if not self._db_down:
            self.log.error("cannot store log batches: %s", str(exc).splitlines()[0])
        self._db_down = True
        retry = self._retry
        self._retry = min(MAX_RETRY, self._retry * 2)
        for data, peer in todo:
            self._reply(
                peer,
                "NACK",
                {
                    "batch_id": data["batch_id"],
                    "reason": "database unavailable",
                    "retry_after": retry,
                },
            )

    def _remember(self, key: tuple[bytes, int], stored: int) -> None:
        self._seen[key] = stored
        if len(self._seen) > DEDUP_LIMIT:
            self._seen.popitem(last=False)

    def _reply(self, peer: tuple[bytes, ...], msg: str, data: dict[str, Any]) -> None:
        try:
            self.logger.send_msg(msg, data, peer=peer)
        except Exception as exc:  # the logger went away; it resends when back
            self.log.warning("cannot answer %s: %s", msg, exc)

    # -- rollups -------------------------------------------------------------------

    def rollup_dirty(self) -> int:
        """Roll up every day touched since the last rollup; returns the days done."""
        done = 0
        for day in sorted(self.dirty):
            try:
                with self.env.engine.begin() as conn:
                    rollup_day(conn, day)
            except (OperationalError, DBAPIError) as exc:
                self.log.error("rollup of %s failed: %s", day, str(exc).splitlines()[0])
                break
            self.dirty.discard(day)
            done += 1
        return done

    def after_midnight(self, yesterday: date) -> None:
        """Roll up *yesterday* once more, check it for a spike, forget old batch ids."""
        self.dirty.add(yesterday)
        self.rollup_dirty()
        self.check_spike(yesterday)
        try:
            with self.env.engine.connect() as conn:
                prune_batches(conn)
        except (OperationalError, DBAPIError) as exc:
            self.log.error("pruning stored batch ids failed: %s", str(exc).splitlines()[0])

    def check_spike(self, day: date) -> Any:
        """Log a warning naming the packages if *day* is a spike; returns the analysis."""
        from ..stats.spike import flag_spike

        try:
            with self.env.engine.connect() as conn:
                report = flag_spike(conn, day, factor=self.spike_factor, log=self.log)
        except (OperationalError, DBAPIError) as exc:
            self.log.error("spike check of %s failed: %s", day, str(exc).splitlines()[0])
            return None
        if report is not None:
            self.spikes.append(report)
        return report

    def teardown(self) -> None:
        # The group being stored is answered; days someone asked to recompute are
        # recomputed before stopping.
        self._finish()
        if self.dirty:
            self.rollup_dirty()

    def close(self) -> None:
        if self._wake_r < 0:
            return
        try:
            self._finish()
        finally:
            self._executor.shutdown(wait=True)
            super().close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1


__all__ = ["LogIngest"]
