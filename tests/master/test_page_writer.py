"""The page writer's full rewrite on real PostgreSQL: pool workers, progress, requests meanwhile.

The tests drive the task with ``poll(0)`` from scripted peers: one plays the tasks that
push page requests, one the admin gateway's rewrite_progress socket.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from piwheels import protocols
from piwheels.db import abis, packages, projects, versions
from piwheels.master import page_writer as page_writer_mod
from piwheels.master.env import MasterEnv
from piwheels.master.page_writer import PageWriter
from piwheels.transport import PULL, PUSH, Context, Received
from piwheels.web.writer import PageCoalescer
from tests.admin.harness import fresh_engine, make_env, publish_build
from tests.peer import ScriptedPeer, wait_for


@dataclass
class Rig:
    env: MasterEnv
    engine: Any
    writer: PageWriter
    pages: ScriptedPeer
    progress: ScriptedPeer
    output: Path
    number: int = 0

    def rewrite(self) -> int:
        """Ask for a full rewrite (as the admin gateway does); returns its number."""
        self.number += 1
        self.pages.send("ALL", {"rewrite": self.number, "reply_to": self.progress.address})
        return self.number

    def outcome(self, timeout: float = 60.0) -> tuple[list[dict[str, Any]], Received]:
        """Every PROGRESS up to the DONE, and the DONE."""
        seen = []
        while True:
            got = self.progress.recv(timeout)
            if got.msg == "DONE":
                return seen, got
            seen.append(got.data)

    def page(self, name: str) -> str:
        return (self.output / f"project/{name}/index.html").read_text()

    def add(self, name: str, *vers: str) -> None:
        with self.engine.begin() as conn:
            packages.add_package(conn, name)
            for v in vers:
                versions.add_version(conn, name, v, released_at=datetime(2025, 1, 1, tzinfo=UTC))


@pytest.fixture
def rig(new_database: Any, tmp_short: Path, tmp_path: Path) -> Iterator[Rig]:
    engine = fresh_engine(new_database)
    with engine.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
    output = tmp_path / "www"
    env = make_env(engine, output, tmp_short, page_workers=2)
    context = Context()
    writer = PageWriter(context, env)
    pages = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=env.addresses["pages"])
    progress = ScriptedPeer(
        context,
        PULL,
        protocols.rewrite_progress,
        bind=f"inproc://rewrite-progress-{uuid.uuid4().hex[:8]}",
        drive=(writer,),
    )
    yield Rig(env, engine, writer, pages, progress, output)
    for peer in (pages, progress):
        peer.close()
    writer.close()
    context.close()
    engine.dispose()


def test_full_rewrite_in_worker_processes(rig: Rig) -> None:
    names = [f"proj{i}" for i in range(7)]
    for name in names:
        rig.add(name, "1.0", "2.0")
    with rig.engine.begin() as conn:
        publish_build(conn, rig.output, "proj3", "2.0")
    rig.writer.chunk_size = 2  # four chunks over two worker processes
    assert rig.writer.workers == 2
    number = rig.rewrite()
    seen, done = rig.outcome()
    assert done.data["code"] == "REBUILT", done.data
    assert done.data["rewrite"] == number and done.data["written"] == 7
    for name in names:
        for page in (f"project/{name}/index.html", f"project/{name}/json/index.json"):
            assert (rig.output / page).exists(), page
        assert (rig.output / f"simple/{name}/index.html").exists(), name
    assert (
        "proj3-2.0-cp311-cp311-linux_armv7l.whl"
        in (rig.output / "simple/proj3/index.html").read_text()
    )
    # The site pages follow the projects (the root index lists those with files).
    assert "proj3" in (rig.output / "simple/index.html").read_text()
    assert (rig.output / "sitemap.xml").exists()
    # Progress reached the requester: from nothing to every project, never backwards.
    assert {p["total"] for p in seen} == {7} and all(p["rewrite"] == number for p in seen)
    done_counts = [p["done"] for p in seen]
    assert done_counts[0] == 0 and done_counts[-1] == 7 and done_counts == sorted(done_counts)


def test_requests_during_a_rewrite_are_served_and_win(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk pass reads alpha, then alpha changes and is written, then the pass writes
    what it read: alpha is written once more afterwards.  beta is deleted meanwhile."""
    rig.add("alpha", "1.0")
    rig.add("beta", "1.0")
    rig.writer.workers = 1  # the loader below must stay in this process
    loaded, gate = threading.Event(), threading.Event()

    class HeldLoader(projects.ProjectLoader):
        def __call__(self, names: list[str]) -> list[Any]:
            got = super().__call__(names)
            loaded.set()
            gate.wait(30)
            return got

    monkeypatch.setattr(page_writer_mod, "ProjectLoader", HeldLoader)
    rig.rewrite()
    wait_for(loaded.is_set, drive=(rig.writer,))
    assert rig.writer.rewrite is not None
    rig.add("alpha", "2.0")
    rig.pages.send("PROJECT", {"package": "alpha"})
    rig.pages.send("LOG", {"build_id": 7, "log": "a log written meanwhile"})
    wait_for(lambda: (rig.output / "project/alpha/index.html").exists(), drive=(rig.writer,))
    assert "2.0" in rig.page("alpha")
    assert rig.writer.rewrite is not None  # served while the rewrite was still running
    rig.pages.send("DELETE_PACKAGE", {"package": "beta"})
    wait_for(
        lambda: rig.writer.rewrite is not None and "beta" in rig.writer.rewrite.deleted,
        drive=(rig.writer,),
    )
    gate.set()
    _, done = rig.outcome()
    assert done.data["code"] == "REBUILT" and done.data["written"] == 2
    rig.writer.flush(force=True)
    assert "2.0" in rig.page("alpha")
    assert not (rig.output / "project/beta").exists()
    assert not (rig.output / "simple/beta").exists()
    assert list(rig.output.glob("logs/**/*.gz"))


