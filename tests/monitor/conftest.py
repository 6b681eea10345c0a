"""A scripted master for monitor tests: a status PUB and a control ROUTER on ipc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from piwheels import protocols
from piwheels.errors import TransportError
from piwheels.transport import PUB, ROUTER, Context, CurveKeys
from tests.peer import ScriptedPeer

from .factories import history


class ScriptedMaster:
    """Plays the master's side of the status and control sockets."""

    def __init__(
        self,
        context: Context,
        status: str,
        control: str,
        *,
        server_keys: CurveKeys | None = None,
    ) -> None:
        self.context = context
        self.status = ScriptedPeer(context, PUB, protocols.status)
        self.control = ScriptedPeer(context, ROUTER, protocols.control)
        if server_keys is not None:
            self.status.socket.curve_server(server_keys)
            self.control.socket.curve_server(server_keys)
        self.status_endpoint = self.status.socket.bind(status)
        self.control_endpoint = self.control.socket.bind(control)

    def publish(self, msg: str, data: Any = None) -> None:
        self.status.send(msg, data)

    def publish_until(
        self, msg: str, data: Any, condition: Callable[[], bool], timeout: float = 10.0
    ) -> None:
        """Publish until *condition* holds (a new SUB misses what came before it joined)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{msg} was not seen within {timeout}s")
            self.publish(msg, data)
            time.sleep(0.02)

    def answer_hello(self, data: dict[str, Any] | None = None, timeout: float = 10.0) -> None:
        """Wait for a monitor's HELLO and answer it with HISTORY.

        A monitor that reconnects says HELLO from a new socket each time; only
        the newest is still listening, so older ones are skipped.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.control.expect("HELLO", timeout=max(0.0, deadline - time.monotonic()))
            while self.control.socket.poll(0):
                self.control.expect("HELLO", timeout=0)
            try:
                self.control.send("HISTORY", history() if data is None else data)
                return
            except TransportError:
                continue  # that monitor socket has closed since

    def close(self) -> None:
        self.status.close()
        self.control.close()


@pytest.fixture
def zmq_context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.close()


@pytest.fixture
def master_factory(
    tmp_short: Path, zmq_context: Context
) -> Iterator[Callable[..., ScriptedMaster]]:
    """Start scripted masters on one pair of ipc paths (a restart reuses them)."""
    started: list[ScriptedMaster] = []
    status, control = tmp_short / "status", tmp_short / "control"

    def start(**kw: Any) -> ScriptedMaster:
        for previous in started:
            if not previous.status.socket.closed:
                previous.close()
        # libzmq leaves the ipc socket files behind and a new bind replaces
        # them, as a restarted master does.
        master = ScriptedMaster(zmq_context, f"ipc://{status}", f"ipc://{control}", **kw)
        started.append(master)
        return master

    yield start
    for master in started:
        if not master.status.socket.closed:
            master.close()


@pytest.fixture
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where app tests save SVG screenshots (PIWHEELS_SCREENSHOTS, or a temp dir)."""
    configured = os.environ.get("PIWHEELS_SCREENSHOTS")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")
