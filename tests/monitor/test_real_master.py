"""The monitor against a real running master with real builders (no scripted parts).

MonitorClient and the textual MonitorApp (headless pilot) watch a farm from
``tests/integration/conftest.py``: a Master in threads on its own database, a
BuilderDaemon thread and, for KILL, a real ``piw-builder`` process.  Every
screen shows real data; every action goes through the app's confirmation to
the master and changes what the master then does.  SVG screenshots go to
$PIWHEELS_SCREENSHOTS (or a temp folder).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, TabbedContent

from piwheels.monitor.app import ConfirmScreen, LogScreen, MonitorApp
from piwheels.monitor.client import fetch_state
from piwheels.tasks import Task
from piwheels.transport import Context
from tests import sdists
from tests.builder.conftest import local_index  # noqa: F401 - a fixture
from tests.integration.conftest import HEARTBEAT, Farm, make_farm, wait_until
from tests.sdists import make_sdist

from .test_app import cells, monitor, screen_text, shoot, until

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


def gated_sdist(dest: Path, name: str, flag: Path) -> Path:
    """A pure package whose setup.py waits until *flag* exists (at most five minutes)."""
    body = f"""\
    import os, time
    deadline = time.time() + 300
    while not os.path.exists({str(flag)!r}) and time.time() < deadline:
        time.sleep(0.1)
    """
    return make_sdist(dest, name, "1.0", sdists._setup(name, "1.0", body, py_modules="[]"))


@pytest.fixture(scope="module")
def farm(new_database: Any, local_index: Any) -> Iterator[Farm]:  # noqa: F811
    """A master, one builder thread, and one finished build to look at."""
    from piwheels.master import build_dispatcher

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_dispatcher, "HEARTBEAT", HEARTBEAT)
        f = make_farm(new_database, local_index)
        f.start_master()
        try:
            f.publish_sdist(sdists.pure_sdist, "piwtest-monitored")
            f.add_release("piwtest-monitored")
            f.start_builder("watched", sandbox="off")
            f.wait_success("piwtest-monitored")
            yield f
        finally:
            f.close()


def endpoints(farm: Farm) -> tuple[str, str]:
    m = farm.settings.master
    return m.status_endpoint, m.control_endpoint


def builder_row(app: MonitorApp, builder_id: int) -> int:
    table = app.query_one("#builders-table", DataTable)
    for i in range(table.row_count):
        if str(table.get_row_at(i)[0]) == str(builder_id):
            return i
    raise AssertionError(f"builder {builder_id} is not on the screen")


async def confirm(app: MonitorApp, pilot: Any, key: str) -> str:
    """Press an action key, answer yes, and return the outcome text."""
    app.last_outcome = None
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    await pilot.press("y")
    await until(pilot, lambda: app.last_outcome is not None)
    assert app.last_outcome is not None
    return app.last_outcome


async def select_builder(app: MonitorApp, pilot: Any, builder_id: int) -> None:
    await pilot.press("2")
    await until(pilot, lambda: app.query_one(TabbedContent).active == "builders")
    await until(pilot, lambda: _has_row(app, builder_id))
    table = app.query_one("#builders-table", DataTable)
    table.move_cursor(row=builder_row(app, builder_id))
    await pilot.pause(0.1)
    assert app.selected_builder_id() == builder_id


def _has_row(app: MonitorApp, builder_id: int) -> bool:
    try:
        builder_row(app, builder_id)
        return True
    except AssertionError:
        return False


def watched(farm: Farm) -> Any:
    (running,) = [b for b in farm.builders if b.label == "watched"]
    return running


def dispatcher_state(farm: Farm, builder_id: int) -> Any:
    return farm.dispatcher().snapshot().get(builder_id)


async def wait(condition: Any, timeout: float = 60, what: str = "condition") -> Any:
    return await asyncio.to_thread(wait_until, condition, timeout=timeout, what=what)


async def test_master_tab_with_targets(farm: Farm, zmq_context: Context) -> None:
    """The master reports queues per build target (cp311-linux_x86_64): the tab draws them."""
    async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
        await until(pilot, lambda: len(app.client.state.stats) > 0, timeout=20)
        await pilot.pause(0.5)
        assert "connected to" in screen_text(app)


async def test_fetch_state_sees_the_real_farm(farm: Farm) -> None:
    state = await asyncio.to_thread(fetch_state, endpoints(farm)[1], timeout=10)
    labels = {b.label for b in state.builders.values()}
    assert "watched" in labels
    assert any(b.package == "piwtest-monitored" for b in state.builds)
    assert state.master is not None and state.master.paused is False


async def test_every_screen_shows_real_data(
    farm: Farm, zmq_context: Context, screenshot_dir: Path
) -> None:
    builder_id = watched(farm).daemon.builder_id
    async with monitor(None, zmq_context, endpoints=endpoints(farm), output_path=farm.output) as (
        app,
        pilot,
    ):
        await until(pilot, lambda: len(app.client.state.stats) > 0, timeout=20)
        text = screen_text(app)
        assert "connected to" in text and "MASTER LOST" not in text
        shoot(app, screenshot_dir, "real-master")
        await pilot.press("2")
        await until(pilot, lambda: _has_row(app, builder_id))
        row = cells(app, "#builders-table", str(builder_id))
        assert row[1] == "watched"
        assert row[2] == watched(farm).daemon.facts["abi"]
        shoot(app, screenshot_dir, "real-builders")
        await pilot.press("3")
        await until(pilot, lambda: "piwtest-monitored" in screen_text(app))
        table = app.query_one("#builds-table", DataTable)
        assert table.row_count >= 1
        shoot(app, screenshot_dir, "real-builds")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        # The real build log, read from the master's output folder.
        await until(pilot, lambda: "piwheels build of piwtest-monitored 1.0" in screen_text(app))
        assert "pip wheel piwtest-monitored==1.0" in screen_text(app)
        shoot(app, screenshot_dir, "real-build-log")
        await pilot.press("escape")


async def test_pause_and_resume_reach_the_master(
    farm: Farm, zmq_context: Context, screenshot_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piwheels")
    builder_id = watched(farm).daemon.builder_id
    async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
        await pilot.press("1")
        assert (await confirm(app, pilot, "p")).endswith(": done")
        await until(pilot, lambda: "[PAUSED]" in screen_text(app), timeout=20)
        assert farm.master is not None
        # The pausable task threads of this process (a task process keeps its own state).
        threads = [t for t in farm.master.tasks if isinstance(t, Task) and t.pausable]
        await wait(lambda: all(t.paused for t in threads), what="paused")
        # The builder is told it is paused, and a new release waits.
        await wait(
            lambda: getattr(dispatcher_state(farm, builder_id), "state", None) == "paused",
            what="builder told paused",
        )
        # The dispatcher counts the builder as paused when it sends SLEEP; the builder
        # logs it when that arrives, a moment later.
        await wait(lambda: "(paused)" in caplog.text, what="the builder told it is paused")
        farm.publish_sdist(sdists.pure_sdist, "piwtest-while-paused")
        farm.add_release("piwtest-while-paused")
        await wait(
            lambda: "(paused)" in caplog.text.split("piwtest-while-paused")[-1],
            what="another SLEEP while paused",
        )
        assert farm.builds("piwtest-while-paused") == []
        shoot(app, screenshot_dir, "real-paused")
        assert (await confirm(app, pilot, "r")).endswith(": done")
        await until(pilot, lambda: "[PAUSED]" not in screen_text(app), timeout=20)
        await asyncio.to_thread(farm.wait_success, "piwtest-while-paused")


async def test_sleep_and_wake_reach_the_builder(
    farm: Farm, zmq_context: Context, screenshot_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piwheels")
    builder_id = watched(farm).daemon.builder_id
    async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
        await select_builder(app, pilot, builder_id)
        assert (await confirm(app, pilot, "s")).endswith(": done")
        await wait(lambda: dispatcher_state(farm, builder_id).asleep, what="asleep")
        # The builder itself hears SLEEP (asleep) on its next IDLE.
        await wait(lambda: "(asleep)" in caplog.text, what="the builder told it is asleep")
        farm.publish_sdist(sdists.pure_sdist, "piwtest-while-asleep")
        farm.add_release("piwtest-while-asleep")
        await wait(
            lambda: "(asleep)" in caplog.text.split("piwtest-while-asleep")[-1],
            what="another SLEEP while asleep",
        )
        assert farm.builds("piwtest-while-asleep") == []
        await until(pilot, lambda: "asleep" in cells(app, "#builders-table", str(builder_id))[4])
        shoot(app, screenshot_dir, "real-builder-asleep")
        assert (await confirm(app, pilot, "w")).endswith(": done")
        await asyncio.to_thread(farm.wait_success, "piwtest-while-asleep")


async def test_skip_abandons_the_current_build(
    farm: Farm, zmq_context: Context, screenshot_dir: Path
) -> None:
    builder_id = watched(farm).daemon.builder_id
    flag = farm.root / "flag-skip"
    farm.publish_sdist(gated_sdist, "piwtest-skipped", flag)
    farm.add_release("piwtest-skipped")
    try:
        async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
            await wait(
                lambda: any(b.status == "building" for b in farm.builds("piwtest-skipped")),
                what="the build started",
            )
            await select_builder(app, pilot, builder_id)
            await until(
                pilot,
                lambda: "piwtest-skipped" in cells(app, "#builders-table", str(builder_id))[5],
                timeout=20,
            )
            shoot(app, screenshot_dir, "real-builder-building")
            assert (await confirm(app, pilot, "x")).endswith(": done")
            (row,) = await asyncio.to_thread(farm.wait_finished, "piwtest-skipped")
            assert row.status == "failed"
            # The builder dropped it and is idle again, still connected.
            await wait(
                lambda: (
                    dispatcher_state(farm, builder_id) is not None
                    and dispatcher_state(farm, builder_id).build is None
                ),
                what="builder idle",
            )
            assert watched(farm).alive
            assert watched(farm).daemon.job is None
    finally:
        flag.touch()


async def test_kill_stops_the_builder_process(
    farm: Farm, zmq_context: Context, screenshot_dir: Path
) -> None:
    proc = farm.spawn_builder(f"doomed-{uuid.uuid4().hex[:4]}")
    try:
        label = proc.label
        ids = await wait(
            lambda: [
                s.builder_id for s in farm.dispatcher().snapshot().values() if s.label == label
            ],
            what="the process builder connected",
        )
        async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
            await select_builder(app, pilot, ids[0])
            assert (await confirm(app, pilot, "k")).endswith(": done")
            # The builder process hears DIE and exits cleanly.
            code = await asyncio.to_thread(proc.wait, 60)
            assert code == 0, farm.process_log(proc)
            assert "killed by an operator" in farm.process_log(proc)
            await until(
                pilot, lambda: cells(app, "#builders-table", str(ids[0]))[4] == "gone", timeout=20
            )
            shoot(app, screenshot_dir, "real-builder-killed")
        assert watched(farm).alive
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_master_restart_shows_lost_then_back(
    farm: Farm, zmq_context: Context, screenshot_dir: Path
) -> None:
    async with monitor(None, zmq_context, endpoints=endpoints(farm)) as (app, pilot):
        assert "connected to" in screen_text(app)
        await asyncio.to_thread(farm.stop_master)
        await until(pilot, lambda: "MASTER LOST" in screen_text(app), timeout=30)
        shoot(app, screenshot_dir, "real-master-lost")
        await asyncio.to_thread(farm.start_master)
        await until(pilot, lambda: "connected to" in screen_text(app), timeout=30)
        assert app.client.connections >= 2
        # The builder came back to the new master too.
        builder_id = watched(farm).daemon.builder_id
        await wait(lambda: dispatcher_state(farm, builder_id) is not None, what="builder back")
        await pilot.press("2")
        await until(pilot, lambda: _has_row(app, builder_id), timeout=20)
        shoot(app, screenshot_dir, "real-master-back")
