"""The task runtime: each master task is a thread that owns its sockets.

A :class:`Task` registers sockets with a handler each; by default the handler
receives one message and calls ``do_<MESSAGE>(data)`` (or
``do_<MESSAGE>(data, peer)`` on a ROUTER socket).  ``every(interval, fn)``
adds periodic work.  Every task also has a control socket that accepts PAUSE,
RESUME and QUIT.

Tests drive a task by calling :meth:`Task.poll` with a zero timeout, without
starting the thread.  A message that fails its protocol check is logged with
its sender and dropped; the task goes on.  Any other exception ends the task:
it is logged with the task's name and reported to the ``on_fatal`` callback,
which the master uses to stop everything with a non-zero exit.

Tasks declare the endpoints they bind and connect (by logical name) so the
master can derive the start order and the docs can print the socket map.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zmq

from . import protocols
from .errors import PiwheelsError, ProtocolError, TransportError
from .transport import PULL, PUSH, ROUTER, Context, Received, Socket

Handler = Callable[[], None]

_counter = itertools.count(1)


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    interval: float = field(compare=False)
    fn: Callable[[], Any] = field(compare=False)
    pausable: bool = field(compare=False)


@dataclass(frozen=True)
class Endpoint:
    """A socket a task binds or connects, by logical name (e.g. ``builder``)."""

    name: str
    kind: str
    protocol: str
    doc: str = ""


class Task(threading.Thread):
    """Base class of every master task (and a few client-side loops)."""

    #: The task's role; also its logger's name (``piwheels.<role>``) and thread name.
    role: ClassVar[str] = "task"
    #: False for tasks that must keep serving while the master is paused.
    pausable: ClassVar[bool] = True
    #: Logical endpoints this task binds and connects, for ordering and the docs.
    binds: ClassVar[Sequence[Endpoint]] = ()
    connects: ClassVar[Sequence[Endpoint]] = ()
    #: True for a task the master runs in a child process of its own (see
    #: :mod:`piwheels.master.process`): one that shares nothing with the others but sockets.
    process: ClassVar[bool] = False
    #: The name ps and top show for that process (at most 15 characters).
    process_name: ClassVar[str] = ""

    def __init__(
        self,
        context: Context,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name=self.role, daemon=True)
        self.context = context
        self.log = logging.getLogger(f"piwheels.{self.role}")
        self.paused = False
        self.failure: BaseException | None = None
        self._on_fatal = on_fatal
        self._quit = False
        self._poller = zmq.Poller()
        # Keyed by what the poller returns: a zmq socket, or a file descriptor.
        self._handlers: dict[Any, tuple[Handler, bool]] = {}
        self._sockets: list[Socket] = []
        self._timers: list[_Timer] = []
        self.control_address = f"inproc://control-{self.role}-{uuid.uuid4().hex[:8]}"
        self.control = self.socket(PULL, protocols.task_control, name="control")
        self.control.bind(self.control_address)
        self.register(self.control, self._handle_control, pausable=False)

    # -- building blocks -----------------------------------------------------------

    def socket(self, kind: int, protocol: protocols.Protocol, **kwargs: Any) -> Socket:
        """Create a socket owned (and closed) by this task."""
        sock = self.context.socket(kind, protocol, **kwargs)
        self._sockets.append(sock)
        return sock

    def register(
        self,
        sock: Socket,
        handler: Handler | None = None,
        *,
        pausable: bool | None = None,
    ) -> None:
        """Poll *sock*; call *handler* (default: ``handle_<name>`` or dispatch) when readable."""
        if handler is None:
            handler = getattr(self, f"handle_{sock.name}", None) or (lambda: self.dispatch(sock))
        paus = self.pausable if pausable is None else pausable
        self._handlers[sock.zmq_socket] = (handler, paus)
        self._poller.register(sock.zmq_socket, zmq.POLLIN)

    def register_fd(self, fd: int, handler: Handler, *, pausable: bool | None = None) -> None:
        """Poll the file descriptor *fd* too (e.g. a pipe a helper thread writes to when its
        work is done); call *handler* when it is readable.  The caller owns and closes *fd*."""
        self._handlers[fd] = (handler, self.pausable if pausable is None else pausable)
        self._poller.register(fd, zmq.POLLIN)

    def unregister_fd(self, fd: int) -> None:
        """Stop polling *fd*."""
        if self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def unregister(self, sock: Socket) -> None:
        """Stop polling *sock*."""
        if self._handlers.pop(sock.zmq_socket, None) is not None:
            self._poller.unregister(sock.zmq_socket)

    def every(self, interval: float, fn: Callable[[], Any], *, pausable: bool = True) -> None:
        """Call *fn* every *interval* seconds (first call after one interval)."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        heapq.heappush(
            self._timers,
            _Timer(time.monotonic() + interval, next(_counter), interval, fn, pausable),
        )

    # -- dispatch -------------------------------------------------------------------

    def dispatch(self, sock: Socket) -> None:
        """Receive one message on *sock* and call its ``do_<MSG>`` method."""
        try:
            received = sock.recv_msg()
        except ProtocolError as exc:
            self.log.warning("%s", exc)
            self.on_bad_message(sock, exc)
            return
        self.handle_message(sock, received)

    def handle_message(self, sock: Socket, received: Received) -> None:
        """Call ``do_<MSG>`` for a checked message."""
        method = getattr(self, f"do_{received.msg}", None)
        if method is None:
            # The protocol allows it but this task has no use for it.
            self.log.warning(
                "%s: no handler for %s from %s", sock.name, received.msg, received.peer_name
            )
            return
        if sock.kind == ROUTER:
            method(received.data, received.peer)
        else:
            method(received.data)

    def on_bad_message(self, sock: Socket, exc: ProtocolError) -> None:
        """Hook for tasks that answer bad messages (e.g. with an error reply)."""

    def _handle_control(self) -> None:
        try:
            msg = self.control.recv_msg().msg
        except ProtocolError as exc:
            self.log.warning("control: %s", exc)
            return
        if msg == "QUIT":
            self._quit = True
        elif msg == "PAUSE":
            if not self.paused:
                self.paused = True
                self.on_pause()
        elif msg == "RESUME" and self.paused:
            self.paused = False
            self.on_resume()

    def on_pause(self) -> None:
        """Called when the task is paused."""

    def on_resume(self) -> None:
        """Called when the task is resumed."""

    # -- the loop ----------------------------------------------------------------------

    @property
    def quitting(self) -> bool:
        return self._quit

    def poll(self, timeout: float | None = 0) -> None:
        """One round: run due timers, wait up to *timeout* seconds, handle what arrived."""
        self._run_timers()
        wait = timeout
        if self._timers:
            until_next = max(0.0, self._timers[0].due - time.monotonic())
            wait = until_next if wait is None else min(wait, until_next)
        # Rounded up: rounded down, the last millisecond before a timer would be spent
        # polling without waiting, over and over (a busy loop of a few % of a core).
        ready = dict(self._poller.poll(None if wait is None else math.ceil(wait * 1000)))
        for zsock in ready:
            entry = self._handlers.get(zsock)
            if entry is None:
                continue
            handler, pausable = entry
            if self.paused and pausable:
                continue
            handler()
            if self._quit:
                break
        self._run_timers()

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            if not (self.paused and timer.pausable):
                timer.fn()
            # Re-arm from now, not from the old due time, so a slow run does not
            # cause a burst of catch-up calls.
            timer.due = max(timer.due + timer.interval, time.monotonic())
            heapq.heappush(self._timers, timer)

    def setup(self) -> None:
        """Work done at the start of the thread, before the first poll."""

    def teardown(self) -> None:
        """Work done at the end of the thread, before the sockets close."""

    def run(self) -> None:
        try:
            self.setup()
            while not self._quit:
                # While paused, wait only on the control socket's timeout so
                # paused tasks do not spin.
                self.poll(0.5 if not self.paused else 0.2)
        except BaseException as exc:
            self.failure = exc
            if isinstance(exc, PiwheelsError):
                self.log.error("task %s failed: %s", self.role, exc)
            else:
                self.log.exception("task %s failed", self.role)
            if self._on_fatal is not None:
                self._on_fatal(self, exc)
        finally:
            try:
                self.teardown()
            finally:
                self.close()

    def close(self) -> None:
        """Close every socket of the task."""
        for sock in self._sockets:
            sock.close(linger=0.5)
        self._sockets.clear()
        self._handlers.clear()

    # -- control from other threads ---------------------------------------------------------

    def send_control(self, msg: str) -> None:
        """Send PAUSE, RESUME or QUIT to this task from any thread."""
        sock = self.context.socket(PUSH, reversed(protocols.task_control))
        try:
            sock.connect(self.control_address)
            sock.send_msg(msg, timeout=5)
        except TransportError:
            # The task has already closed its control socket: it is gone.
            pass
        finally:
            sock.close(linger=1)

    def quit(self) -> None:
        """Ask the task to end; use join() to wait for it."""
        self.send_control("QUIT")

    def pause(self) -> None:
        self.send_control("PAUSE")

    def resume(self) -> None:
        self.send_control("RESUME")


