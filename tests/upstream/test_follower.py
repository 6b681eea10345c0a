"""The follower against the stand-in server: events, faults, restarts, scale."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from piwheels.upstream.client import SimpleClient
from piwheels.upstream.events import (
    Event,
    FilesAdded,
    FilesRemoved,
    KnownRelease,
    NewAlias,
    NewProject,
    NewRelease,
    ProjectRemoved,
    ProjectStatus,
    ReleaseRemoved,
    Summary,
    Unyank,
    Yank,
)
from piwheels.upstream.follower import Follower
from piwheels.upstream.memory import MemoryStore
from tests.upstream.conftest import FakeClock, run_until_complete
from tests.upstream.server import UpstreamModel, UpstreamServer

REPO = Path(__file__).resolve().parents[2]


def events_of(store: MemoryStore, since: int = 0) -> list[Event]:
    return [e for _, e in store.log[since:]]


def fresh_sync(server: UpstreamServer) -> MemoryStore:
    """What a follower starting from nothing learns now (the reference state)."""
    store = MemoryStore()
    follower = Follower(SimpleClient(server.index_url, json_url=server.json_url), store)
    assert follower.run_once().complete
    follower.close()
    return store


def test_each_event_kind(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("Foo.Bar", summary="first")
    model.add_release("foo-bar", "1.0", ["foo_bar-1.0-py3-none-any.whl"], requires_python=">=3.9")
    model.add_project("gone")
    model.add_release("gone", "0.1")
    model.add_project("other")
    model.add_release("other", "1.0")
    model.add_release("other", "2.0")
    follower = make_follower()
    (run,) = run_until_complete(follower, clock)
    assert run.started and run.projects_changed == 3
    first = events_of(store)
    assert Counter(type(e).__name__ for e in first) == {
        "NewProject": 3,
        "NewRelease": 4,
        "Summary": 1,
        "NewAlias": 1,
    }
    assert NewAlias("foo-bar", "Foo.Bar") in first
    (wheel_only,) = [e for e in first if isinstance(e, NewRelease) and e.name == "foo-bar"]
    assert wheel_only.wheel_only and wheel_only.wheel_tags == ("py3-none-any",)
    assert wheel_only.requires_python == ">=3.9" and wheel_only.released is not None
    assert store.last_serial == model.serial

    mark = len(store.log)
    model.add_file("foo-bar", "1.0", "foo_bar-1.0.tar.gz")  # a late sdist
    model.remove_file("foo-bar", "1.0", "foo_bar-1.0-py3-none-any.whl")
    model.set_summary("foo-bar", "second")
    model.add_release("foo-bar", "2.0")  # new release: the summary is read again
    model.yank("other", "1.0", "broken")
    model.remove_release("other", "2.0")
    model.remove_project("gone")
    model.set_display_name("other", "OTHER")
    model.set_status("other", "archived", "no longer maintained")
    run_until_complete(follower, clock)
    second = events_of(store, mark)
    assert FilesAdded in {type(e) for e in second}
    (added,) = [e for e in second if isinstance(e, FilesAdded)]
    assert added.has_sdist and [f.filename for f in added.files] == ["foo_bar-1.0.tar.gz"]
    assert FilesRemoved("foo-bar", "1.0", ("foo_bar-1.0-py3-none-any.whl",), True, ()) in second
    assert Summary("foo-bar", "second") in second
    assert Yank("other", "1.0", "broken") in second
    assert ReleaseRemoved("other", "2.0") in second
    assert ProjectRemoved("gone") in second
    assert ProjectStatus("other", "archived", "no longer maintained") in second
    assert NewAlias("other", "OTHER") in second
    assert [e.version for e in second if isinstance(e, NewRelease)] == ["2.0"]

    mark = len(store.log)
    model.unyank("other", "1.0")
    model.set_status("other", "quarantined", "under review")
    run_until_complete(follower, clock)
    # Quarantine hides the files (so the unyank cannot be seen yet) but the
    # release is kept for when it clears.
    assert events_of(store, mark) == [ProjectStatus("other", "quarantined", "under review")]
    known = store.get_known("other")
    assert known is not None and set(known.releases) == {"1.0"}
    mark = len(store.log)
    model.set_status("other", "active")
    run_until_complete(follower, clock)
    assert events_of(store, mark) == [
        ProjectStatus("other", "active", None),
        Unyank("other", "1.0"),
    ]
    # Whatever path we took, the state is what a fresh follower sees now.
    reference = fresh_sync(server)
    assert {n: (k.releases, k.status, k.summary) for n, k in store.known.items()} == {
        n: (k.releases, k.status, k.summary) for n, k in reference.known.items()
    }
    assert store.serials == reference.serials
    assert store.last_serial == model.serial


def test_nothing_changed_costs_one_root_request(
    model: UpstreamModel,
    server: UpstreamServer,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("foo")
    follower = make_follower()
    run_until_complete(follower, clock)
    before = len(server.requests)
    run = follower.run_once()
    assert run.unchanged and not run.started
    assert server.paths()[before:] == ["/simple/"]


def test_serial_only_bump_gives_no_events(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("foo")
    model.add_release("foo", "1.0")
    follower = make_follower()
    run_until_complete(follower, clock)
    mark = len(store.log)
    model.bump("foo")
    (run,) = run_until_complete(follower, clock)
    assert run.projects_changed == 1 and run.projects_done == 1
    assert events_of(store, mark) == []
    assert store.serials["foo"] == model.serial


GLOBAL_FAULTS = [
    ("429", {"retry_after": 30}, "rate-limited"),
    ("500", {}, "server-error"),
    ("slow", {"delay": 0.5}, "timeout"),
]
PROJECT_FAULTS = [
    ("truncate", {}, "truncated"),
    ("invalid-json", {}, "invalid"),
    ("stale", {}, "stale"),
]


@pytest.mark.parametrize(("fault", "options", "kind"), GLOBAL_FAULTS + PROJECT_FAULTS)
def test_fault_backs_off_logs_once_and_recovers(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    fault: str,
    options: dict[str, Any],
    kind: str,
) -> None:
    for name in ("aaa", "bbb", "ccc"):
        model.add_project(name)
        model.add_release(name, "1.0")
    # A short timeout only where the fault is slowness: on a loaded machine it would
    # otherwise add timeout faults to the one under test.
    timeout = 0.25 if fault == "slow" else 10.0
    client = SimpleClient(server.index_url, json_url=server.json_url, timeout=timeout)
    follower = make_follower(client=client, workers=1)
    times = 4
    # The stale fault must outlast the client's own immediate retries.
    hits = times * (client.stale_retries + 1) if fault == "stale" else times
    server.add_fault("/simple/bbb/", fault, times=hits, **options)
    caplog.set_level(logging.DEBUG, logger="piwheels.upstream")
    runs = run_until_complete(follower, clock)
    # Every run but the last saw the fault, and none moved the serial.
    assert all(r.faults[kind] >= 1 for r in runs[:-1])
    assert sum(r.faults[kind] for r in runs) == times
    assert all(not r.complete for r in runs[:-1]) and runs[-1].complete
    assert all(r.retry_in is not None and r.retry_in > 0 for r in runs[:-1])
    if fault == "429":
        assert all(r.retry_in is not None and r.retry_in >= 30 for r in runs[:-1])
    # Nothing was skipped and nothing recorded twice.
    assert sorted(n for n, _ in store.applied) == ["aaa", "bbb", "ccc"]
    assert store.last_serial == model.serial
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([r for r in warnings if f"({kind})" in r.getMessage()]) == 1, warnings
    cleared = [r for r in caplog.records if f"{kind} faults cleared" in r.getMessage()]
    assert len(cleared) == 1


def test_serial_not_advanced_while_fault_persists(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("good")
    model.add_project("bad")
    follower = make_follower()
    server.add_fault("/simple/bad/", "invalid-json", times=None)
    for _ in range(6):
        run = follower.run_once()
        assert not run.complete
        assert store.last_serial is None
        clock.advance(run.retry_in or 0)
    # A broken page holds the pass open but not the other projects.
    assert "good" in store.known and "bad" not in store.known
    assert store.todo is not None and set(store.todo[1]) == {"bad"}
    server.clear_faults()
    run_until_complete(follower, clock)
    assert store.last_serial == model.serial and "bad" in store.known


def test_root_faults_start_no_pass(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("foo")
    follower = make_follower()
    run_until_complete(follower, clock)
    model.add_release("foo", "1.0")
    server.add_fault("/simple/", "stale", lag=2)  # older than the last pass
    run = follower.run_once()
    assert run.faults == {"stale-root": 1} and not run.started and store.todo is None
    clock.advance(run.retry_in or 0)
    server.add_fault("/simple/", "500")
    run = follower.run_once()
    assert run.faults == {"server-error": 1} and store.todo is None
    clock.advance(run.retry_in or 0)
    runs = run_until_complete(follower, clock)
    assert runs[-1].events == {"NewRelease": 1}


def test_project_deleted_mid_pass(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    for name in ("keep", "doomed", "newborn"):
        model.add_project(name)
        model.add_release(name, "1.0")
    model.remove_project("newborn")
    follower = make_follower()
    run_until_complete(follower, clock)
    model.add_release("doomed", "2.0")
    model.add_project("newborn")
    # The root lists both, but they are gone when their pages are asked for.
    server.add_fault("/simple/doomed/", "delete")
    server.add_fault("/simple/newborn/", "delete")
    mark = len(store.log)
    run_until_complete(follower, clock)
    assert events_of(store, mark) == [ProjectRemoved("doomed")]
    assert set(store.known) == {"keep"}
    run_until_complete(follower, clock)
    assert events_of(store, mark) == [ProjectRemoved("doomed")]  # not twice


class Killed(BaseException):
    """Stands for the process dying: not an Exception, nothing catches it."""


class DyingStore(MemoryStore):
    """A store whose process dies after *after* applies."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def apply(self, events: Sequence[Event], name: str, serial: int | None) -> None:
        if self.after <= 0:
            raise Killed()
        self.after -= 1
        super().apply(events, name, serial)


