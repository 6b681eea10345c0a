"""A pure model of the farm, built from the master's status messages.

:class:`FarmState` knows nothing of sockets or screens: it is fed the
messages of the ``status`` protocol (and the ``HISTORY`` reply of the
``control`` protocol) with the time they arrived, and answers questions
about the farm: the master, the figures over time, the builders, the
recent builds, and what looks wrong.  Every method that depends on the time
takes it as an argument, so the model is deterministic and tested without
clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from piwheels.errors import InvalidName, ProtocolError
from piwheels.wheels import abi_key as _abi_key


def abi_key(name: str) -> tuple[Any, ...]:
    """Order ABIs (``cp311``) and build targets (``cp311-linux_armv7l``) by Python version.

    The master reports queues per build target; builders report their ABI tag.
    Anything else a master might send sorts last, by name, rather than failing.
    """
    abi, _, platform = name.partition("-")
    try:
        return (0, _abi_key(abi), platform)
    except InvalidName:
        return (1, (), name)


__all__ = [
    "BUILDER_SORT_KEYS",
    "SERIES",
    "BuildSummary",
    "BuilderView",
    "CurrentBuild",
    "FarmState",
    "HostStats",
    "MasterInfo",
    "MasterStats",
    "format_duration",
    "format_size",
]

#: Thresholds for alerts (the same for the master and builders, except temperature).
DISK_FREE_ALERT = 0.10
MEM_FREE_ALERT = 0.10
SWAP_FREE_ALERT = 0.50
LOAD_ALERT = 4.0
MASTER_TEMP_ALERT = 70.0
BUILDER_TEMP_ALERT = 78.0


@dataclass(frozen=True)
class HostStats:
    """Resource figures of one host at one time."""

    timestamp: datetime
    disk_total: int
    disk_free: int
    mem_total: int
    mem_free: int
    swap_total: int
    swap_free: int
    load_average: float
    cpu_temp: float | None

    @classmethod
    def from_msg(cls, data: Mapping[str, Any]) -> HostStats:
        return cls(**data)

    @staticmethod
    def _used(total: int, free: int) -> float:
        return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * (total - free) / total))

    @property
    def disk_used_pct(self) -> float:
        return self._used(self.disk_total, self.disk_free)

    @property
    def mem_used_pct(self) -> float:
        return self._used(self.mem_total, self.mem_free)

    @property
    def swap_used_pct(self) -> float:
        return self._used(self.swap_total, self.swap_free)

    def alerts(self, temp_limit: float) -> list[str]:
        """What is wrong with these figures, in words."""
        out = []
        if self.disk_total and self.disk_free < self.disk_total * DISK_FREE_ALERT:
            out.append(f"disk {self.disk_used_pct:.0f}% full")
        if self.mem_total and self.mem_free < self.mem_total * MEM_FREE_ALERT:
            out.append(f"memory {self.mem_used_pct:.0f}% used")
        if self.swap_total and self.swap_free < self.swap_total * SWAP_FREE_ALERT:
            out.append(f"swap {self.swap_used_pct:.0f}% used")
        if self.load_average > LOAD_ALERT:
            out.append(f"load {self.load_average:.2f}")
        if self.cpu_temp is not None and self.cpu_temp > temp_limit:
            out.append(f"temperature {self.cpu_temp:.0f}°C")
        return out


@dataclass(frozen=True)
class MasterInfo:
    """The master's identity and state (``MASTER``)."""

    hostname: str
    version: str
    started_at: datetime
    paused: bool
    os_name: str
    os_version: str

    @classmethod
    def from_msg(cls, data: Mapping[str, Any]) -> MasterInfo:
        return cls(**data)


@dataclass(frozen=True)
class MasterStats:
    """One set of periodic figures (``STATS``)."""

    timestamp: datetime
    host: HostStats
    paused: bool
    queue: dict[str, int]
    builds_last_hour: dict[str, int]
    packages_built: int
    files_count: int
    downloads_last_hour: int
    downloads_30d: int
    downloads_all: int
    time_saved: timedelta
    upstream_serial: int | None
    upstream_lag: int | None
    ingest_rate: float

    @classmethod
    def from_msg(cls, data: Mapping[str, Any]) -> MasterStats:
        values = dict(data)
        values["host"] = HostStats.from_msg(values["host"])
        values["queue"] = dict(values["queue"])
        values["builds_last_hour"] = dict(values["builds_last_hour"])
        return cls(**values)


@dataclass(frozen=True)
class CurrentBuild:
    """The build a builder is working on."""

    build_id: int
    package: str
    version: str
    started_at: datetime
    timeout: timedelta

    def elapsed(self, now: datetime) -> timedelta:
        return max(timedelta(0), now - self.started_at)


