"""The request helper every admin tool shares, and the confirmation prompt.

A request is one message on a DEALER socket to the master's admin gateway;
the gateway answers with any number of PROGRESS (and, for imports, SEND)
messages and then OK or ERROR.  :meth:`AdminClient.request` returns the OK
payload or raises :class:`~piwheels.errors.AdminError` with the ERROR's code
and message (exit status 65).  When nothing answers within the timeout the
master is not running: :class:`MasterUnavailable` (exit status 69).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from .. import protocols
from ..errors import (
    EX_UNAVAILABLE,
    AdminError,
    ProtocolError,
    TransportError,
    TransportTimeout,
    UsageError,
)
from ..transport import DEALER, Context

__all__ = ["AdminClient", "MasterUnavailable", "confirm", "request"]

ProgressHandler = Callable[[dict[str, Any]], None]
SendHandler = Callable[[dict[str, Any]], None]


class MasterUnavailable(TransportError):
    """Nothing answered on the admin socket: the master is not running there."""

    exit_code = EX_UNAVAILABLE


class AdminClient:
    """A connection to the master's admin socket at *address*.

    *timeout* is how long to wait for the master to take a request and,
    afterwards, for each message of the answer (the gateway sends PROGRESS
    at least once a second while it works on something long).
    """

    def __init__(
        self, address: str, *, timeout: float = 10.0, context: Context | None = None
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._own_context = context is None
        self.context = context or Context()
        self.socket = self.context.socket(DEALER, reversed(protocols.admin), name="admin")
        # Queue nothing for a master that is not there: the send times out instead.
        self.socket.zmq_socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.connect(address)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.close()

    def _unavailable(self) -> MasterUnavailable:
        return MasterUnavailable(
            f"the master is not running at {self.address} (no answer within {self.timeout:g} s)"
        )

    def _send(self, msg: str, data: Any) -> None:
        try:
            self.socket.send_msg(msg, data, timeout=self.timeout)
        except TransportTimeout:
            raise self._unavailable() from None
        except ProtocolError as exc:
            # Caught here, before the master sees it: the same answer it would give.
            raise AdminError("INVALID", f"INVALID: {exc}") from None

    def request(
        self,
        msg: str,
        data: Any,
        *,
        on_progress: ProgressHandler | None = None,
        on_send: SendHandler | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the OK payload; AdminError for ERROR."""
        self._send(msg, data)
        while True:
            try:
                reply = self.socket.recv_msg(timeout=self.timeout)
            except TransportTimeout:
                raise self._unavailable() from None
            if reply.msg == "PROGRESS":
                if on_progress is not None:
                    on_progress(reply.data)
            elif reply.msg == "SEND":
                if on_send is None:
                    raise AdminError("INVALID", "the master asked for a file nobody offered")
                on_send(reply.data)
                self._send("SENT", {"filename": reply.data["filename"]})
            elif reply.msg == "OK":
                return dict(reply.data)
            else:
                raise AdminError(
                    reply.data["code"], f"{reply.data['code']}: {reply.data['message']}"
                )


def request(
    address: str, msg: str, data: Any, *, timeout: float = 10.0, **handlers: Any
) -> dict[str, Any]:
    """One request on a connection of its own (see :meth:`AdminClient.request`)."""
    with AdminClient(address, timeout=timeout) as client:
        return client.request(msg, data, **handlers)


def confirm(
    question: str,
    *,
    assume_yes: bool,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> bool:
    """Ask *question*; True for yes.  Without a terminal (and without --yes) refuse."""
    if assume_yes:
        return True
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if not stdin.isatty():
        raise UsageError("no terminal to ask for confirmation on; add --yes to go ahead")
    stdout.write(f"{question} [y/N] ")
    stdout.flush()
    answer = stdin.readline().strip().lower()
    return answer in ("y", "yes")


def add_timeout_option(parser: Any) -> None:
    """The --timeout option of every tool that talks to the master."""
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the master before saying it is not running [default: 10]",
    )
