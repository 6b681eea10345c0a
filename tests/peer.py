"""A scripted ZeroMQ peer for task tests: expect, send, check, with timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from piwheels import protocols
from piwheels.errors import TransportTimeout
from piwheels.tasks import Task
from piwheels.transport import ROUTER, Context, Received, Socket

_UNSET = object()


class ScriptedPeer:
    """One socket that plays the other side of a protocol in a test.

    While waiting it keeps polling *drive* tasks (``task.poll(0)``) so a test
    can run a task and its peer in one thread.
    """

    def __init__(
        self,
        context: Context,
        kind: int,
        protocol: protocols.Protocol,
        *,
        bind: str | None = None,
        connect: str | None = None,
        drive: tuple[Task, ...] = (),
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        self.socket: Socket = context.socket(kind, protocol, **kwargs)
        self.address = self.socket.bind(bind) if bind else None
        if connect:
            self.socket.connect(connect)
        self.drive = drive
        self.timeout = timeout
        self.last_peer: tuple[bytes, ...] | None = None

    def _wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for task in self.drive:
                task.poll(0)
            if self.socket.poll(0.01):
                return True
            if time.monotonic() >= deadline:
                return False

    def send(self, msg: str, data: Any = None, *, peer: tuple[bytes, ...] | None = None) -> None:
        """Send a message (to the last peer heard from, on a ROUTER)."""
        if self.socket.kind == ROUTER and peer is None:
            peer = self.last_peer
        self.socket.send_msg(msg, data, peer=peer)

    def recv(self, timeout: float | None = None) -> Received:
        """The next message, whatever it is."""
        if not self._wait(self.timeout if timeout is None else timeout):
            raise TransportTimeout(f"scripted peer: nothing arrived within {timeout}s")
        received = self.socket.recv_msg()
        if received.peer is not None:
            self.last_peer = received.peer
        return received

    def expect(self, msg: str, data: Any = _UNSET, *, timeout: float | None = None) -> Received:
        """Receive the next message and assert it is *msg* (with *data*, if given)."""
        received = self.recv(timeout)
        assert received.msg == msg, f"expected {msg}, got {received.msg} {received.data!r}"
        if data is not _UNSET:
            assert received.data == data, f"{msg}: expected {data!r}, got {received.data!r}"
        return received

    def check(self, timeout: float = 0.2) -> None:
        """Assert nothing more arrives within *timeout* seconds."""
        if self._wait(timeout):
            extra = self.socket.recv_msg()
            raise AssertionError(f"unexpected {extra.msg} {extra.data!r}")

    def close(self) -> None:
        self.socket.close(linger=0)


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 10.0, drive: tuple[Task, ...] = ()
) -> None:
    """Poll *drive* tasks until *condition* holds; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        for task in drive:
            task.poll(0)
        time.sleep(0.005)