# -- ordering ----------------------------------------------------------------------------


def start_order(tasks: Iterable[type[Task]]) -> list[type[Task]]:
    """Order task classes so every endpoint is bound before anything connects to it."""
    tasks = list(tasks)
    binders: dict[str, type[Task]] = {}
    for task in tasks:
        for ep in task.binds:
            if ep.name in binders:
                raise ValueError(
                    f"endpoint {ep.name} bound by both {binders[ep.name].role} and {task.role}"
                )
            binders[ep.name] = task
    deps: dict[type[Task], set[type[Task]]] = {
        t: {binders[ep.name] for ep in t.connects if ep.name in binders} - {t} for t in tasks
    }
    ordered: list[type[Task]] = []
    done: set[type[Task]] = set()
    visiting: set[type[Task]] = set()

    def visit(task: type[Task]) -> None:
        if task in done:
            return
        if task in visiting:
            raise ValueError(f"tasks connect to each other in a cycle through {task.role}")
        visiting.add(task)
        for dep in sorted(deps[task], key=lambda t: t.role):
            visit(dep)
        visiting.discard(task)
        done.add(task)
        ordered.append(task)

    for task in tasks:
        visit(task)
    return ordered


def socket_map(tasks: Iterable[type[Task]]) -> list[tuple[str, str, str, str, list[str]]]:
    """Rows of (endpoint, socket kind, protocol, binder, connectors) for the docs."""
    tasks = list(tasks)
    rows: dict[str, tuple[str, str, str, str, list[str]]] = {}
    for task in tasks:
        for ep in task.binds:
            rows[ep.name] = (ep.name, ep.kind, ep.protocol, task.role, [])
    for task in tasks:
        for ep in task.connects:
            if ep.name not in rows:
                rows[ep.name] = (ep.name, ep.kind, ep.protocol, "(outside the master)", [])
            rows[ep.name][4].append(task.role)
    return [rows[k] for k in sorted(rows)]


def endpoints_of(addresses: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """Pick the addresses of *names* from *addresses*, failing clearly on a missing one."""
    out = {}
    for name in names:
        if name not in addresses:
            raise KeyError(f"no address configured for endpoint {name}")
        out[name] = addresses[name]
    return out
