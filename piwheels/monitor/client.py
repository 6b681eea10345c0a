"""The monitor's side of the master's status and control sockets.

:class:`MonitorClient` runs one thread that owns two sockets: a SUB on the
master's status endpoint and a DEALER on its control endpoint.  On connect
it says HELLO and applies the HISTORY reply to a :class:`FarmState`, then
applies every status message as it arrives.  It notices a lost master (the
control connection drops, or nothing arrives for *silence_timeout*
seconds), and then starts again with new sockets and a new HELLO every
*reconnect_interval* seconds until the master answers.

Other threads read :attr:`MonitorClient.state` under :attr:`MonitorClient.lock`
and send actions with :meth:`MonitorClient.submit` (a future) or
:meth:`MonitorClient.request` (blocking).  Nothing here needs textual.

:func:`fetch_state` is the one-shot form for ``piw-monitor --status``.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from piwheels import protocols
from piwheels.errors import ConfigError, ProtocolError, TransportError, TransportTimeout
from piwheels.settings import KeysSettings
from piwheels.transport import DEALER, SUB, Context, CurveKeys, Socket, load_keys

from .state import FarmState

__all__ = [
    "ACTIONS",
    "BUILDER_ACTIONS",
    "ClientKeys",
    "MonitorClient",
    "Reply",
    "client_keys",
    "fetch_state",
]

log = logging.getLogger("piwheels.monitor")

#: Actions on the master itself (no payload).
MASTER_ACTIONS = ("PAUSE", "RESUME", "QUIT")
#: Actions on one builder (``builder_id``) or all of them (``None``).
BUILDER_ACTIONS = ("SLEEP", "WAKE", "SKIP", "KILL")
ACTIONS = MASTER_ACTIONS + BUILDER_ACTIONS

# libzmq events on the control socket that mean the master is not there.
_LOST_EVENTS: dict[int, str] = {
    zmq.EVENT_DISCONNECTED: "the master closed the connection",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the master refused our key (CurveZMQ authentication)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security handshake failed (check the keys)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "security handshake failed (check the keys)",
}


@dataclass(frozen=True)
class ClientKeys:
    """CurveZMQ settings of a remote monitor: its own key pair and the master's public key."""

    client: CurveKeys
    server_public: bytes


def client_keys(keys: KeysSettings, endpoints: Sequence[str]) -> ClientKeys | None:
    """The CurveZMQ keys to use for *endpoints*, from the ``[keys]`` settings.

    Only tcp endpoints use CurveZMQ (ipc is guarded by file permissions);
    with ``curve = false`` tcp is plain too.  Missing key files are a
    :class:`ConfigError` naming the settings to set.
    """
    if not keys.curve or not any(e.startswith("tcp://") for e in endpoints):
        return None
    problems = []
    if keys.secret_key_file is None:
        problems.append("[keys] secret_key_file: a remote monitor needs its own secret key")
    if keys.server_public_key_file is None:
        problems.append("[keys] server_public_key_file: a remote monitor needs the master's key")
    if problems:
        raise ConfigError(problems)
    assert keys.secret_key_file is not None and keys.server_public_key_file is not None
    own = load_keys(keys.secret_key_file)
    if own.secret is None:
        raise ConfigError(f"[keys] secret_key_file: {keys.secret_key_file} holds no secret key")
    return ClientKeys(own, load_keys(keys.server_public_key_file).public)


@dataclass(frozen=True)
class Reply:
    """The master's answer to an action: OK, or ERROR with its reason."""

    ok: bool
    reason: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _check_action(msg: str, builder_id: int | None) -> Any:
    if msg in MASTER_ACTIONS:
        if builder_id is not None:
            raise ProtocolError(f"{msg} acts on the master and takes no builder")
        return None
    if msg in BUILDER_ACTIONS:
        if builder_id is not None and (
            isinstance(builder_id, bool) or not isinstance(builder_id, int) or builder_id < 1
        ):
            raise ProtocolError(f"{msg}: builder id must be a positive integer, not {builder_id!r}")
        return {"builder_id": builder_id}
    raise ProtocolError(f"unknown action {msg!r} (known: {', '.join(ACTIONS)})")


