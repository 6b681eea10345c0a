"""The textual console, headless, against a scripted master and a real client."""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable, TabbedContent

from piwheels.monitor.app import ConfirmScreen, LogScreen, MonitorApp, log_location
from piwheels.monitor.client import ClientKeys, MonitorClient
from piwheels.transport import Context
from piwheels.web.layout import log_path

from .conftest import ScriptedMaster
from .factories import build_summary, builder_state, current_build, history, master_stats

MasterFactory = Callable[..., ScriptedMaster]
SIZE = (120, 40)


def screen_text(app: MonitorApp) -> str:
    """The screen as plain text (what a person would read)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def shoot(app: MonitorApp, folder: Path, name: str) -> Path:
    """Save an SVG of the screen for a reviewer to look at."""
    path = Path(app.save_screenshot(f"{name}.svg", str(folder)))
    assert path.stat().st_size > 1000
    return path


async def until(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10) -> None:
    """Let the app run until *condition* holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.05)


def live_history() -> dict[str, Any]:
    """History stamped now, so elapsed times and alerts look like a live farm."""
    now = datetime.now(UTC).replace(microsecond=0)
    data = history()
    data["master"]["started_at"] = now - timedelta(hours=5, minutes=3)
    data["stats"] = [
        master_stats(now - timedelta(minutes=10 - i), queue={"cp311": 50 - i, "cp39": 12 + i})
        for i in range(10)
    ]
    data["builders"] = [
        builder_state(
            1,
            state="building",
            build=current_build(started_at=now - timedelta(minutes=4)),
            last_seen=now,
        ),
        builder_state(2, label="pi2", abi="cp39", platform="linux_aarch64", last_seen=now),
        builder_state(3, label="pi3", abi="cp311", state="sleeping", paused=True, last_seen=now),
    ]
    data["builds"] = [
        build_summary(7, finished_at=now - timedelta(minutes=2)),
        build_summary(
            8,
            package="pillow",
            version="10.3.0",
            status="failed",
            failure_class="compile_error",
            builder="pi2",
            abi="cp39",
            finished_at=now - timedelta(minutes=1),
        ),
    ]
    return data


@asynccontextmanager
async def monitor(
    master: ScriptedMaster | None,
    context: Context,
    *,
    endpoints: tuple[str, str] | None = None,
    keys: ClientKeys | None = None,
    silence_timeout: float = 60,
    **app_kw: Any,
) -> AsyncIterator[tuple[MonitorApp, Pilot[Any]]]:
    """A started client and a running app on a master.

    With a scripted *master* the helper answers the monitor's HELLO itself;
    for a real master pass ``master=None`` and its *endpoints* (and *keys*).
    """
    if endpoints is None:
        assert master is not None, "give a scripted master or the endpoints of a real one"
        endpoints = (master.status_endpoint, master.control_endpoint)
    status, control = endpoints
    client = MonitorClient(
        status,
        control,
        keys=keys,
        context=context,
        reconnect_interval=0.1,
        request_timeout=3,
        silence_timeout=silence_timeout,
    ).start()
    try:
        if master is not None:
            await asyncio.to_thread(master.answer_hello, live_history())
        assert await asyncio.to_thread(client.wait_connected, 10)
        app = MonitorApp(client, **app_kw)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.3)
            yield app, pilot
    finally:
        client.stop()


def cells(app: MonitorApp, table_id: str, key: str) -> list[str]:
    table = app.query_one(table_id, DataTable)
    return [str(c) for c in table.get_row(key)]


@pytest.mark.asyncio
async def test_master_tab(master_factory: MasterFactory, zmq_context, screenshot_dir) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        text = screen_text(app)
        assert "connected to farm-master" in text
        assert "up 5h 03m" in text
        assert "Upstream serial 24681357, lag 3" in text
        assert "Downloads 900/hour" in text
        assert "Log ingest 25.5 records/s" in text
        assert "Build queue: 62" in text  # 41 + 21 in the newest figures
        assert "Temperature: 45°C" in text
        assert cells(app, "#queue-table", "cp39") == ["cp39", "21", "8"]
        assert cells(app, "#queue-table", "cp311") == ["cp311", "41", "30"]
        assert app.query_one("#chart-queue").data == [62.0] * 10  # type: ignore[attr-defined]
        shoot(app, screenshot_dir, "master")
        print(text)
        # New figures move the charts and the facts.
        stats = master_stats(datetime.now(UTC), queue={"cp311": 5}, downloads_last_hour=7)
        await asyncio.to_thread(
            master.publish_until, "STATS", stats, lambda: len(app.client.state.stats) == 11
        )
        await until(pilot, lambda: "Downloads 7/hour" in screen_text(app))
        assert "Build queue: 5" in screen_text(app)