@pytest.mark.parametrize("after", [0, 1, 37])
def test_restart_mid_pass_resumes(
    model: UpstreamModel, server: UpstreamServer, clock: FakeClock, after: int
) -> None:
    names = model.generate(60, prefix="r", extra_release=60)
    store = DyingStore(after)
    first = Follower(SimpleClient(server.index_url), store, clock=clock, fetch_info=False)
    with pytest.raises(Killed):
        first.run_once()
    first.close()
    assert store.last_serial is None
    assert store.todo is not None and len(store.todo[1]) == 60 - after
    requests_before = len(server.requests)
    # A new process over the same (persistent) store.
    store.after = 10**9
    second = Follower(SimpleClient(server.index_url), store, clock=clock, fetch_info=False)
    run = second.run_once()
    second.close()
    assert run.resumed and run.complete and run.projects_done == 60 - after
    # It did not re-read the root: the todo was the plan.
    assert "/simple/" not in server.paths()[requests_before:]
    assert sorted(n for n, _ in store.applied) == sorted(names)
    assert Counter(type(e).__name__ for _, e in store.log) == {"NewProject": 60, "NewRelease": 120}
    assert store.last_serial == model.serial and store.todo is None


def test_hostile_names_in_root(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model.add_project("fine")
    model.add_raw_root_entry("x" * 5000)
    model.add_raw_root_entry("../../etc/passwd")
    model.add_raw_root_entry("has space")
    model.add_raw_root_entry(["not", "a", "name"])
    model.add_raw_root_entry("ok-name", serial="NaN")
    model.add_project("also-fine")
    caplog.set_level(logging.INFO, logger="piwheels.upstream")
    (run,) = run_until_complete(make_follower(), clock)
    assert run.complete and run.rejected_names == 5
    assert set(store.known) == {"fine", "also-fine"}
    lines = [r.getMessage() for r in caplog.records if "invalid project names" in r.getMessage()]
    assert len(lines) == 1
    assert "skipped 5 invalid project names" in lines[0] and "\n" not in lines[0]
    assert len(lines[0]) < 500  # the 5000-character name is cut short
    # No page was requested for any of them.
    assert sorted(p for p in server.paths("/simple/*/")) == ["/simple/also-fine/", "/simple/fine/"]


def test_reconciliation_pass_catches_what_serials_missed(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.add_project("foo")
    model.add_release("foo", "1.0")
    model.add_release("foo", "2.0")
    model.add_project("bar")
    follower = make_follower(reconcile_interval=3600)
    run_until_complete(follower, clock)
    # Lose a release behind the serials' back (an event missed long ago).
    known = store.known["foo"]
    store.known["foo"] = type(known)(
        known.name, known.serial, {"1.0": KnownRelease("1.0", known.releases["1.0"].files)}
    )
    model.add_release("bar", "1.0")
    run = run_until_complete(follower, clock)[-1]
    assert run.projects_changed == 1 and run.events == {"NewRelease": 1}  # bar only
    clock.advance(3600)
    run = run_until_complete(follower, clock)[-1]
    assert run.projects_changed == 2 and run.events == {"NewRelease": 1}  # foo 2.0 again
    assert set(store.known["foo"].releases) == {"1.0", "2.0"}


def test_budget_and_max_projects_bound_a_run(
    model: UpstreamModel,
    server: UpstreamServer,
    store: MemoryStore,
    make_follower: Callable[..., Follower],
    clock: FakeClock,
) -> None:
    model.generate(50, prefix="b")
    follower = make_follower(fetch_info=False, workers=2)
    run = follower.run_once(max_projects=20)
    assert run.started and run.projects_done == 20 and run.remaining == 30
    assert store.last_serial is None and follower.in_pass
    run = follower.run_once(budget=0)
    assert run.projects_done == 0 and run.remaining == 30
    run = follower.run_once()
    assert run.complete and run.projects_done == 30 and store.last_serial == model.serial


def test_ten_thousand_changed_projects(tmp_path: Path, clock: FakeClock) -> None:
    # The server runs in its own process, as the real upstream would.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.upstream.server",
            "--generate",
            "10000",
            "--extra-release",
            "500",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        index_url = proc.stdout.readline().strip()
        assert index_url.startswith("http://127.0.0.1:")
        store = MemoryStore()
        follower = Follower(
            SimpleClient(index_url), store, clock=clock, fetch_info=False, workers=4
        )
        run = follower.run_once()
        assert run.complete and run.projects_changed == 10000 and run.projects_done == 10000
        assert run.events == {"NewProject": 10000, "NewRelease": 10500}
        assert len(store.applied) == 10000 and len({n for n, _ in store.applied}) == 10000
        assert store.last_serial == 10000
        # The next pass finds nothing to do.
        follower._etag = None  # force a full read of the root
        run = follower.run_once()
        assert run.complete and run.projects_changed == 0
        follower.close()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def get_project_serials(self) -> Mapping[str, int]:
        self.calls["serials"] += 1
        return super().get_project_serials()


def test_store_failure_leaves_todo_as_truth(
    model: UpstreamModel, server: UpstreamServer, clock: FakeClock
) -> None:
    model.generate(10, prefix="s")

    class FlakyStore(CountingStore):
        fail = True

        def apply(self, events: Sequence[Event], name: str, serial: int | None) -> None:
            if self.fail and name == "s-0000004":
                raise RuntimeError("database went away")
            super().apply(events, name, serial)

    store = FlakyStore()
    follower = Follower(
        SimpleClient(server.index_url), store, clock=clock, fetch_info=False, workers=1
    )
    with pytest.raises(RuntimeError):
        follower.run_once()
    store.fail = False
    run = follower.run_once()
    assert run.resumed and run.complete
    assert len(store.applied) == 10 and len({n for n, _ in store.applied}) == 10
    assert Counter(type(e) for _, e in store.log) == {NewProject: 10, NewRelease: 10}
