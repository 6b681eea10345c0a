"""sd_notify messages reach a real datagram socket."""

from __future__ import annotations

import socket
from pathlib import Path

from piwheels.systemd import Notifier


def test_notify_ready_watchdog_stopping(tmp_short: Path) -> None:
    path = tmp_short / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        assert notifier.enabled and notifier.interval == 1.0
        notifier.ready()
        notifier.watchdog()
        notifier.watchdog()  # not due yet: no second ping
        notifier.stopping()
        got = [server.recv(100) for _ in range(3)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_outside_systemd_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.interval is None
    notifier.ready()
    notifier.watchdog()
