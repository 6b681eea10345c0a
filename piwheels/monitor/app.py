"""The piw-monitor terminal console (textual).

Three tabs read a :class:`~piwheels.monitor.client.MonitorClient`'s
:class:`~piwheels.monitor.state.FarmState`: the master (figures and small
charts over time), the builders (a sortable, filterable table) and the recent
builds (with their logs).  A line at the top says whether the master is
connected, lost (and for how long), or not reached yet.  Actions ask for
confirmation, then go to the master through the client; the reply is shown
as a notification and the screen refreshes at once.

The app never touches sockets: a timer compares the state's version with
the one last drawn and redraws what changed (at most four times a second,
and once a second for the clocks).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
    TextArea,
)

from piwheels.errors import PiwheelsError
from piwheels.web.layout import log_path, log_url

from .client import MonitorClient, Reply
from .state import (
    BUILDER_SORT_KEYS,
    BuilderView,
    BuildSummary,
    FarmState,
    format_duration,
    format_size,
)

__all__ = ["ConfirmScreen", "LogScreen", "MonitorApp", "log_location"]

#: The charts on the master tab: (series, ABI-aware, title, unit).
CHARTS: tuple[tuple[str, str, str], ...] = (
    ("queue", "Build queue", ""),
    ("builds_last_hour", "Builds/hour", ""),
    ("downloads_last_hour", "Downloads/hour", ""),
    ("ingest_rate", "Log ingest", "/s"),
    ("disk", "Disk used", "%"),
    ("memory", "Memory used", "%"),
    ("swap", "Swap used", "%"),
    ("load", "Load", ""),
    ("temperature", "Temperature", "°C"),
    ("upstream_lag", "Upstream lag", ""),
)

#: What each builder action is called on screen, and what it does.
BUILDER_ACTION_TEXT = {
    "SLEEP": ("Sleep", "stop giving {who} work (the current build finishes)"),
    "WAKE": ("Wake", "give {who} work again"),
    "SKIP": ("Skip", "abandon the current build of {who}"),
    "KILL": ("Kill", "tell {who} to exit"),
}
MASTER_ACTION_TEXT = {
    "PAUSE": ("Pause", "stop the master handing out builds"),
    "RESUME": ("Resume", "let the master hand out builds again"),
    "QUIT": ("Stop master", "stop the master process"),
}


def _now() -> datetime:
    return datetime.now(UTC)


def log_location(
    build_id: int, *, output_path: Path | None, base_url: str | None
) -> tuple[str, Path | None]:
    """The URL of a build's log, and its file if this machine can read it.

    The URL is absolute with *base_url*, site-relative without.  The file
    is the gzipped log under *output_path* (the master's output folder),
    when the monitor runs where that folder is.
    """
    url = log_url(build_id)
    if base_url:
        url = base_url.rstrip("/") + url
    path = None
    if output_path is not None:
        candidate = output_path / log_path(build_id)
        if candidate.is_file():
            path = candidate
    return url, path


def read_log(path: Path, limit: int = 4 << 20) -> str:
    """The text of a gzipped log (the end of it, past *limit* characters)."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as stream:
        text = stream.read()
    if len(text) > limit:
        text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
    return text


class ConfirmScreen(ModalScreen[bool]):
    """Asks yes or no; answers True for yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen #question { width: 100%; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align: center middle; }
    ConfirmScreen Button { margin: 0 2; }
    """

    def __init__(self, title: str, question: str) -> None:
        super().__init__()
        self.title_text = title
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self.title_text, style="bold"), id="title")
            yield Static(Text(self.question), id="question")
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class LogScreen(ModalScreen[None]):
    """Shows one build's log, or where to find it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Close")]

    DEFAULT_CSS = """
    LogScreen { align: center middle; }
    LogScreen > Vertical {
        width: 95%; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    LogScreen #where { height: auto; }
    LogScreen TextArea { height: 1fr; }
    """

    def __init__(self, build: BuildSummary, url: str, text: str | None) -> None:
        super().__init__()
        self.build = build
        self.url = url
        self.text = text

    def compose(self) -> ComposeResult:
        build = self.build
        with Vertical():
            yield Label(
                Text(
                    f"Build {build.build_id}: {build.package} {build.version} "
                    f"({build.abi}, {build.status})",
                    style="bold",
                )
            )
            where = f"Log: {self.url}"
            if self.text is None:
                where += "\n(the log file is not readable here; open the URL in a browser)"
            yield Static(Text(where), id="where")
            if self.text is not None:
                yield TextArea(self.text, read_only=True, id="log")

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass
class _Drawn:
    """What was last drawn, so a redraw happens only when needed."""

    version: int = -1
    second: int = -1
    status: str = ""


class MonitorApp(App[None]):
    """The farm console; *client* must be started (and stopped) by the caller."""

    TITLE = "piwheels monitor"

    CSS = """
    #connection { height: 1; padding: 0 1; }
    #connection.connected { background: $success-darken-2; color: $text; }
    #connection.lost { background: $error; color: $text; text-style: bold; }
    #connection.connecting { background: $warning-darken-2; color: $text; }
    #master-facts { width: 1fr; height: auto; padding: 0 1; }
    #master-top { height: auto; }
    #queue-table { width: 42; height: auto; max-height: 14; }
    #alerts { height: auto; padding: 0 1; color: $error; }
    .chart { height: 1; }
    .chart Label { width: 28; }
    .chart Sparkline { width: 1fr; }
    #builder-bar { height: 3; }
    #builder-filter { width: 1fr; }
    #builder-sort { width: 30; padding: 1 1; }
    #builders-table, #builds-table { height: 1fr; }
    #ingest { height: 1; padding: 0 1; }
    #tabs { height: 1fr; }
    #outcome { height: 1; padding: 0 1; }
    #outcome.error { color: $error; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("1", "show('master')", "Master"),
        Binding("2", "show('builders')", "Builders"),
        Binding("3", "show('builds')", "Builds"),
        Binding("p", "master('PAUSE')", "Pause"),
        Binding("r", "master('RESUME')", "Resume"),
        Binding("Q", "master('QUIT')", "Stop master", show=False),
        Binding("s", "builder('SLEEP')", "Sleep"),
        Binding("w", "builder('WAKE')", "Wake"),
        Binding("x", "builder('SKIP')", "Skip"),
        Binding("k", "builder('KILL')", "Kill"),
        Binding("S", "builder('SLEEP', True)", "Sleep all", show=False),
        Binding("W", "builder('WAKE', True)", "Wake all", show=False),
        Binding("X", "builder('SKIP', True)", "Skip all", show=False),
        Binding("K", "builder('KILL', True)", "Kill all", show=False),
        Binding("o", "sort", "Sort"),
        Binding("O", "sort(True)", "Reverse sort", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "leave_filter", "Leave filter", show=False),
        Binding("l", "log", "Log"),
    ]

    def __init__(
        self,
        client: MonitorClient,
        *,
        output_path: Path | None = None,
        base_url: str | None = None,
        silence: timedelta = timedelta(minutes=5),
        refresh_interval: float = 0.25,
    ) -> None:
        super().__init__()
        self.client = client
        self.output_path = output_path
        self.base_url = base_url
        self.silence = silence
        self.refresh_interval = refresh_interval
        self.sort_key = "label"
        self.sort_reverse = False
        self.filter_text = ""
        self._drawn = _Drawn()
        #: The outcome of the last action, in words (also shown as a notification).
        self.last_outcome: str | None = None

    # -- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="connection")
        with TabbedContent(initial="master", id="tabs"):
            with TabPane("Master", id="master"), VerticalScroll():
                with Horizontal(id="master-top"):
                    yield Static("", id="master-facts")
                    table: DataTable[Any] = DataTable(id="queue-table", cursor_type="none")
                    table.add_column("ABI", key="abi")
                    table.add_column("Queue", key="queue")
                    table.add_column("Built/hour", key="built")
                    yield table
                yield Static("", id="alerts")
                for name, title, _ in CHARTS:
                    with Horizontal(classes="chart"):
                        yield Label(title, id=f"label-{name}")
                        yield Sparkline([], id=f"chart-{name}", summary_function=max)
            with TabPane("Builders", id="builders"), Vertical():
                with Horizontal(id="builder-bar"):
                    yield Input(placeholder="filter builders (/)", id="builder-filter")
                    yield Label("", id="builder-sort")
                builders: DataTable[Any] = DataTable(id="builders-table", cursor_type="row")
                for key, label in (
                    ("id", "#"),
                    ("label", "Label"),
                    ("abi", "ABI"),
                    ("platform", "Platform"),
                    ("state", "State"),
                    ("task", "Current build"),
                    ("elapsed", "Elapsed / timeout"),
                    ("last_seen", "Last seen"),
                    ("disk", "Disk"),
                    ("memory", "Memory"),
                    ("load", "Load"),
                ):
                    builders.add_column(label, key=key)
                yield builders
            with TabPane("Builds", id="builds"), Vertical():
                yield Static("", id="ingest")
                builds: DataTable[Any] = DataTable(id="builds-table", cursor_type="row")
                for key, label in (
                    ("finished", "Finished"),
                    ("id", "Build"),
                    ("package", "Package"),
                    ("version", "Version"),
                    ("abi", "ABI"),
                    ("builder", "Builder"),
                    ("status", "Status"),
                    ("duration", "Duration"),
                ):
                    builds.add_column(label, key=key)
                yield builds
        yield Static("", id="outcome")
        yield Footer()

    @property
    def _main(self) -> Screen[Any]:
        # The farm's widgets live on the first screen; a dialog on top must
        # not hide them from the redraw.
        return self.screen_stack[0]

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(self.refresh_interval, self.redraw)

    # -- drawing ---------------------------------------------------------------

    def redraw(self, force: bool = False) -> None:
        """Draw what changed since the last time (everything when *force*)."""
        if not self.is_running or not self.screen_stack:
            return
        now = _now()
        client = self.client
        with client.lock:
            version = client.state.version
            status = f"{client.status}:{client.reason}"
            second = int(now.timestamp())
            drawn = self._drawn
            data_changed = force or version != drawn.version
            if not data_changed and status == drawn.status and second == drawn.second:
                return
            self._draw_connection(now)
            if data_changed or second != drawn.second:
                state = client.state
                self._draw_master(state, now)
                self._draw_builders(state, now)
                self._draw_builds(state)
            self._drawn = _Drawn(version, second, status)

    def _draw_connection(self, now: datetime) -> None:
        client = self.client
        widget = self._main.query_one("#connection", Static)
        state = client.state
        host = state.master.hostname if state.master else client.control_endpoint
        for name in ("connected", "lost", "connecting"):
            widget.set_class(client.status == name, name)
        since = timedelta(seconds=time.monotonic() - client.status_since)
        if client.status == "connected":
            paused = "  [PAUSED]" if state.paused else ""
            text = f"● connected to {host}{paused}"
        elif client.status == "lost":
            text = (
                f"✖ MASTER LOST for {format_duration(since)}: {client.reason}"
                " (reconnecting; figures below are from before)"
            )
        else:
            why = f": {client.reason}" if client.reason else ""
            text = f"… connecting to {client.control_endpoint}{why}"
        widget.update(Text(text))

    def _draw_master(self, state: FarmState, now: datetime) -> None:
        latest = state.latest
        lines = []
        master = state.master
        if master is None:
            lines.append("no word from the master yet")
        else:
            lines.append(
                f"Master   {master.hostname}  piwheels {master.version}  "
                f"{master.os_name} {master.os_version}"
            )
            lines.append(
                f"State    {'PAUSED' if state.paused else 'building'}   "
                f"up {format_duration(state.uptime(now))}"
            )
        if latest is not None:
            host = latest.host
            serial = "-" if latest.upstream_serial is None else str(latest.upstream_serial)
            lag = "-" if latest.upstream_lag is None else str(latest.upstream_lag)
            temp = "-" if host.cpu_temp is None else f"{host.cpu_temp:.0f}°C"
            lines += [
                f"Upstream serial {serial}, lag {lag}",
                f"Built    {latest.packages_built} packages, {latest.files_count} files, "
                f"time saved {format_duration(latest.time_saved)}",
                f"Downloads {latest.downloads_last_hour}/hour, {latest.downloads_30d} in 30 days, "
                f"{latest.downloads_all} in all",
                f"Log ingest {latest.ingest_rate:.1f} records/s",
                f"Disk {host.disk_used_pct:.0f}% of {format_size(host.disk_total)}  "
                f"Memory {host.mem_used_pct:.0f}% of {format_size(host.mem_total)}  "
                f"Swap {host.swap_used_pct:.0f}%",
                f"Load {host.load_average:.2f}  Temperature {temp}  "
                f"(figures of {latest.timestamp:%H:%M:%S})",
            ]
        self._main.query_one("#master-facts", Static).update(Text("\n".join(lines)))
        table = self._main.query_one("#queue-table", DataTable)
        table.clear()
        if latest is not None:
            for abi in state.abis():
                table.add_row(
                    Text(abi),
                    Text(str(latest.queue.get(abi, 0))),
                    Text(str(latest.builds_last_hour.get(abi, 0))),
                    key=abi,
                )
        alerts = state.alerts(now, silence=self.silence)
        self._main.query_one("#alerts", Static).update(Text("\n".join(f"! {a}" for a in alerts)))
        for name, title, unit in CHARTS:
            values = state.series(name)
            current = f"{values[-1]:.4g}{unit}" if values else "-"
            self._main.query_one(f"#label-{name}", Label).update(Text(f"{title}: {current}"))
            self._main.query_one(f"#chart-{name}", Sparkline).data = values

    def _builder_cells(self, view: BuilderView, now: datetime) -> tuple[Any, ...]:
        stats = view.stats
        if view.build is not None:
            elapsed = view.build.elapsed(now)
            over = elapsed > view.build.timeout
            elapsed_text = Text(
                f"{format_duration(elapsed)} / {format_duration(view.build.timeout)}",
                style="bold red" if over else "",
            )
        else:
            elapsed_text = Text("-")
        state_style = {
            "building": "green",
            "sending": "cyan",
            "sleeping": "yellow",
            "paused": "yellow",
            "gone": "red",
        }.get(view.state, "")
        state_text = view.state + (" (asleep)" if view.paused and view.state != "sleeping" else "")
        # Text, never str: a cell given a str is read as markup, and labels
        # and package names come from the wire.
        return (
            Text(str(view.builder_id)),
            Text(view.label),
            Text(view.abi),
            Text(view.platform),
            Text(state_text, style=state_style),
            Text(view.task()),
            elapsed_text,
            Text(f"{format_duration(now - view.last_seen)} ago"),
            Text("-" if stats is None else f"{stats.disk_used_pct:.0f}%"),
            Text("-" if stats is None else f"{stats.mem_used_pct:.0f}%"),
            Text("-" if stats is None else f"{stats.load_average:.2f}"),
        )

    def _draw_builders(self, state: FarmState, now: datetime) -> None:
        table = self._main.query_one("#builders-table", DataTable)
        selected = self.selected_builder_id()
        table.clear()
        rows = state.builder_rows(
            now, sort=self.sort_key, text=self.filter_text, reverse=self.sort_reverse
        )
        for view in rows:
            table.add_row(*self._builder_cells(view, now), key=str(view.builder_id))
        if selected is not None and any(v.builder_id == selected for v in rows):
            table.move_cursor(row=table.get_row_index(str(selected)))
        arrow = "↓" if self.sort_reverse else "↑"
        shown = f"{len(rows)} of {len(state.builders)}"
        self._main.query_one("#builder-sort", Label).update(
            Text(f"sort: {self.sort_key} {arrow}  ({shown})")
        )

    def _draw_builds(self, state: FarmState) -> None:
        table = self._main.query_one("#builds-table", DataTable)
        selected = self.selected_build_id()
        table.clear()
        for build in reversed(state.builds):
            status = build.status
            if build.failure_class:
                status += f" ({build.failure_class})"
            table.add_row(
                Text(f"{build.finished_at:%Y-%m-%d %H:%M:%S}"),
                Text(str(build.build_id)),
                Text(build.package),
                Text(build.version),
                Text(build.abi),
                Text(build.builder),
                Text(status, style="green" if build.status == "success" else "red"),
                Text(format_duration(build.duration)),
                key=str(build.build_id),
            )
        if selected is not None and any(b.build_id == selected for b in state.builds):
            table.move_cursor(row=table.get_row_index(str(selected)))
        latest = state.latest
        rate = "-" if latest is None else f"{latest.ingest_rate:.1f} records/s"
        self._main.query_one("#ingest", Static).update(
            Text(f"Log ingest: {rate}   (l or Enter: open the selected build's log)")
        )

    # -- selection ---------------------------------------------------------------

    @staticmethod
    def _selected(table: DataTable[Any]) -> int | None:
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # no valid cursor (empty or cleared table)
            return None
        return None if key is None else int(key)

    def selected_builder_id(self) -> int | None:
        return self._selected(self._main.query_one("#builders-table", DataTable))

    def selected_build_id(self) -> int | None:
        return self._selected(self._main.query_one("#builds-table", DataTable))

    # -- navigation ----------------------------------------------------------------

    def action_show(self, tab: str) -> None:
        self._main.query_one(TabbedContent).active = tab
        target = {"builders": "#builders-table", "builds": "#builds-table"}.get(tab)
        if target:
            self._main.query_one(target, DataTable).focus()

    def action_sort(self, reverse: bool = False) -> None:
        if reverse:
            self.sort_reverse = not self.sort_reverse
        else:
            index = BUILDER_SORT_KEYS.index(self.sort_key)
            self.sort_key = BUILDER_SORT_KEYS[(index + 1) % len(BUILDER_SORT_KEYS)]
        self.redraw(force=True)

    def action_filter(self) -> None:
        self.action_show("builders")
        self._main.query_one("#builder-filter", Input).focus()

    def action_leave_filter(self) -> None:
        if self.focused is self._main.query_one("#builder-filter", Input):
            self._main.query_one("#builders-table", DataTable).focus()

    @on(Input.Changed, "#builder-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.redraw(force=True)

    @on(Input.Submitted, "#builder-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self._main.query_one("#builders-table", DataTable).focus()

    @on(DataTable.RowSelected, "#builds-table")
    def _build_chosen(self, event: DataTable.RowSelected) -> None:
        self.action_log()

    def action_log(self) -> None:
        build_id = self.selected_build_id()
        if build_id is None:
            self.notify("no build selected (open the Builds tab with 3)", severity="warning")
            return
        with self.client.lock:
            build = next((b for b in self.client.state.builds if b.build_id == build_id), None)
        if build is None:
            return
        url, path = log_location(build_id, output_path=self.output_path, base_url=self.base_url)
        text = None
        if path is not None:
            try:
                text = read_log(path)
            except (OSError, EOFError) as exc:
                self.notify(f"cannot read {path}: {exc}", severity="error", markup=False)
        self.push_screen(LogScreen(build, url, text))

    # -- actions -------------------------------------------------------------------

    def action_master(self, msg: str) -> None:
        title, what = MASTER_ACTION_TEXT[msg]
        self._confirm(msg, None, f"{title} the master?", f"This will {what}.")

    def action_builder(self, msg: str, everyone: bool = False) -> None:
        title, what = BUILDER_ACTION_TEXT[msg]
        if everyone:
            question = f"This will {what.format(who='every builder')}."
            self._confirm(msg, None, f"{title} all builders?", question)
            return
        builder_id = self.selected_builder_id()
        if builder_id is None:
            self.notify("no builder selected (open the Builders tab with 2)", severity="warning")
            return
        with self.client.lock:
            view = self.client.state.builders.get(builder_id)
        who = f"builder {builder_id}" + (f" ({view.label})" if view else "")
        self._confirm(msg, builder_id, f"{title} {who}?", f"This will {what.format(who=who)}.")

    def _confirm(self, msg: str, builder_id: int | None, title: str, question: str) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.send_action(msg, builder_id)

        self.push_screen(ConfirmScreen(title, question), answered)

    @work(exclusive=False, group="actions")
    async def send_action(self, msg: str, builder_id: int | None) -> Reply | None:
        """Send an action to the master and report the outcome."""
        target = "all builders" if builder_id is None and msg in BUILDER_ACTION_TEXT else None
        if builder_id is not None:
            target = f"builder {builder_id}"
        name = f"{msg} {target}" if target else msg
        try:
            future = self.client.submit(msg, builder_id)
            reply = await asyncio.wrap_future(future)
        except PiwheelsError as exc:
            self._outcome(f"{name}: failed: {exc}", error=True)
            return None
        if reply.ok:
            self._outcome(f"{name}: done")
        else:
            self._outcome(f"{name}: refused: {reply.reason}", error=True)
        self.redraw(force=True)
        return reply

    def _outcome(self, text: str, *, error: bool = False) -> None:
        self.last_outcome = text
        outcome = self._main.query_one("#outcome", Static)
        outcome.update(Text(f"last action: {text}"))
        outcome.set_class(error, "error")
        self.notify(text, severity="error" if error else "information", markup=False)
