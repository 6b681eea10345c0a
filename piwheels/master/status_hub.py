"""The status hub: what monitors see of the master, and what they can ask of it.

Tasks push status messages (builder states, finished builds, figures) to the
hub's internal feed; the hub keeps a short history and publishes each message
to monitors.  A monitor that connects says HELLO on the control socket and gets
that history, so its charts are not empty.  Control requests either act on the
whole master (pause, resume, quit) or are passed to the build dispatcher
(sleep, wake, skip, kill one builder or all).
"""

from __future__ import annotations

import platform
import socket
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__, protocols
from ..errors import PiwheelsError, ProtocolError, TransportError
from ..tasks import Endpoint, Task
from ..transport import PUB, PULL, PUSH, ROUTER, Context, _check, decode
from .env import MasterEnv

#: How many periodic figures, finished builds and builder states are replayed.
STATS_HISTORY = 360
BUILDS_HISTORY = 100
#: Feed messages handled per wake-up (a build's end sends several at once).
BURST = 64


def os_release() -> tuple[str, str]:
    """The OS name and version from /etc/os-release (or the kernel's)."""
    try:
        lines = Path("/etc/os-release").read_text(encoding="utf-8").splitlines()
        info = dict(line.split("=", 1) for line in lines if "=" in line)
        return info.get("NAME", "").strip('"'), info.get("VERSION_ID", "").strip('"')
    except OSError:
        return platform.system(), platform.release()


class StatusHub(Task):
    """Publishes the master's state to monitors and takes their requests."""

    role = "status_hub"
    pausable = False
    binds = (
        Endpoint("status_feed", "PULL", "status_feed", "tasks report here"),
        Endpoint("status", "PUB", "status", "monitors subscribe here"),
        Endpoint("control", "ROUTER", "control", "monitors send requests here"),
    )
    connects = (Endpoint("builder_control", "PUSH", "builder_control", "builder actions"),)

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        master_action: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.master_action = master_action or (lambda action: None)
        name, version = os_release()
        self.info: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "version": __version__,
            "started_at": datetime.now(UTC),
            "paused": False,
            "os_name": name,
            "os_version": version,
        }
        self.stats: deque[dict[str, Any]] = deque(maxlen=STATS_HISTORY)
        self.builds: deque[dict[str, Any]] = deque(maxlen=BUILDS_HISTORY)
        self.builders: dict[int, dict[str, Any]] = {}

        self.feed = self.socket(PULL, protocols.status_feed, name="status_feed")
        self.feed.bind(env.addresses["status_feed"])
        self.register(self.feed, self.handle_feed)
        self.publisher = self.socket(PUB, protocols.status, name="status")
        self.publisher.bind(env.addresses["status"])
        self.control_sock = self.socket(ROUTER, protocols.control, name="control")
        if env.server_keys is not None and env.addresses["control"].startswith("tcp://"):
            self.control_sock.curve_server(env.server_keys)
            self.publisher.curve_server(env.server_keys)
        self.control_sock.bind(env.addresses["control"])
        self.register(self.control_sock)
        self.builder_control = self.socket(
            PUSH, reversed(protocols.builder_control), name="builder_control"
        )
        self.builder_control.bind(env.addresses["builder_control"])
        # Say who we are now and then, so a monitor that missed it catches up.
        self.every(30, self.announce, pausable=False)

    def setup(self) -> None:
        self.announce()

    def announce(self) -> None:
        self.publisher.send_msg("MASTER", self.info)

    def set_paused(self, paused: bool) -> None:
        """Record the master's paused state and tell monitors."""
        self.info = {**self.info, "paused": paused}
        self.announce()

    # -- the feed from other tasks ------------------------------------------------------

    def handle_feed(self) -> None:
        """Handle the feed messages waiting, up to a burst, in one wake-up."""
        sock = self.feed.zmq_socket
        for _ in range(BURST):
            self._feed_message(sock.recv_multipart())
            if not sock.poll(0):
                break

    def _feed_message(self, frames: list[bytes]) -> None:
        # Checked here once, in full; the same bytes then go to monitors as they
        # came (the status protocol's messages are the feed's: checking and encoding
        # them again on the way out would change nothing).
        try:
            if len(frames) != 1:
                raise ProtocolError(f"{len(frames)} frames, expected 1")
            if len(frames[0]) > self.feed.max_msg_size:
                raise ProtocolError(f"{len(frames[0])} byte message is over the size limit")
            msg, data = decode(frames[0])
            data = _check(protocols.status_feed, msg, data, sending=False)
        except ProtocolError as exc:
            self.log.warning("status feed: %s", exc)
            return
        if msg == "STATS":
            self.stats.append(data)
            if data["paused"] != self.info["paused"]:
                self.info = {**self.info, "paused": data["paused"]}
        elif msg == "BUILD":
            self.builds.append(data)
        elif msg == "BUILDER":
            self.builders[data["builder_id"]] = data
        elif msg == "GONE":
            self.builders.pop(data["builder_id"], None)
        elif msg == "MASTER":
            self.info = data
        self.publisher.send_raw(frames)

    # -- requests from monitors ------------------------------------------------------------

    def _reply(self, peer: tuple[bytes, ...], msg: str, data: Any = None) -> None:
        try:
            self.control_sock.send_msg(msg, data, peer=peer)
        except TransportError as exc:
            self.log.warning("cannot answer monitor: %s", exc)

    def on_bad_message(self, sock: Any, exc: PiwheelsError) -> None:
        peer = getattr(exc, "peer", None)
        if sock is self.control_sock and peer:
            self._reply(peer, "ERROR", {"reason": str(exc)[:400]})

    def do_HELLO(self, data: None, peer: tuple[bytes, ...]) -> None:
        self._reply(
            peer,
            "HISTORY",
            {
                "master": self.info,
                "stats": list(self.stats),
                "builders": list(self.builders.values()),
                "builds": list(self.builds),
            },
        )

    def _master(self, action: str, peer: tuple[bytes, ...]) -> None:
        self.log.info("monitor asks to %s the master", action.lower())
        self.master_action(action)
        if action in ("PAUSE", "RESUME"):
            self.set_paused(action == "PAUSE")
        self._reply(peer, "OK")

    def do_PAUSE(self, data: None, peer: tuple[bytes, ...]) -> None:
        self._master("PAUSE", peer)

    def do_RESUME(self, data: None, peer: tuple[bytes, ...]) -> None:
        self._master("RESUME", peer)

    def do_QUIT(self, data: None, peer: tuple[bytes, ...]) -> None:
        self._master("QUIT", peer)

    def _builder_action(self, msg: str, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        wanted = data["builder_id"]
        if wanted is not None and wanted not in self.builders:
            self._reply(peer, "ERROR", {"reason": f"no builder {wanted} is connected"})
            return
        self.builder_control.send_msg(msg, data)
        self._reply(peer, "OK")

    def do_SLEEP(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self._builder_action("SLEEP", data, peer)

    def do_WAKE(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self._builder_action("WAKE", data, peer)

    def do_SKIP(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self._builder_action("SKIP", data, peer)

    def do_KILL(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self._builder_action("KILL", data, peer)
