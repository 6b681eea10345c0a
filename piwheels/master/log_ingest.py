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

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

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

        Batches that queue up while one is stored (the logger keeps several
        unacknowledged) are stored in one transaction: one COPY per table and
        one rollup statement for all of them, so a busy ingest does fewer,
        larger transactions and fewer upserts per record.  Each is still
        recorded in ``log_batches`` and acknowledged once the group commits.
        """
        if sock is not self.logger:
            super().dispatch(sock)
            return
        group: list[tuple[dict[str, Any], tuple[bytes, ...]]] = []
        records = 0
        while True:
            try:
                received = sock.recv_msg()
            except ProtocolError as exc:
                self.log.warning("%s", exc)
                self.on_bad_message(sock, exc)
            else:
                if received.msg == "BATCH" and received.peer is not None:
                    group.append((received.data, received.peer))
                    records += received.data["records"]
                else:
                    self.handle_message(sock, received)
            if len(group) >= GROUP_BATCHES or records >= GROUP_RECORDS or not sock.poll(0):
                break
        if group:
            self.store_group(group)

    def do_BATCH(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self.store_group([(data, peer)])

    def store_group(self, group: list[tuple[dict[str, Any], tuple[bytes, ...]]]) -> None:
        """Store batches in one transaction and answer each (ACK, or NACK if the DB is down)."""
        todo: list[tuple[dict[str, Any], tuple[bytes, ...]]] = []
        for data, peer in group:
            stored = self._seen.get((peer[0], data["batch_id"]))
            if stored is None:
                todo.append((data, peer))
                continue
            self.duplicates += 1
            self.log.debug("batch %d from %r again: already stored", data["batch_id"], peer[0])
            self._reply(peer, "ACK", {"batch_id": data["batch_id"], "stored": stored})
        if not todo:
            return
        batches = [
            LogBatch(data["tables"], data["extra"], peer[0], data["batch_id"], data.get("rollup"))
            for data, peer in todo
        ]
        try:
            with self.env.engine.begin() as conn:
                results = store_log_batches(conn, batches)
        except (DataError, IntegrityError) as exc:
            if len(todo) > 1:
                # One batch spoils the group: store each alone, so only that one is refused.
                for item in todo:
                    self.store_group([item])
                return
            data, peer = todo[0]
            self.rejected += 1
            self.log.error(
                "batch %d from %r refused by the database, not stored: %s",
                data["batch_id"],
                peer[0],
                str(exc.orig).splitlines()[0] if exc.orig else exc,
            )
            self._remember((peer[0], data["batch_id"]), 0)
            self._reply(peer, "ACK", {"batch_id": data["batch_id"], "stored": 0})
            return
        except (OperationalError, DBAPIError) as exc:
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
            return
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
        # Days someone asked to recompute are recomputed before stopping.
        if self.dirty:
            self.rollup_dirty()


__all__ = ["LogIngest"]