def test_a_second_rewrite_while_one_runs_is_refused(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.add("alpha", "1.0")
    gate = threading.Event()
    real = rig.writer._run_rewrite

    def held(*args: Any) -> None:
        gate.wait(30)
        real(*args)

    monkeypatch.setattr(rig.writer, "_run_rewrite", held)
    first = rig.rewrite()
    assert rig.progress.expect("PROGRESS").data["total"] == 1
    second = rig.rewrite()
    refused = rig.progress.expect("DONE").data
    assert refused["rewrite"] == second and refused["code"] == "BUSY"
    gate.set()
    _, done = rig.outcome()
    assert done.data["rewrite"] == first and done.data["code"] == "REBUILT"


def test_a_failed_rewrite_says_why(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.add("alpha", "1.0")
    rig.writer.workers = 1

    class BrokenLoader(projects.ProjectLoader):
        def __call__(self, names: list[str]) -> list[Any]:
            raise RuntimeError("database went away")

    monkeypatch.setattr(page_writer_mod, "ProjectLoader", BrokenLoader)
    rig.rewrite()
    _, done = rig.outcome()
    assert done.data["code"] == "FAILED"
    assert "database went away" in done.data["message"]
    assert rig.writer.rewrite is None
    # The task carries on: a later rewrite works.
    monkeypatch.undo()
    rig.rewrite()
    _, done = rig.outcome()
    assert done.data["code"] == "REBUILT"


def test_a_rewrite_without_a_requester_still_runs(rig: Rig) -> None:
    rig.add("alpha", "1.0")
    rig.pages.send("ALL", {"rewrite": 1, "reply_to": None})
    wait_for(lambda: rig.writer.rewrite is not None, drive=(rig.writer,))
    wait_for(lambda: rig.writer.rewrite is None, drive=(rig.writer,), timeout=60)
    assert (rig.output / "project/alpha/index.html").exists()


def _root_names(rig: Rig) -> set[str]:
    doc = json.loads((rig.output / "simple/index.json").read_bytes())
    return {p["name"] for p in doc["projects"]}


def test_root_index_rewritten_only_when_the_published_set_changes(rig: Rig) -> None:
    rig.add("alpha", "1.0")
    rig.add("beta", "1.0")
    rig.writer.write_root()
    assert _root_names(rig) == set()
    base = rig.writer.root_writes
    # Pages of a project without files: the root index lists nothing new.
    rig.pages.send("PROJECT", {"package": "beta"})
    wait_for(lambda: (rig.output / "project/beta/index.html").exists(), drive=(rig.writer,))
    rig.writer.flush(force=True)
    assert rig.writer.root_writes == base and not rig.writer.root_dirty
    # alpha gets a wheel: written by the site process, and now listed.
    with rig.engine.begin() as conn:
        publish_build(conn, rig.output, "alpha", "1.0")
    rig.pages.send("PROJECT", {"package": "alpha"})
    wait_for(lambda: (rig.output / "project/alpha/index.html").exists(), drive=(rig.writer,))
    rig.writer.flush(force=True)
    assert rig.writer.root_writes == base + 1
    assert _root_names(rig) == {"alpha"}
    assert (
        "alpha-1.0-cp311-cp311-linux_armv7l.whl"
        in (rig.output / "simple/alpha/index.html").read_text()
    )
    # Written again with the same files: the root index is left alone.
    rig.pages.send("PROJECT", {"package": "alpha"})
    rig.pages.send("PROJECT", {"package": "beta"})
    for _ in range(5):
        rig.writer.poll(0.01)
    rig.writer.flush(force=True)
    assert rig.writer.root_writes == base + 1
    # A deletion changes the set; the page asked for just before it is not written after it.
    with rig.engine.begin() as conn:
        packages.remove_package(conn, "alpha")
    rig.pages.send("PROJECT", {"package": "alpha"})
    rig.pages.send("DELETE_PACKAGE", {"package": "alpha"})
    wait_for(lambda: not (rig.output / "project/alpha").exists(), drive=(rig.writer,))
    rig.writer.flush(force=True)
    assert not (rig.output / "project/alpha").exists()
    assert not (rig.output / "simple/alpha").exists()
    assert rig.writer.root_writes == base + 2
    assert _root_names(rig) == set()


def test_root_rewrites_are_rate_limited(rig: Rig) -> None:
    rig.writer.write_root()
    rig.writer.root_interval = 3600.0  # the next one would be an hour away
    rig.writer.root_next = float("inf")
    base = rig.writer.root_writes
    rig.add("gamma", "1.0")
    with rig.engine.begin() as conn:
        publish_build(conn, rig.output, "gamma", "1.0")
    rig.pages.send("PROJECT", {"package": "gamma"})
    wait_for(lambda: "gamma" in rig.writer.published, drive=(rig.writer,))
    for _ in range(5):
        rig.writer.poll(0.01)
    # Changed, but not yet due: marked, not written.
    assert rig.writer.root_dirty and rig.writer.root_writes == base
    assert "gamma" not in _root_names(rig)
    rig.writer.root_next = 0.0
    wait_for(lambda: rig.writer.root_writes == base + 1, drive=(rig.writer,))
    assert "gamma" in _root_names(rig) and not rig.writer.root_dirty


def test_first_request_is_written_at_once_and_repeats_are_merged(rig: Rig) -> None:
    """A project not written lately is written without waiting for the window; requests
    within the window of that write become one write at the window's end."""
    now = [1000.0]
    rig.writer.coalescer = PageCoalescer(window=60.0, clock=lambda: now[0])
    rig.add("alpha", "1.0")
    rig.pages.send("PROJECT", {"package": "alpha"})
    # Only polls, no forced flush: the window (a minute of a clock that stands still) is
    # not waited for.
    wait_for(lambda: (rig.output / "project/alpha/index.html").exists(), drive=(rig.writer,))
    wait_for(lambda: rig.writer.written == 1 and rig.writer.batch is None, drive=(rig.writer,))
    rig.add("alpha", "2.0")
    rig.add("beta", "1.0")
    for name in ("alpha", "alpha", "beta", "alpha"):
        rig.pages.send("PROJECT", {"package": name})
    # beta (not written lately) goes at once; alpha's three requests wait, merged into one.
    wait_for(lambda: (rig.output / "project/beta/index.html").exists(), drive=(rig.writer,))
    wait_for(lambda: rig.writer.written == 2 and rig.writer.batch is None, drive=(rig.writer,))
    wait_for(lambda: len(rig.writer.coalescer) == 1, drive=(rig.writer,))
    rig.writer.poll(0)
    assert "2.0" not in rig.page("alpha")
    now[0] += 60.0  # the window ends: the next tick writes alpha once
    wait_for(lambda: "2.0" in rig.page("alpha"), drive=(rig.writer,))
    wait_for(lambda: rig.writer.batch is None and not rig.writer.waiting, drive=(rig.writer,))
    assert rig.writer.written == 3 and len(rig.writer.coalescer) == 0