@dataclass(frozen=True)
class BuilderView:
    """What the monitor knows of one builder."""

    builder_id: int
    label: str
    abi: str
    platform: str
    os_name: str
    os_version: str
    state: str
    paused: bool
    build: CurrentBuild | None
    first_seen: datetime
    last_seen: datetime
    stats: HostStats | None
    #: Why the builder went away (set by ``GONE``).
    gone_reason: str | None = None

    @classmethod
    def from_msg(cls, data: Mapping[str, Any]) -> BuilderView:
        values = dict(data)
        if values["build"] is not None:
            values["build"] = CurrentBuild(**values["build"])
        if values["stats"] is not None:
            values["stats"] = HostStats.from_msg(values["stats"])
        return cls(**values)

    @property
    def gone(self) -> bool:
        return self.state == "gone"

    def task(self) -> str:
        """The current build (or what the builder is doing) in words."""
        if self.build is not None:
            return f"{self.build.package} {self.build.version}"
        if self.gone:
            return f"gone: {self.gone_reason}" if self.gone_reason else "gone"
        return {"idle": "waiting for work", "sleeping": "asleep", "paused": "paused"}.get(
            self.state, self.state
        )

    def alerts(self, now: datetime, silence: timedelta) -> list[str]:
        """What is wrong with this builder (silent too long, resources, overdue build)."""
        if self.gone:
            return []
        out = []
        quiet = now - self.last_seen
        if quiet > silence:
            out.append(f"silent for {format_duration(quiet)}")
        if self.build is not None and self.build.elapsed(now) > self.build.timeout:
            out.append("build past its timeout")
        if self.stats is not None:
            out.extend(self.stats.alerts(BUILDER_TEMP_ALERT))
        return out


@dataclass(frozen=True)
class BuildSummary:
    """A finished build (``BUILD``)."""

    build_id: int
    package: str
    version: str
    abi: str
    builder: str
    status: str
    duration: timedelta
    failure_class: str | None
    finished_at: datetime

    @classmethod
    def from_msg(cls, data: Mapping[str, Any]) -> BuildSummary:
        return cls(**data)


#: Names of the series :meth:`FarmState.series` knows; ``queue`` and
#: ``builds_last_hour`` take an ABI (None for the sum over ABIs).
SERIES = (
    "queue",
    "builds_last_hour",
    "downloads_last_hour",
    "disk",
    "memory",
    "swap",
    "load",
    "temperature",
    "ingest_rate",
    "upstream_lag",
)

#: Columns the builders table can be sorted by.
BUILDER_SORT_KEYS = ("label", "abi", "state", "elapsed", "last_seen", "disk", "memory", "load")