def _open_dealer(context: Context, endpoint: str, keys: ClientKeys | None) -> Socket:
    dealer = context.socket(DEALER, reversed(protocols.control), name="control")
    if keys is not None and endpoint.startswith("tcp://"):
        dealer.curve_client(keys.client, keys.server_public)
    dealer.connect(endpoint)
    return dealer


def fetch_state(
    control_endpoint: str,
    *,
    keys: ClientKeys | None = None,
    timeout: float = 5.0,
    context: Context | None = None,
) -> FarmState:
    """Ask the master for its HISTORY once and return it as a :class:`FarmState`.

    Raises :class:`TransportTimeout` when the master does not answer within
    *timeout* seconds.
    """
    own = context is None
    ctx = Context() if context is None else context
    dealer = _open_dealer(ctx, control_endpoint, keys)
    try:
        dealer.send_msg("HELLO", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not dealer.poll(left):
                raise TransportTimeout(
                    f"the master did not answer at {control_endpoint} within {timeout:g}s"
                )
            received = dealer.recv_msg()
            if received.msg == "HISTORY":
                state = FarmState()
                state.apply_history(received.data, _now())
                return state
            if received.msg == "ERROR":
                raise TransportError(f"the master refused HELLO: {received.data['reason']}")
            log.debug("ignoring %s while waiting for HISTORY", received.msg)
    finally:
        dealer.close(linger=0)
        if own:
            ctx.close()


@dataclass
class _Pending:
    msg: str
    future: Future[Reply]
    deadline: float


class MonitorClient:
    """Keeps a :class:`FarmState` up to date from a master, and sends it actions.

    *status_endpoint* and *control_endpoint* are the master's; *keys* is
    needed for tcp endpoints of a master that uses CurveZMQ.  The client
    counts the master lost after *silence_timeout* seconds without a
    message, or at once when the control connection drops.  *on_change*, if
    given, is called from the client's thread after each change (keep it
    cheap and thread-safe).
    """

    def __init__(
        self,
        status_endpoint: str,
        control_endpoint: str,
        *,
        keys: ClientKeys | None = None,
        silence_timeout: float = 125.0,
        reconnect_interval: float = 2.0,
        request_timeout: float = 5.0,
        context: Context | None = None,
        state: FarmState | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if silence_timeout <= 0 or reconnect_interval <= 0 or request_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.status_endpoint = status_endpoint
        self.control_endpoint = control_endpoint
        self.keys = keys
        self.silence_timeout = silence_timeout
        self.reconnect_interval = reconnect_interval
        self.request_timeout = request_timeout
        self.state = FarmState() if state is None else state
        #: Held while the state changes; hold it while reading the state.
        self.lock = threading.RLock()
        self.on_change = on_change
        #: ``connecting`` (never reached yet), ``connected`` or ``lost``.
        self.status = "connecting"
        #: Why the master counts as lost (None while connected).
        self.reason: str | None = None
        #: When the current status began (monotonic clock).
        self.status_since = time.monotonic()
        #: How many times a HISTORY has been applied (1 after the first connect).
        self.connections = 0
        self._own_context = context is None
        self._context = Context() if context is None else context
        self._outbox: queue.SimpleQueue[tuple[str, Any, Future[Reply]]] = queue.SimpleQueue()
        self._pending: deque[_Pending] = deque()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._sub: Socket | None = None
        self._dealer: Socket | None = None
        self._events: zmq.Socket[bytes] | None = None

    # -- life cycle --------------------------------------------------------------

    def start(self) -> MonitorClient:
        """Start the client's thread (it connects at once)."""
        if self._thread is not None:
            raise RuntimeError("the monitor client is already running")
        self._thread = threading.Thread(target=self._run, name="monitor-client", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the sockets (and the context, if ours)."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._fail_all(TransportError("the monitor is closing"))
        if self._own_context:
            self._context.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> MonitorClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self.status == "connected"

    def wait_connected(self, timeout: float) -> bool:
        """True once the master has answered HELLO (within *timeout* seconds)."""
        return self._connected.wait(timeout)

    # -- actions -----------------------------------------------------------------

    def submit(self, msg: str, builder_id: int | None = None) -> Future[Reply]:
        """Send an action; the future gets the :class:`Reply`.

        The future fails with :class:`TransportError` when the master is not
        connected, and with :class:`TransportTimeout` when it does not answer
        within *request_timeout* seconds.  Bad actions raise
        :class:`ProtocolError` here.
        """
        data = _check_action(msg, builder_id)
        future: Future[Reply] = Future()
        future.set_running_or_notify_cancel()
        self._outbox.put((msg, data, future))
        self._wake()
        return future

    def request(self, msg: str, builder_id: int | None = None) -> Reply:
        """Send an action and wait for the reply (see :meth:`submit`)."""
        # The client thread enforces the timeout; the extra second here only
        # guards against a thread that died.
        return self.submit(msg, builder_id).result(self.request_timeout + 1)

    # -- the thread ----------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a broken listener must not stop the client
                log.exception("monitor change listener failed")

    def _set_status(self, status: str, reason: str | None) -> None:
        if status != self.status or reason != self.reason:
            if status == "lost":
                log.warning("lost the master at %s: %s", self.control_endpoint, reason)
            elif status == "connected":
                log.info("connected to the master at %s", self.control_endpoint)
            with self.lock:
                if status != self.status:
                    self.status_since = time.monotonic()
                self.status = status
                self.reason = reason
            if status == "connected":
                self._connected.set()
            else:
                self._connected.clear()
            self._notify()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._open()
                reason = self._serve()
            except Exception as exc:  # a bad address or key: report it, retry later
                log.debug("monitor connection failed", exc_info=True)
                reason = str(exc)
            finally:
                self._close()
            if self._stop.is_set():
                break
            self._fail_all(TransportError(f"lost the master: {reason}"))
            self._set_status("lost" if self.connections else "connecting", reason)
            self._pause(self.reconnect_interval)

    def _pause(self, seconds: float) -> None:
        # Sleep, but wake for stop() and refuse actions sent meanwhile.
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            zmq.select([self._wake_r], [], [], left)
            self._drain_wake()
            self._take_outbox()

    def _open(self) -> None:
        ctx = self._context
        sub = ctx.socket(SUB, reversed(protocols.status), name="status")
        self._sub = sub
        if self.keys is not None and self.status_endpoint.startswith("tcp://"):
            sub.curve_client(self.keys.client, self.keys.server_public)
        sub.connect(self.status_endpoint)
        self._dealer = _open_dealer(ctx, self.control_endpoint, self.keys)
        self._events = self._dealer.zmq_socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )

    def _close(self) -> None:
        if self._dealer is not None and self._events is not None:
            try:
                self._dealer.zmq_socket.disable_monitor()
            except zmq.ZMQError:
                pass
        if self._events is not None:
            self._events.close(linger=0)
            self._events = None
        for sock in (self._sub, self._dealer):
            if sock is not None:
                sock.close(linger=0)
        self._sub = self._dealer = None

    def _serve(self) -> str:
        """Run one connection until the master is lost; returns why."""
        sub, dealer, events = self._sub, self._dealer, self._events
        assert sub is not None and dealer is not None and events is not None
        poller = zmq.Poller()
        poller.register(sub.zmq_socket, zmq.POLLIN)
        poller.register(dealer.zmq_socket, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        hello = _Pending("HELLO", Future(), time.monotonic() + self.request_timeout)
        self._pending.append(hello)
        dealer.send_msg("HELLO", timeout=self.request_timeout)
        last_heard = time.monotonic()
        # Status messages that come before the HISTORY are applied after it.
        early: list[tuple[str, Any, datetime]] = []
        while not self._stop.is_set():
            now = time.monotonic()
            deadlines = [last_heard + self.silence_timeout]
            if self._pending:
                deadlines.append(self._pending[0].deadline)
            wait = max(0.0, min(deadlines) - now)
            ready = dict(poller.poll(int(min(wait, 1.0) * 1000) + 1))
            now = time.monotonic()
            if self._wake_r.fileno() in ready:
                self._drain_wake()
                self._take_outbox()
            if events in ready:
                event = recv_monitor_message(events)
                if event["event"] in _LOST_EVENTS:
                    return _LOST_EVENTS[event["event"]]
            if sub.zmq_socket in ready:
                last_heard = now
                self._read_status(sub, early)
            if dealer.zmq_socket in ready:
                last_heard = now
                self._read_control(dealer, early)
            if self._pending and now >= self._pending[0].deadline:
                late = self._pending[0].msg
                return f"no answer to {late} within {self.request_timeout:g}s"
            if self.connected and now - last_heard > self.silence_timeout:
                return f"no message for {self.silence_timeout:g}s"
        return "closing"

    def _read_status(self, sub: Socket, early: list[tuple[str, Any, datetime]]) -> None:
        changed = False
        while sub.poll(0):
            try:
                received = sub.recv_msg()
            except ProtocolError as exc:
                log.warning("ignoring a bad status message: %s", exc)
                continue
            if not self.connected:
                early.append((received.msg, received.data, _now()))
                continue
            with self.lock:
                self.state.apply(received.msg, received.data, _now())
            changed = True
        if changed:
            self._notify()

    def _read_control(self, dealer: Socket, early: list[tuple[str, Any, datetime]]) -> None:
        while dealer.poll(0):
            try:
                received = dealer.recv_msg()
            except ProtocolError as exc:
                log.warning("ignoring a bad control reply: %s", exc)
                continue
            if not self._pending:
                log.warning("ignoring an unexpected %s from the master", received.msg)
                continue
            pending = self._pending.popleft()
            if received.msg == "HISTORY":
                with self.lock:
                    self.state.apply_history(received.data, _now())
                    for msg, data, when in early:
                        self.state.apply(msg, data, when)
                    early.clear()
                    self.connections += 1
                pending.future.set_result(Reply(True))
                self._set_status("connected", None)
                self._notify()
            elif received.msg == "OK":
                pending.future.set_result(Reply(True))
                self._notify()
            else:
                pending.future.set_result(Reply(False, received.data["reason"]))
                self._notify()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take_outbox(self) -> None:
        while True:
            try:
                msg, data, future = self._outbox.get_nowait()
            except queue.Empty:
                return
            if not self.connected or self._dealer is None:
                why = self.reason or "not connected yet"
                future.set_exception(TransportError(f"the master is not connected ({why})"))
                continue
            try:
                self._dealer.send_msg(msg, data, timeout=self.request_timeout)
            except (TransportError, ProtocolError) as exc:
                future.set_exception(exc)
                continue
            log.info("sent %s %s", msg, data or "")
            self._pending.append(_Pending(msg, future, time.monotonic() + self.request_timeout))

    def _fail_all(self, exc: Exception) -> None:
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                if isinstance(exc, TransportError) and pending.msg != "HELLO":
                    late = pending.deadline <= time.monotonic()
                    err: Exception = (
                        TransportTimeout(
                            f"the master did not answer {pending.msg} within "
                            f"{self.request_timeout:g}s"
                        )
                        if late
                        else exc
                    )
                else:
                    err = exc
                pending.future.set_exception(err)
        while True:
            try:
                _, _, future = self._outbox.get_nowait()
            except queue.Empty:
                return
            future.set_exception(exc)


def describe_reply(msg: str, builder: str | None, reply: Reply) -> str:
    """A one-line account of an action's outcome, for the screen and logs."""
    target = f" {builder}" if builder else ""
    if reply.ok:
        return f"{msg}{target}: done"
    return f"{msg}{target}: refused: {reply.reason}"