@pytest.mark.asyncio
async def test_builders_tab_sort_and_filter(
    master_factory: MasterFactory, zmq_context, screenshot_dir
) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        await pilot.press("2")
        await pilot.pause(0.2)
        assert app.query_one(TabbedContent).active == "builders"
        row = cells(app, "#builders-table", "1")
        assert row[:6] == ["1", "pi1", "cp311", "linux_armv7l", "building", "numpy 1.26.4"]
        assert row[6].startswith("4m ") and row[6].endswith("/ 3h 00m")
        assert row[8:] == ["40%", "25%", "0.50"]
        text = screen_text(app)
        assert "numpy 1.26.4" in text and "pi2" in text and "waiting for work" in text
        shoot(app, screenshot_dir, "builders")
        table = app.query_one("#builders-table", DataTable)
        order = lambda: [str(table.get_row_at(i)[1]) for i in range(table.row_count)]  # noqa: E731
        assert order() == ["pi1", "pi2", "pi3"]
        await pilot.press("o")  # sort by ABI
        await pilot.pause(0.1)
        assert app.sort_key == "abi" and order() == ["pi2", "pi1", "pi3"]
        await pilot.press("O")
        await pilot.pause(0.1)
        assert order() == ["pi3", "pi1", "pi2"]
        await pilot.press("slash")
        await pilot.press(*"cp39")
        await pilot.pause(0.2)
        assert order() == ["pi2"]
        assert "1 of 3" in screen_text(app)
        shoot(app, screenshot_dir, "builders-filtered")
        await pilot.press(*"xx")
        await pilot.pause(0.2)
        assert order() == []
        # Escape leaves the filter; keys are commands again.
        await pilot.press("escape", "3")
        await until(pilot, lambda: app.query_one(TabbedContent).active == "builds")


@pytest.mark.asyncio
async def test_builds_tab_and_log(
    master_factory: MasterFactory, zmq_context, screenshot_dir, tmp_path: Path
) -> None:
    master = master_factory()
    log_file = tmp_path / log_path(8)
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes(gzip.compress(b"gcc: error: Python.h: No such file\n"))
    async with monitor(
        master, zmq_context, output_path=tmp_path, base_url="https://wheels.example.org/"
    ) as (app, pilot):
        await pilot.press("3")
        await pilot.pause(0.2)
        table = app.query_one("#builds-table", DataTable)
        assert [str(table.get_row_at(i)[1]) for i in range(table.row_count)] == ["8", "7"]
        assert cells(app, "#builds-table", "8")[2:] == [
            "pillow", "10.3.0", "cp39", "pi2", "failed (compile_error)", "1m 35s",
        ]  # fmt: skip
        text = screen_text(app)
        assert "Log ingest: 25.5 records/s" in text
        shoot(app, screenshot_dir, "builds")
        # The newest build (8) is selected first; its log is on this machine.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        text = screen_text(app)
        assert "https://wheels.example.org/logs/0000/0000/0008.txt" in text
        assert "Python.h: No such file" in text
        shoot(app, screenshot_dir, "build-log")
        await pilot.press("escape")
        await pilot.pause(0.1)
        # Build 7 has no file here: the URL alone.
        await pilot.press("down", "l")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        assert "not readable here" in screen_text(app)
        assert "/logs/0000/0000/0007.txt" in screen_text(app)
        await pilot.press("escape")
        # A new build arrives at the top.
        new = build_summary(9, package="lxml", finished_at=datetime.now(UTC))
        await asyncio.to_thread(
            master.publish_until, "BUILD", new, lambda: len(app.client.state.builds) == 3
        )
        await until(pilot, lambda: table.row_count == 3)
        assert str(table.get_row_at(0)[2]) == "lxml"


def test_log_location(tmp_path: Path) -> None:
    assert log_location(12, output_path=None, base_url=None) == ("/logs/0000/0000/0012.txt", None)
    url, path = log_location(12, output_path=tmp_path, base_url="http://h/x/")
    assert url == "http://h/x/logs/0000/0000/0012.txt" and path is None


ACTION_CASES = [
    # key, tab, message sent, its payload, what the master does next
    ("p", "master", "PAUSE", None, "paused"),
    ("r", "master", "RESUME", None, "resumed"),
    ("Q", "master", "QUIT", None, "quits"),
    ("s", "builders", "SLEEP", {"builder_id": 1}, "sleeping"),
    ("w", "builders", "WAKE", {"builder_id": 1}, "idle"),
    ("x", "builders", "SKIP", {"builder_id": 1}, "idle"),
    ("k", "builders", "KILL", {"builder_id": 1}, "gone"),
    ("S", "builders", "SLEEP", {"builder_id": None}, "sleeping"),
    ("W", "builders", "WAKE", {"builder_id": None}, "idle"),
    ("X", "builders", "SKIP", {"builder_id": None}, "idle"),
    ("K", "builders", "KILL", {"builder_id": None}, "gone"),
]


def _master_info(paused: bool) -> dict[str, Any]:
    return dict(live_history()["master"], paused=paused)


