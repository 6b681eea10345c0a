"""The upstream watcher: follows the upstream index so the master learns every
new release and removal by itself.

It runs :meth:`piwheels.upstream.follower.Follower.run_once` from a timer:
every ``[upstream] poll_interval``, again at once while a pass has work left
(each run is bounded by a time budget, so the task answers QUIT and PAUSE
between runs), or after the back-off the follower asks for.  What the follower
learns goes into PostgreSQL through :class:`~piwheels.db.upstream_store.DbUpstreamStore`;
once a project's changes are committed the page writer is asked to rewrite it
(``PROJECT``, ``ROOT`` when the root index changes), and upstream deletions are
carried out (``DELETE_VERSION``, ``DELETE_PACKAGE``) once no build of them is
in flight.

The upstream is ``[upstream] url`` (a PEP 691 simple index) or
``[upstream] local_path`` (a folder of sdists and wheels).  With neither the
master builds only what ``piw-add`` and ``piw-import`` give it, and the task
says so once and does nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import protocols
from ..db.upstream_store import DbUpstreamStore, PageRequest
from ..errors import PiwheelsError, TransportError
from ..settings import UpstreamSettings
from ..tasks import Endpoint, Task
from ..transport import PUSH, Context
from ..upstream.client import SimpleClient, UpstreamClient
from ..upstream.follower import Follower, RunSummary
from ..upstream.localdir import LocalDirUpstream
from .env import MasterEnv

NO_UPSTREAM = "no upstream configured: the master builds only what piw-add and piw-import give it"
#: How often the timer looks whether a run is due (runs themselves are spaced by the follower).
TICK = 0.1
#: Deletions waiting for builds in flight are looked at this often.
SWEEP_INTERVAL = 30.0
#: Back-off after a database fault, doubled each time up to [upstream] max_backoff.
DB_RETRY = 2.0


def make_client(
    settings: UpstreamSettings, *, json_url: str | None = None, settle: float = 2.0
) -> UpstreamClient | None:
    """The configured upstream (HTTP index or local folder), or None when neither is set."""
    if settings.url:
        return SimpleClient(
            settings.url, json_url=json_url, timeout=settings.timeout.total_seconds()
        )
    if settings.local_path is not None:
        return LocalDirUpstream(settings.local_path, settle=settle)
    return None


class UpstreamWatcher(Task):
    """Follows the upstream index into the database and keeps the pages in step."""

    role = "upstream_watcher"
    connects = (
        Endpoint("pages", "PUSH", "pages", "asks for pages after upstream changes and deletions"),
    )

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        client: UpstreamClient | None = None,
        json_url: str | None = None,
        budget: float = 0.5,
        batch_size: int = 200,
        workers: int = 4,
        local_settle: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.settings = env.settings.upstream
        self.budget = budget
        self.clock = clock
        self.poll_interval = self.settings.poll_interval.total_seconds()
        self.max_backoff = self.settings.max_backoff.total_seconds()
        self.pages = self.socket(PUSH, reversed(protocols.pages), name="pages")
        self.pages.connect(env.addresses["pages"])
        self.store = DbUpstreamStore(env.engine, batch_size=batch_size)
        if client is None:
            client = make_client(self.settings, json_url=json_url, settle=local_settle)
        self.client = client
        self.follower: Follower | None = None
        if client is not None:
            self.follower = Follower(
                client,
                self.store,
                clock=clock,
                workers=workers,
                reconcile_interval=self.settings.reconcile_interval.total_seconds(),
                backoff_max=self.max_backoff,
                logger=self.log,
            )
        #: For the monitor: the serial of the last complete pass (None before the first).
        self.upstream_serial: int | None = None
        #: For the monitor: how far behind upstream the master is: serials behind the
        #: upstream's own serial, or for a local folder (no global serial) the
        #: projects the current pass has still to look at.
        self.upstream_lag: int | None = None
        self.upstream_target: int | None = None  # the upstream's serial as last seen
        self.projects_done = 0  # projects recorded since start
        self.last_summary: RunSummary | None = None
        self.runs = 0
        self._next_run = 0.0
        self._db_failures = 0
        self._db_fault_logged = False
        self._outbox: list[PageRequest] = []
        self._last_sweep = 0.0
        if self.follower is not None:
            self.every(TICK, self.tick)

    # -- lifecycle ---------------------------------------------------------------------

    def setup(self) -> None:
        if self.follower is None:
            self.log.info(NO_UPSTREAM)
            return
        where = self.settings.url or str(self.settings.local_path)
        self.log.info("following upstream %s every %gs", where, self.poll_interval)
        try:
            # Pages committed before a crash but never asked for.
            self._outbox.extend(self.store.unsent_requests())
            self.upstream_serial = self.store.get_last_serial()
        except SQLAlchemyError as exc:
            self._db_fault(exc)

    def teardown(self) -> None:
        if self.follower is not None:
            try:
                self.store.flush()
            except (SQLAlchemyError, PiwheelsError) as exc:
                # Nothing is lost: the todo still holds what was not committed.
                self.log.warning("upstream: could not commit the last projects: %s", exc)
            self.follower.close()

    def on_pause(self) -> None:
        self.log.info("upstream following paused")

    def on_resume(self) -> None:
        self.log.info("upstream following resumed")
        self._next_run = 0.0

    # -- the work ----------------------------------------------------------------------

    def tick(self) -> None:
        """Run the follower when due; send what it committed; carry out deletions."""
        now = self.clock()
        if now >= self._next_run:
            self.run_once()
        elif now - self._last_sweep >= SWEEP_INTERVAL:
            self._sweep()
        self._send_pages()

    def run_once(self) -> RunSummary | None:
        """One bounded run of the follower (and its page requests and deletions)."""
        assert self.follower is not None
        self.runs += 1
        try:
            summary = self.follower.run_once(budget=self.budget)
            self.store.flush()
        except (SQLAlchemyError, PiwheelsError) as exc:
            self._take_requests()
            self._db_fault(exc)
            return None
        if self._db_failures:
            self.log.info("upstream: the database is back after %d failures", self._db_failures)
            self._db_failures = 0
            self._db_fault_logged = False
        self.last_summary = summary
        self.projects_done += summary.projects_done
        self._take_requests()
        self._sweep()
        now = self.clock()
        if summary.retry_in is not None:
            self._next_run = now + summary.retry_in
        elif self.follower.in_pass:
            self._next_run = now  # budget spent with work left: go on at the next tick
        else:
            self._next_run = now + self.poll_interval
        self._figures(summary)
        return summary

    def _figures(self, summary: RunSummary) -> None:
        if summary.complete:
            self.upstream_serial = summary.target_serial
        if summary.started and summary.target_serial is not None:
            self.upstream_target = summary.target_serial
        if isinstance(self.client, SimpleClient):
            if self.upstream_target is not None:
                self.upstream_lag = max(0, self.upstream_target - (self.upstream_serial or 0))
        elif summary.complete or summary.unchanged:
            self.upstream_lag = 0
        elif summary.target_serial is not None:
            self.upstream_lag = summary.remaining

    def _sweep(self) -> None:
        self._last_sweep = self.clock()
        try:
            self._outbox.extend(self.store.sweep_removals())
        except (SQLAlchemyError, PiwheelsError) as exc:
            self._db_fault(exc)

    def _take_requests(self) -> None:
        self._outbox.extend(self.store.take_requests())

    def _send_pages(self) -> None:
        """Hand the page writer what was committed; confirm what it was given."""
        if not self._outbox:
            return
        sent: list[PageRequest] = []
        try:
            for request in self._outbox:
                self.pages.send_msg(request.msg, request.data, timeout=0)
                sent.append(request)
        except TransportError as exc:
            # The page writer's queue is full; the rest go at the next tick
            # (never wait here: QUIT and PAUSE must be answered).
            self.log.debug("upstream: page writer not taking requests: %s", exc)
        finally:
            del self._outbox[: len(sent)]
        try:
            self.store.requests_sent(sent)
        except SQLAlchemyError as exc:
            # They stay in rewrites_pending: sent again after a restart, which is harmless.
            self.log.debug("upstream: could not confirm page requests: %s", exc)

    def _db_fault(self, exc: BaseException) -> None:
        self._db_failures += 1
        delay = min(self.max_backoff, DB_RETRY * 2 ** min(self._db_failures - 1, 20))
        self._next_run = self.clock() + delay
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if not self._db_fault_logged:
            self._db_fault_logged = True
            self.log.error("upstream: %s; retrying in %.0fs", first, delay)
        else:
            self.log.debug("upstream: %s", first)

    # -- figures -----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """What a monitor shows of the watcher."""
        return {
            "upstream_serial": self.upstream_serial,
            "upstream_lag": self.upstream_lag,
            "projects_done": self.projects_done,
        }