@dataclass
class FarmState:
    """The farm as the monitor sees it, built from messages.

    *stats_limit* and *builds_limit* bound the history kept (oldest dropped);
    builders that went away are kept (marked gone) up to *gone_limit*.
    """

    stats_limit: int = 1440
    builds_limit: int = 500
    gone_limit: int = 100
    master: MasterInfo | None = None
    stats: deque[MasterStats] = field(init=False)
    builders: dict[int, BuilderView] = field(default_factory=dict)
    builds: deque[BuildSummary] = field(init=False)
    #: When the last message arrived (the caller's clock).
    last_message: datetime | None = None
    #: How many messages have been applied (a cheap "anything changed?" check).
    version: int = 0

    def __post_init__(self) -> None:
        if self.stats_limit < 1 or self.builds_limit < 1 or self.gone_limit < 0:
            raise ValueError("history limits must be positive")
        self.stats = deque(maxlen=self.stats_limit)
        self.builds = deque(maxlen=self.builds_limit)

    # -- feeding ---------------------------------------------------------------

    def apply(self, msg: str, data: Any, now: datetime) -> None:
        """Apply one status message (already checked by the transport)."""
        try:
            handler = getattr(self, f"_do_{msg}")
        except AttributeError:
            raise ProtocolError(f"the monitor does not understand {msg}") from None
        handler(data)
        self.last_message = now
        self.version += 1

    def apply_history(self, data: Mapping[str, Any], now: datetime) -> None:
        """Start again from a ``HISTORY`` reply (what a new monitor is told)."""
        self.master = MasterInfo.from_msg(data["master"])
        self.stats.clear()
        for item in sorted(data["stats"], key=lambda s: s["timestamp"]):
            self.stats.append(MasterStats.from_msg(item))
        self.builders.clear()
        for item in data["builders"]:
            view = BuilderView.from_msg(item)
            self.builders[view.builder_id] = view
        self.builds.clear()
        for item in sorted(data["builds"], key=lambda b: b["finished_at"]):
            self.builds.append(BuildSummary.from_msg(item))
        self._prune_gone()
        self.last_message = now
        self.version += 1

    def _do_MASTER(self, data: Mapping[str, Any]) -> None:
        self.master = MasterInfo.from_msg(data)

    def _do_STATS(self, data: Mapping[str, Any]) -> None:
        stats = MasterStats.from_msg(data)
        # Figures arrive in order; one that is older than the newest (a
        # replay after HISTORY) would draw the chart backwards, so drop it.
        if self.stats and stats.timestamp <= self.stats[-1].timestamp:
            return
        self.stats.append(stats)
        # The figures carry the paused flag too; keep the master's in step.
        if self.master is not None and self.master.paused != stats.paused:
            self.master = replace(self.master, paused=stats.paused)

    def _do_BUILDER(self, data: Mapping[str, Any]) -> None:
        view = BuilderView.from_msg(data)
        self.builders[view.builder_id] = view
        if view.gone:
            self._prune_gone()

    def _do_BUILD(self, data: Mapping[str, Any]) -> None:
        summary = BuildSummary.from_msg(data)
        if any(b.build_id == summary.build_id for b in self.builds):
            return
        self.builds.append(summary)

    def _do_GONE(self, data: Mapping[str, Any]) -> None:
        view = self.builders.get(data["builder_id"])
        if view is None:
            return
        self.builders[view.builder_id] = replace(
            view, state="gone", build=None, gone_reason=data["reason"]
        )
        self._prune_gone()

    def _prune_gone(self) -> None:
        gone = sorted((b for b in self.builders.values() if b.gone), key=lambda b: b.last_seen)
        for view in gone[: max(0, len(gone) - self.gone_limit)]:
            del self.builders[view.builder_id]

    # -- questions ---------------------------------------------------------------

    @property
    def latest(self) -> MasterStats | None:
        """The newest figures, if any."""
        return self.stats[-1] if self.stats else None

    @property
    def paused(self) -> bool | None:
        """Whether the master hands out builds (None before anything is known)."""
        if self.master is not None:
            return self.master.paused
        return self.latest.paused if self.latest is not None else None

    def uptime(self, now: datetime) -> timedelta | None:
        if self.master is None:
            return None
        return max(timedelta(0), now - self.master.started_at)

    def abis(self) -> list[str]:
        """Every ABI seen in the figures or among builders, by Python version."""
        seen: set[str] = {b.abi for b in self.builders.values()}
        latest = self.latest
        if latest is not None:
            seen.update(latest.queue, latest.builds_last_hour)
        return sorted(seen, key=abi_key)

    def series(self, name: str, abi: str | None = None) -> list[float]:
        """One figure over time, oldest first (for the charts)."""
        if name not in SERIES:
            raise KeyError(f"no series {name!r} (known: {', '.join(SERIES)})")
        return [_figure(stats, name, abi) for stats in self.stats]

    def builder_rows(
        self,
        now: datetime,
        *,
        sort: str = "label",
        text: str = "",
        reverse: bool = False,
    ) -> list[BuilderView]:
        """Builders whose row contains *text* (any case), sorted by *sort*."""
        if sort not in BUILDER_SORT_KEYS:
            raise KeyError(f"cannot sort builders by {sort!r}")
        needle = text.strip().lower()
        rows = [
            b for b in self.builders.values() if not needle or needle in _builder_text(b).lower()
        ]
        rows.sort(key=lambda b: _builder_key(b, sort, now), reverse=reverse)
        return rows

    def alerts(self, now: datetime, *, silence: timedelta) -> list[str]:
        """Everything that looks wrong, one line each (master first)."""
        out = []
        if self.last_message is not None and now - self.last_message > silence:
            out.append(f"master: no message for {format_duration(now - self.last_message)}")
        latest = self.latest
        if latest is not None:
            out.extend(f"master: {a}" for a in latest.host.alerts(MASTER_TEMP_ALERT))
            if latest.downloads_last_hour == 0:
                out.append("master: no downloads in the last hour")
        for view in sorted(self.builders.values(), key=lambda b: b.label):
            out.extend(f"{view.label}: {a}" for a in view.alerts(now, silence))
        return out

    def summary(self, now: datetime) -> dict[str, Any]:
        """Every fact as plain JSON-friendly values (for ``--status --json``)."""
        latest = self.latest
        master: dict[str, Any] | None = None
        if self.master is not None:
            master = {
                "hostname": self.master.hostname,
                "version": self.master.version,
                "os": f"{self.master.os_name} {self.master.os_version}".strip(),
                "started_at": self.master.started_at.isoformat(),
                "uptime": _seconds(self.uptime(now)),
                "paused": self.master.paused,
            }
        figures: dict[str, Any] | None = None
        if latest is not None:
            figures = {
                "timestamp": latest.timestamp.isoformat(),
                "queue": dict(sorted(latest.queue.items(), key=lambda i: abi_key(i[0]))),
                "builds_last_hour": dict(
                    sorted(latest.builds_last_hour.items(), key=lambda i: abi_key(i[0]))
                ),
                "packages_built": latest.packages_built,
                "files_count": latest.files_count,
                "downloads_last_hour": latest.downloads_last_hour,
                "downloads_30d": latest.downloads_30d,
                "downloads_all": latest.downloads_all,
                "time_saved": _seconds(latest.time_saved),
                "upstream_serial": latest.upstream_serial,
                "upstream_lag": latest.upstream_lag,
                "ingest_rate": latest.ingest_rate,
                "host": _host_json(latest.host),
            }
        return {
            "master": master,
            "stats": figures,
            "builders": [
                {
                    "builder_id": b.builder_id,
                    "label": b.label,
                    "abi": b.abi,
                    "platform": b.platform,
                    "os": f"{b.os_name} {b.os_version}".strip(),
                    "state": b.state,
                    "paused": b.paused,
                    "build": None
                    if b.build is None
                    else {
                        "build_id": b.build.build_id,
                        "package": b.build.package,
                        "version": b.build.version,
                        "elapsed": _seconds(b.build.elapsed(now)),
                        "timeout": _seconds(b.build.timeout),
                    },
                    "last_seen": b.last_seen.isoformat(),
                    "gone_reason": b.gone_reason,
                    "host": None if b.stats is None else _host_json(b.stats),
                }
                for b in self.builder_rows(now, sort="label")
            ],
            "builds": [
                {
                    "build_id": b.build_id,
                    "package": b.package,
                    "version": b.version,
                    "abi": b.abi,
                    "builder": b.builder,
                    "status": b.status,
                    "failure_class": b.failure_class,
                    "duration": _seconds(b.duration),
                    "finished_at": b.finished_at.isoformat(),
                }
                for b in reversed(self.builds)
            ],
        }