@pytest.mark.parametrize(("key", "tab", "msg", "payload", "effect"), ACTION_CASES)
@pytest.mark.asyncio
async def test_action(
    master_factory: MasterFactory,
    zmq_context,
    screenshot_dir,
    key: str,
    tab: str,
    msg: str,
    payload: Any,
    effect: str,
) -> None:
    master = master_factory()
    which = "master" if payload is None else "all" if payload["builder_id"] is None else "one"
    async with monitor(master, zmq_context) as (app, pilot):
        if msg == "RESUME":
            # Resuming a paused master: show it paused first.
            await asyncio.to_thread(
                master.publish_until, "MASTER", _master_info(True), lambda: app.client.state.paused
            )
            await until(pilot, lambda: "[PAUSED]" in screen_text(app))
        await pilot.press("2" if tab == "builders" else "1")
        await pilot.pause(0.1)
        await pilot.press(key)
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "?" in screen_text(app)
        shoot(app, screenshot_dir, f"confirm-{msg.lower()}-{which}")
        await pilot.press("y")
        await asyncio.to_thread(master.control.expect, msg, payload)
        master.control.send("OK")
        await until(pilot, lambda: app.last_outcome is not None)
        assert app.last_outcome is not None and app.last_outcome.endswith(": done")
        # What the master publishes next shows on screen.
        if effect in ("paused", "resumed"):
            paused = effect == "paused"
            await asyncio.to_thread(
                master.publish_until,
                "MASTER",
                _master_info(paused),
                lambda: app.client.state.paused is paused,
            )
            await until(pilot, lambda: ("[PAUSED]" in screen_text(app)) is paused)
        elif effect == "quits":
            master.close()
            await until(pilot, lambda: "MASTER LOST" in screen_text(app))
        else:
            update = builder_state(1, state=effect, last_seen=datetime.now(UTC))
            await asyncio.to_thread(
                master.publish_until,
                "BUILDER",
                update,
                lambda: app.client.state.builders[1].state == effect,
            )
            await until(pilot, lambda: cells(app, "#builders-table", "1")[4] == effect)
            assert effect in screen_text(app)
        shoot(app, screenshot_dir, f"after-{msg.lower()}-{which}")


@pytest.mark.asyncio
async def test_saying_no_sends_nothing(master_factory: MasterFactory, zmq_context) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        await pilot.press("2", "k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Kill builder 1 (pi1)?" in screen_text(app)
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.press("p", "escape")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await asyncio.to_thread(master.control.check, 0.3)
        assert app.last_outcome is None


@pytest.mark.asyncio
async def test_refused_action_is_reported(master_factory: MasterFactory, zmq_context) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        await pilot.press("2", "x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await asyncio.to_thread(master.control.expect, "SKIP", {"builder_id": 1})
        master.control.send("ERROR", {"reason": "builder 1 is not building"})
        await until(pilot, lambda: app.last_outcome is not None)
        assert app.last_outcome == "SKIP builder 1: refused: builder 1 is not building"
        text = ""

        def shown() -> bool:
            nonlocal text
            text = screen_text(app)
            return "not building" in text

        try:
            await until(pilot, shown, 3)
        except AssertionError:
            print(text)
            raise


@pytest.mark.asyncio
async def test_builder_action_on_selected_row(master_factory: MasterFactory, zmq_context) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        await pilot.press("2", "down", "down", "k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "builder 3 (pi3)" in screen_text(app)
        await pilot.press("y")
        await asyncio.to_thread(master.control.expect, "KILL", {"builder_id": 3})
        master.control.send("OK")
        await until(pilot, lambda: app.last_outcome == "KILL builder 3: done")


@pytest.mark.asyncio
async def test_reconnect_indicator(
    master_factory: MasterFactory, zmq_context, screenshot_dir
) -> None:
    master = master_factory()
    async with monitor(master, zmq_context) as (app, pilot):
        assert "connected to farm-master" in screen_text(app)
        master.close()
        await until(pilot, lambda: "MASTER LOST" in screen_text(app))
        assert "the master closed the connection" in screen_text(app)
        assert "reconnecting" in screen_text(app)
        shoot(app, screenshot_dir, "master-lost")
        # An action while the master is away fails with a clear message.
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: app.last_outcome is not None)
        assert "not connected" in (app.last_outcome or "")
        second = master_factory()
        data = live_history()
        data["master"]["hostname"] = "new-master"
        await asyncio.to_thread(second.answer_hello, data)
        await until(pilot, lambda: "connected to new-master" in screen_text(app))
        assert "MASTER LOST" not in screen_text(app)
        shoot(app, screenshot_dir, "master-back")


@pytest.mark.asyncio
async def test_silent_master_shows_lost(master_factory: MasterFactory, zmq_context) -> None:
    master = master_factory()
    async with monitor(master, zmq_context, silence_timeout=0.5) as (app, pilot):
        await until(pilot, lambda: "MASTER LOST" in screen_text(app))
        assert "no message for 0.5s" in screen_text(app)
