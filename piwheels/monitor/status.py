"""``piw-monitor --status``: the farm's facts once, as plain text or JSON.

For scripts and for people without a full terminal: ask the master for its
HISTORY, print what the console would show, and exit.  A master that does
not answer is a one-line error and a non-zero exit (see
:func:`piwheels.monitor.client.fetch_state`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TextIO

from piwheels.transport import Context

from .client import ClientKeys, fetch_state
from .state import FarmState, format_duration, format_size

__all__ = ["format_status", "print_status", "status_json"]


def format_status(state: FarmState, now: datetime, *, silence: timedelta) -> str:
    """The farm as plain text: master, figures, queue, builders, recent builds, alerts."""
    out: list[str] = []
    master = state.master
    if master is None:
        out.append("Master: unknown")
    else:
        out.append(
            f"Master: {master.hostname} (piwheels {master.version}, "
            f"{master.os_name} {master.os_version}".rstrip()
            + f"), up {format_duration(state.uptime(now))}, "
            + ("PAUSED" if state.paused else "building")
        )
    latest = state.latest
    if latest is not None:
        host = latest.host
        serial = "-" if latest.upstream_serial is None else latest.upstream_serial
        lag = "-" if latest.upstream_lag is None else latest.upstream_lag
        temp = "-" if host.cpu_temp is None else f"{host.cpu_temp:.0f}C"
        out += [
            f"Figures of {latest.timestamp:%Y-%m-%d %H:%M:%S %Z}:",
            f"  upstream serial {serial}, lag {lag}",
            f"  built {latest.packages_built} packages, {latest.files_count} files, "
            f"time saved {format_duration(latest.time_saved)}",
            f"  downloads {latest.downloads_last_hour}/hour, {latest.downloads_30d} in 30 days, "
            f"{latest.downloads_all} in all",
            f"  log ingest {latest.ingest_rate:.1f} records/s",
            f"  disk {host.disk_used_pct:.0f}% of {format_size(host.disk_total)}, "
            f"memory {host.mem_used_pct:.0f}% of {format_size(host.mem_total)}, "
            f"swap {host.swap_used_pct:.0f}%, load {host.load_average:.2f}, temperature {temp}",
            "Queue (ABI: waiting, built in the last hour):",
        ]
        for abi in state.abis():
            out.append(
                f"  {abi}: {latest.queue.get(abi, 0)}, {latest.builds_last_hour.get(abi, 0)}"
            )
    rows = state.builder_rows(now, sort="abi")
    out.append(f"Builders ({len(rows)}):")
    for view in rows:
        line = f"  #{view.builder_id} {view.label} {view.abi} {view.platform} {view.state}"
        if view.paused and view.state != "sleeping":
            line += " (asleep)"
        line += f": {view.task()}"
        if view.build is not None:
            elapsed = view.build.elapsed(now)
            line += f" for {format_duration(elapsed)} of {format_duration(view.build.timeout)}"
        line += f"; seen {format_duration(now - view.last_seen)} ago"
        if view.stats is not None:
            s = view.stats
            line += (
                f"; disk {s.disk_used_pct:.0f}%, memory {s.mem_used_pct:.0f}%, "
                f"load {s.load_average:.2f}"
            )
        out.append(line)
    builds = list(reversed(state.builds))[:20]
    out.append(f"Recent builds ({len(builds)} of {len(state.builds)}):")
    for build in builds:
        status = build.status + (f" ({build.failure_class})" if build.failure_class else "")
        out.append(
            f"  {build.finished_at:%Y-%m-%d %H:%M:%S} #{build.build_id} {build.package} "
            f"{build.version} {build.abi} on {build.builder}: {status} "
            f"in {format_duration(build.duration)}"
        )
    alerts = state.alerts(now, silence=silence)
    out.append(f"Alerts ({len(alerts)}):")
    out += [f"  {a}" for a in alerts]
    return "\n".join(out) + "\n"


def status_json(state: FarmState, now: datetime, *, silence: timedelta) -> str:
    """The same facts as JSON (durations in seconds, times in ISO 8601)."""
    data = state.summary(now)
    data["alerts"] = state.alerts(now, silence=silence)
    data["now"] = now.isoformat()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def print_status(
    control_endpoint: str,
    *,
    keys: ClientKeys | None = None,
    timeout: float = 5.0,
    as_json: bool = False,
    silence: timedelta = timedelta(minutes=5),
    out: TextIO,
    context: Context | None = None,
) -> None:
    """Ask the master once and print its status to *out*.

    Raises :class:`~piwheels.errors.TransportTimeout` when it does not answer.
    """
    state = fetch_state(control_endpoint, keys=keys, timeout=timeout, context=context)
    now = datetime.now(UTC)
    if as_json:
        out.write(status_json(state, now, silence=silence))
    else:
        out.write(format_status(state, now, silence=silence))
