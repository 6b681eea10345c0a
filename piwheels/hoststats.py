"""Resource figures of this host, in the shape of ``protocols.HOST_STATS``."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def cpu_temperature() -> float | None:
    """The first thermal zone's temperature in Celsius, if the host has one."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return int(zone.read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
    return None


def host_stats(disk_path: Path) -> dict[str, Any]:
    """Disk (of the file system holding *disk_path*), memory, swap, load and temperature."""
    try:
        disk = shutil.disk_usage(disk_path)
        disk_total, disk_free = disk.total, disk.free
    except OSError:
        disk_total = disk_free = 0
    mem = _meminfo()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return {
        "timestamp": datetime.now(UTC),
        "disk_total": disk_total,
        "disk_free": disk_free,
        "mem_total": mem.get("MemTotal", 0),
        "mem_free": mem.get("MemAvailable", mem.get("MemFree", 0)),
        "swap_total": mem.get("SwapTotal", 0),
        "swap_free": mem.get("SwapFree", 0),
        "load_average": float(load),
        "cpu_temp": cpu_temperature(),
    }
