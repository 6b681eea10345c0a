"""The sync engine: follow an upstream index by serial without losing our place.

A pass reads the root listing, compares each project's ``_last-serial`` with
the serial stored for it, and writes the list of projects to look at (the
*todo*) to the store before doing anything else.  Each project is then fetched,
diffed and applied atomically (which also takes it off the todo); the stored
last serial moves only when the todo is empty.  A restart picks the todo up
where it was left.

Faults never stop the follower and never drop a project: a fault of the whole
upstream (429, 5xx, timeouts, connections) ends the run and backs off; a fault
of one page (truncated, invalid, stale) backs that project off and the pass
carries on.  Each fault kind is logged once until it clears.

The follower never sleeps: the caller runs :meth:`Follower.run_once` from a
timer (and may wait :attr:`RunSummary.retry_in` before the next call).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Protocol

from piwheels.errors import InvalidName
from piwheels.upstream.client import UpstreamClient
from piwheels.upstream.events import (
    Event,
    KnownProject,
    NewProject,
    NewRelease,
    ProjectRemoved,
    diff_project,
)
from piwheels.upstream.faults import RateLimited, StaleRoot, UpstreamFault
from piwheels.upstream.pages import canonical_name

log = logging.getLogger("piwheels.upstream")

REMOVED = -1  # todo value: the project is absent from the root


class UpstreamStore(Protocol):
    """Where the follower keeps its place and records what it learns.

    A database-backed store does each method in one transaction.
    """

    def get_last_serial(self) -> int | None:
        """Serial of the last complete pass (None before the first)."""
        ...

    def get_project_serials(self) -> Mapping[str, int]:
        """Every known project (canonical name) with its stored serial."""
        ...

    def get_known(self, name: str) -> KnownProject | None:
        """What is known of *name*, or None."""
        ...

    def apply(self, events: Sequence[Event], name: str, serial: int | None) -> None:
        """Atomically: record *events* for *name*, store its *serial* (None: forget
        the project), and take *name* off the todo."""
        ...

    def save_todo(self, target_serial: int, names: Mapping[str, int]) -> None:
        """Replace the todo: the pass reaches *target_serial* once every name in
        *names* (name -> serial the root promised, -1 for removed) is applied."""
        ...

    def load_todo(self) -> tuple[int, dict[str, int]] | None:
        """The unfinished todo (target serial, names left), or None."""
        ...

    def set_last_serial(self, serial: int) -> None:
        """The pass to *serial* is complete: record it and drop the todo."""
        ...


@dataclass
class RunSummary:
    """What one :meth:`Follower.run_once` did."""

    started: bool = False  # a new pass began (the root was read and diffed)
    resumed: bool = False  # an unfinished todo was loaded from the store
    unchanged: bool = False  # the root had not changed (ETag)
    complete: bool = False  # the pass finished and the last serial moved
    target_serial: int | None = None
    projects_changed: int = 0  # projects in the todo when this pass started
    projects_done: int = 0
    remaining: int = 0
    events: Counter[str] = field(default_factory=Counter)  # by event class name
    faults: Counter[str] = field(default_factory=Counter)  # by fault kind
    rejected_names: int = 0
    diff_seconds: float = 0.0
    retry_in: float | None = None  # backing off: call again after this long

    def __str__(self) -> str:
        events = ", ".join(f"{k}={v}" for k, v in sorted(self.events.items())) or "none"
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"serial {self.target_serial}: {self.projects_done} projects done, "
            f"{self.remaining} left; events {events}; faults {faults}"
        )


@dataclass
class _Pass:
    target: int
    pending: dict[str, int]
    queue: deque[str]
    spellings: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, tuple[int, float]] = field(default_factory=dict)  # failures, retry at


@dataclass
class _Result:
    events: list[Event]
    serial: int | None


class Follower:
    """Follows *client*'s index into *store*.

    *clock* is a monotonic clock in seconds and *rng* supplies the jitter (both
    injectable for tests).  *workers* pages are fetched at once; the store is
    only ever called from the thread that calls :meth:`run_once`.
    *reconcile_interval* (seconds, None: never) makes a pass look at every
    project in the root, not just those whose serial moved, to catch anything
    missed.  *fetch_info*: ask for the project JSON (summary, display name)
    when a project or release is new.
    """

    def __init__(
        self,
        client: UpstreamClient,
        store: UpstreamStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        workers: int = 4,
        reconcile_interval: float | None = None,
        backoff_base: float = 2.0,
        backoff_max: float = 900.0,
        fetch_info: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.client = client
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.workers = workers
        self.reconcile_interval = reconcile_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.fetch_info = fetch_info
        self.log = logger or log
        self._pass: _Pass | None = None
        self._etag: str | None = None
        self._last_reconcile = clock()
        self._retry_at = 0.0
        self._global_failures = 0
        self._active: Counter[str] = Counter()  # fault kinds logged and not yet cleared
        self._scopes: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None

    # ---- public ------------------------------------------------------------

    def run_once(
        self, *, budget: float | None = None, max_projects: int | None = None
    ) -> RunSummary:
        """Do some work: start or resume a pass and process projects until the pass
        is complete, a global fault stops it, *budget* seconds have passed or
        *max_projects* projects were started.  Never raises an upstream fault."""
        summary = RunSummary()
        now = self.clock()
        if now < self._retry_at:
            summary.retry_in = self._retry_at - now
            return summary
        try:
            if self._pass is None and not self._resume(summary) and not self._start(summary):
                return summary
            assert self._pass is not None
            self._work(self._pass, summary, budget, max_projects)
        except BaseException:
            # The store may have failed mid-way; the todo it holds is the truth.
            self._pass = None
            raise
        return summary

    def close(self) -> None:
        """Stop the fetch threads and close the client."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.client.close()

    @property
    def in_pass(self) -> bool:
        """True while a pass is unfinished."""
        return self._pass is not None

    # ---- starting a pass ---------------------------------------------------

    def _resume(self, summary: RunSummary) -> bool:
        loaded = self.store.load_todo()
        if loaded is None:
            return False
        target, pending = loaded
        self._pass = _Pass(target, dict(pending), deque(sorted(pending, key=pending.__getitem__)))
        summary.resumed = True
        summary.target_serial = target
        summary.projects_changed = len(pending)
        self.log.info(
            "upstream: resuming pass to serial %d, %d projects left", target, len(pending)
        )
        return True

    def _start(self, summary: RunSummary) -> bool:
        now = self.clock()
        reconcile = (
            self.reconcile_interval is not None
            and now - self._last_reconcile >= self.reconcile_interval
        )
        try:
            root = self.client.get_root(etag=None if reconcile else self._etag)
        except UpstreamFault as exc:
            self._fault(exc, summary)
            return False
        self._succeeded()
        if root is None:
            summary.unchanged = True
            return False
        last = self.store.get_last_serial()
        if root.serial is not None and last is not None and root.serial < last:
            self._fault(
                StaleRoot(
                    f"root listing has serial {root.serial}, older than {last}",
                    serial=root.serial,
                    expected=last,
                ),
                summary,
            )
            return False
        if root.rejected:
            shown = ", ".join(repr(n[:60] + "..." if len(n) > 60 else n) for n in root.rejected[:5])
            self.log.warning(
                "upstream root: skipped %d invalid project names: %s%s",
                len(root.rejected),
                shown,
                ", ..." if len(root.rejected) > 5 else "",
            )
        summary.rejected_names = len(root.rejected)
        started = time.perf_counter()
        stored = self.store.get_project_serials()
        projects = root.projects
        if reconcile:
            pending = dict(projects)
        else:
            pending = {
                name: serial for name, serial in projects.items() if serial > stored.get(name, -1)
            }
        for name in stored:
            if name not in projects:
                pending[name] = REMOVED
        summary.diff_seconds = time.perf_counter() - started
        target = max(root.target_serial, last or 0)
        self.store.save_todo(target, pending)
        spellings = {n: root.spellings[n] for n in pending if n in root.spellings}
        queue = deque(sorted(pending, key=pending.__getitem__))
        self._pass = _Pass(target, pending, queue, spellings)
        self._etag = root.etag
        if reconcile:
            self._last_reconcile = now
        summary.started = True
        summary.target_serial = target
        summary.projects_changed = len(pending)
        if pending:
            self.log.info(
                "upstream: %s pass to serial %d: %d of %d projects to look at",
                "reconciliation" if reconcile else "new",
                target,
                len(pending),
                len(projects),
            )
        return True

    # ---- working through the todo ------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="upstream-fetch")
        return self._pool

    def _work(
        self, state: _Pass, summary: RunSummary, budget: float | None, max_projects: int | None
    ) -> None:
        start = self.clock()
        pool = self._executor()
        inflight: dict[Future[_Result], str] = {}
        deferred: list[str] = []
        submitted = 0
        stop = False
        while True:
            # After a global fault, one request at a time (the one that failed goes first)
            # probes the upstream until something works: a sick upstream is not flooded,
            # and a success elsewhere cannot clear the fault while the failing page still
            # fails, which would log the same fault again and again.
            window = 1 if self._global_failures else self.workers * 2
            while not stop and state.queue and len(inflight) < window:
                now = self.clock()
                if (budget is not None and now - start >= budget) or (
                    max_projects is not None and submitted >= max_projects
                ):
                    stop = True
                    break
                name = state.queue.popleft()
                wait_info = state.waiting.get(name)
                if wait_info is not None and wait_info[1] > now:
                    deferred.append(name)
                    continue
                known = self.store.get_known(name)
                future = pool.submit(
                    self._fetch, name, state.pending[name], known, state.spellings.get(name)
                )
                inflight[future] = name
                submitted += 1
            if not inflight:
                break
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                name = inflight.pop(future)
                try:
                    result = future.result()
                except UpstreamFault as exc:
                    self._fault(exc, summary, name, state)
                    # Never skipped: retried later, first if it is the probe of a global fault.
                    if exc.scope == "global":
                        state.queue.appendleft(name)
                        stop = True
                    else:
                        state.queue.append(name)
                    continue
                except Exception as exc:
                    # Something this code did not foresee in the data: keep the
                    # project in the todo, say so once, keep the pass going.
                    self._fault(_Internal(f"{exc.__class__.__name__}: {exc}"), summary, name, state)
                    state.queue.append(name)
                    continue
                self.store.apply(result.events, name, result.serial)
                del state.pending[name]
                state.waiting.pop(name, None)
                state.spellings.pop(name, None)
                summary.projects_done += 1
                summary.events.update(type(e).__name__ for e in result.events)
                if self.clock() >= self._retry_at:
                    self._succeeded()
        state.queue.extend(deferred)
        summary.target_serial = state.target
        summary.remaining = len(state.pending)
        if not state.pending:
            self.store.set_last_serial(state.target)
            self._pass = None
            summary.complete = True
            for kind, count in sorted(self._active.items()):
                self.log.info("upstream: %s faults cleared after %d", kind, count)
            self._active.clear()
            self._scopes.clear()
            if summary.projects_done or summary.started:
                self.log.info("upstream: pass complete, %s", summary)
        elif (
            summary.retry_in is None and state.waiting and len(state.waiting) == len(state.pending)
        ):
            # Only backed-off projects are left: say when the first is due.
            due = min(retry_at for _, retry_at in state.waiting.values())
            summary.retry_in = max(0.0, due - self.clock())

    def _fetch(
        self, name: str, expected: int, known: KnownProject | None, spelling: str | None
    ) -> _Result:
        """Fetch and diff one project (runs in a fetch thread; no store calls)."""
        gone = _Result([ProjectRemoved(name)] if known is not None else [], None)
        if expected == REMOVED:
            return gone
        page = self.client.get_project(name, min_serial=expected)
        if page is None:
            # Deleted between the root and now (or never published a page).
            return gone
        if spelling:
            page = replace(page, display_name=spelling)
        if page.rejected:
            self.log.debug("upstream: %s: ignored %d invalid entries", name, len(page.rejected))
        events = diff_project(known, page)
        if self.fetch_info and any(isinstance(e, (NewProject, NewRelease)) for e in events):
            info = self.client.get_info(name)
            if info is not None:
                display = page.display_name
                try:
                    if canonical_name(info.name) == name:
                        display = info.name
                except InvalidName:
                    pass
                page = replace(page, display_name=display, summary=info.summary)
                events = diff_project(known, page)
        return _Result(events, page.serial if page.serial is not None else expected)

    # ---- faults ------------------------------------------------------------

    def _delay(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(failures - 1, 30))
        # Full jitter on the upper half keeps many followers from retrying in step.
        return delay * (0.5 + self.rng.random() / 2)

    def _fault(
        self,
        exc: UpstreamFault,
        summary: RunSummary,
        name: str | None = None,
        state: _Pass | None = None,
    ) -> None:
        kind = exc.kind
        summary.faults[kind] += 1
        if kind not in self._active:
            self.log.warning("upstream fault (%s): %s; backing off and retrying", kind, exc)
        else:
            self.log.debug("upstream fault (%s): %s", kind, exc)
        self._active[kind] += 1
        self._scopes[kind] = exc.scope
        now = self.clock()
        if exc.scope == "global":
            # Requests already in flight when the upstream fell over fail too:
            # count one failure per backoff, not one per request.
            if now >= self._retry_at:
                self._global_failures += 1
            delay = self._delay(self._global_failures)
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            self._retry_at = max(self._retry_at, now + delay)
            summary.retry_in = self._retry_at - now
        elif name is not None and state is not None:
            failures = state.waiting.get(name, (0, 0.0))[0] + 1
            state.waiting[name] = (failures, now + self._delay(failures))

    def _succeeded(self) -> None:
        """A request worked: the upstream as a whole is well again."""
        if self._global_failures:
            self._global_failures = 0
            for kind in [k for k, scope in self._scopes.items() if scope == "global"]:
                del self._scopes[kind]
                self.log.info("upstream: %s faults cleared after %d", kind, self._active.pop(kind))


class _Internal(UpstreamFault):
    kind = "internal"
    scope = "project"