# -- helpers ---------------------------------------------------------------------


def _figure(stats: MasterStats, name: str, abi: str | None) -> float:
    host = stats.host
    if name in ("queue", "builds_last_hour"):
        table: dict[str, int] = getattr(stats, name)
        return float(sum(table.values()) if abi is None else table.get(abi, 0))
    value: float | None = {
        "downloads_last_hour": stats.downloads_last_hour,
        "disk": host.disk_used_pct,
        "memory": host.mem_used_pct,
        "swap": host.swap_used_pct,
        "load": host.load_average,
        "temperature": host.cpu_temp,
        "ingest_rate": stats.ingest_rate,
        "upstream_lag": stats.upstream_lag,
    }[name]
    # Charts need a number at every point; an unknown figure draws as zero.
    return 0.0 if value is None else float(value)


def _builder_text(view: BuilderView) -> str:
    return " ".join(
        (str(view.builder_id), view.label, view.abi, view.platform, view.state, view.task())
    )


def _builder_key(view: BuilderView, sort: str, now: datetime) -> tuple[Any, ...]:
    stats = view.stats
    primary: Any
    if sort == "label":
        primary = view.label
    elif sort == "abi":
        primary = abi_key(view.abi)
    elif sort == "state":
        primary = view.state
    elif sort == "elapsed":
        primary = view.build.elapsed(now) if view.build is not None else timedelta(-1)
    elif sort == "last_seen":
        primary = view.last_seen
    elif sort == "disk":
        primary = stats.disk_used_pct if stats else -1.0
    elif sort == "memory":
        primary = stats.mem_used_pct if stats else -1.0
    else:
        primary = stats.load_average if stats else -1.0
    # Ties broken by ABI then label, as operators expect from a list of machines.
    return (primary, abi_key(view.abi), view.label, view.builder_id)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def _host_json(host: HostStats) -> dict[str, Any]:
    return {
        "timestamp": host.timestamp.isoformat(),
        "disk_total": host.disk_total,
        "disk_free": host.disk_free,
        "mem_total": host.mem_total,
        "mem_free": host.mem_free,
        "swap_total": host.swap_total,
        "swap_free": host.swap_free,
        "load_average": host.load_average,
        "cpu_temp": host.cpu_temp,
    }


def format_duration(value: timedelta | None) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 09s``, ``12s`` (two units at most)."""
    if value is None:
        return "-"
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {seconds:02d}s"
    return f"{sign}{seconds}s"


def format_size(value: int | float | None) -> str:
    """A byte count in binary units (``1.5G``)."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(size) < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")
