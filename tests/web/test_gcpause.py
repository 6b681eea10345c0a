"""paused_gc: automatic collection off inside, restored exactly as it was after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from piwheels.web.gcpause import paused_gc
from piwheels.web.model import ProjectData
from piwheels.web.render import SiteConfig
from piwheels.web.writer import SiteWriter


@pytest.fixture(autouse=True)
def _gc_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_inside_on_after() -> None:
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_nested_only_outermost_restores() -> None:
    with paused_gc():
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_stays_off_when_it_was_off() -> None:
    gc.disable()
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_overlapping_threads_last_one_out_restores() -> None:
    # Thread A enters first and leaves first; B (which saw collection already off) must
    # not leave it off for good when it leaves last.
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def a() -> None:
        with paused_gc():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with paused_gc():
            b_in.set()
            a_out.wait(5)
            seen.append(gc.isenabled())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False]  # still off while B is inside, although A has left
    assert gc.isenabled()


def test_chunk_write_pauses_collection_and_restores(tmp_path: Path) -> None:
    # The writer's chunks run with collection off (their objects form no cycles).
    states: list[bool] = []

    def load_many(names: list[str]) -> list[ProjectData]:
        states.append(gc.isenabled())
        return [ProjectData(name=n, display_name=n) for n in names]

    site = SiteWriter(tmp_path / "site", SiteConfig())
    try:
        assert site.write_all(["a", "b", "c"], load_many=load_many, chunk_size=2) == 3
    finally:
        site.close()
    assert states == [False, False]
    assert gc.isenabled()
    assert (tmp_path / "site" / "project" / "c" / "index.html").is_file()
