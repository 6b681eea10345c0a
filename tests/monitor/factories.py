"""Status and control message payloads for monitor tests (valid by construction)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from piwheels import protocols

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A time *seconds* after :data:`T0`."""
    return T0 + timedelta(seconds=seconds)


def host_stats(when: datetime = T0, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "timestamp": when,
        "disk_total": 100 << 30,
        "disk_free": 60 << 30,
        "mem_total": 8 << 30,
        "mem_free": 6 << 30,
        "swap_total": 2 << 30,
        "swap_free": 2 << 30,
        "load_average": 0.5,
        "cpu_temp": 45.0,
    }
    data.update(kw)
    return data


def master_info(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hostname": "farm-master",
        "version": "1.0",
        "started_at": T0 - timedelta(hours=5),
        "paused": False,
        "os_name": "Debian",
        "os_version": "12",
    }
    data.update(kw)
    return data


def master_stats(when: datetime = T0, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "timestamp": when,
        "host": host_stats(when),
        "paused": False,
        "queue": {"cp311": 40, "cp39": 12},
        "builds_last_hour": {"cp311": 30, "cp39": 8},
        "packages_built": 1234,
        "files_count": 5678,
        "downloads_last_hour": 900,
        "downloads_30d": 123456,
        "downloads_all": 9876543,
        "time_saved": timedelta(days=3, hours=4),
        "upstream_serial": 24681357,
        "upstream_lag": 3,
        "ingest_rate": 25.5,
    }
    data.update(kw)
    return data


def builder_state(builder_id: int = 1, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "builder_id": builder_id,
        "label": f"pi{builder_id}",
        "abi": "cp311",
        "platform": "linux_armv7l",
        "os_name": "Raspberry Pi OS",
        "os_version": "12",
        "state": "idle",
        "paused": False,
        "build": None,
        "first_seen": T0 - timedelta(hours=1),
        "last_seen": T0,
        "stats": host_stats(T0),
    }
    data.update(kw)
    return data


def current_build(
    build_id: int = 10, package: str = "numpy", version: str = "1.26.4", **kw: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "build_id": build_id,
        "package": package,
        "version": version,
        "started_at": T0 - timedelta(minutes=4),
        "timeout": timedelta(hours=3),
    }
    data.update(kw)
    return data


def build_summary(build_id: int = 7, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "build_id": build_id,
        "package": "requests",
        "version": "2.31.0",
        "abi": "cp311",
        "builder": "pi1",
        "status": "success",
        "duration": timedelta(seconds=95),
        "failure_class": None,
        "finished_at": T0 - timedelta(minutes=1),
    }
    data.update(kw)
    return data


def history(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "master": master_info(),
        "stats": [
            master_stats(at(-120), queue={"cp311": 50, "cp39": 20}, ingest_rate=10.0),
            master_stats(at(-60), queue={"cp311": 45, "cp39": 15}, ingest_rate=20.0),
            master_stats(at(0)),
        ],
        "builders": [
            builder_state(1, state="building", build=current_build()),
            builder_state(
                2,
                label="pi2",
                abi="cp39",
                platform="linux_aarch64",
                stats=host_stats(load_average=2.5),
            ),
        ],
        "builds": [
            build_summary(7),
            build_summary(
                8,
                package="pillow",
                version="10.3.0",
                status="failed",
                failure_class="compile_error",
                builder="pi2",
                abi="cp39",
                finished_at=T0 - timedelta(seconds=30),
                duration=timedelta(minutes=12),
            ),
        ],
    }
    data.update(kw)
    return data


def check(msg: str, data: Any, protocol: protocols.Protocol = protocols.status) -> Any:
    """*data* checked against the master's side of *protocol* (guards the factories)."""
    schema = protocol.send[msg]
    return None if schema is None else schema(data)
