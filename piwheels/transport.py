"""A thin layer over pyzmq that checks every message against its protocol.

What it adds to pyzmq:

* messages are ``(name, payload)`` pairs encoded as CBOR, with timezone-aware
  datetimes and timedeltas;
* every message is validated against the socket's :class:`~piwheels.protocols.Protocol`
  on receive, so handlers only ever see well-formed messages, and on send, so a bad
  message is refused where it is made; except that a socket whose every endpoint is
  ``inproc://`` checks only the message name on send: its peers are sockets of this
  process, which check it in full on receive (the master's tasks talk this way, and
  checking each message twice cost more than the rest of the hop);
* timeouts are in seconds and raise :class:`~piwheels.errors.TransportTimeout`;
* a maximum message size, checked on both sides;
* CurveZMQ: a server key, a folder of allowed client public keys, and clients
  that know the server's public key.

ROUTER sockets keep the routing envelope of each message as its ``peer`` so a
reply goes back along the same path, whether the peer is a DEALER or a REQ.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import cbor2
import zmq
import zmq.auth
from voluptuous import Invalid, MultipleInvalid

from .errors import ConfigError, ProtocolError, TransportError, TransportTimeout
from .protocols import Protocol

log = logging.getLogger("piwheels.transport")

#: CBOR tag for a timedelta: [days, seconds, microseconds].
TAG_TIMEDELTA = 2001

#: Default largest message accepted (a build log is the largest thing sent).
DEFAULT_MAX_MSG = 64 * 1024 * 1024

ROUTER, DEALER, REQ, REP = zmq.ROUTER, zmq.DEALER, zmq.REQ, zmq.REP
PUB, SUB, PUSH, PULL = zmq.PUB, zmq.SUB, zmq.PUSH, zmq.PULL

_TYPE_NAMES: dict[int, str] = {
    zmq.ROUTER: "ROUTER",
    zmq.DEALER: "DEALER",
    zmq.REQ: "REQ",
    zmq.REP: "REP",
    zmq.PUB: "PUB",
    zmq.SUB: "SUB",
    zmq.PUSH: "PUSH",
    zmq.PULL: "PULL",
}


# -- encoding -------------------------------------------------------------------


def _default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, timedelta):
        encoder.encode(
            cbor2.CBORTag(TAG_TIMEDELTA, [value.days, value.seconds, value.microseconds])
        )
    elif isinstance(value, (tuple, set, frozenset)):
        encoder.encode(list(value))
    else:
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")


def _tag_hook(*args: Any) -> Any:
    # cbor2 6 calls hook(tag, immutable); cbor2 5 (Debian 12's, which builders use) calls
    # hook(decoder, tag): take the tag from wherever it is.
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    if tag.tag == TAG_TIMEDELTA:
        value = tag.value
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError("malformed duration")
        return timedelta(days=value[0], seconds=value[1], microseconds=value[2])
    raise ValueError(f"unknown CBOR tag {tag.tag}")


def encode(msg: str, data: Any = None) -> bytes:
    """CBOR for one message; naive datetimes are refused."""
    try:
        return cbor2.dumps([msg, data], default=_default, datetime_as_timestamp=False)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise ProtocolError(f"cannot encode {msg}: {exc}") from exc


def _head(msg: str) -> bytes:
    """The bytes every encoded *msg* message starts with (the array and the name)."""
    return encode(msg)[:-1]  # without the encoded None


def encode_checked(protocol: Protocol, msg: str, data: Any) -> bytes:
    """Check *data* as *protocol* sends *msg* and encode it, for :meth:`Socket.send_encoded`
    (possibly in another process)."""
    return encode(msg, _check(protocol, msg, data, sending=True))


def decode(payload: bytes) -> tuple[str, Any]:
    """The (name, data) pair in *payload*; ProtocolError if it is not one."""
    fp = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(fp, tag_hook=_tag_hook).decode()
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise ProtocolError(f"malformed CBOR ({exc})") from exc
    if fp.tell() != len(payload):
        raise ProtocolError(f"malformed CBOR ({len(payload) - fp.tell()} bytes of trailing data)")
    if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], str):
        raise ProtocolError("not a [name, payload] message")
    return obj[0], obj[1]


def _cbor_arg(view: memoryview, pos: int) -> tuple[int, int, int] | None:
    """(major type, argument, next position) of the CBOR head at *pos*; None if not a
    plain definite one (the full decoder deals with those)."""
    if pos >= len(view):
        return None
    byte = view[pos]
    major, info = byte >> 5, byte & 31
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        return None
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(view):
        return None
    return major, int.from_bytes(view[pos + 1 : end], "big"), end


def _cbor_text(view: memoryview, pos: int) -> tuple[str, int] | None:
    """(text, next position) of the CBOR text string at *pos*; None if it is not one."""
    item = _cbor_arg(view, pos)
    if item is None or item[0] != 3:
        return None
    end = item[2] + item[1]
    try:
        return bytes(view[item[2] : end]).decode("utf-8"), end
    except UnicodeDecodeError:
        return None


def _decode_flat(view: memoryview) -> tuple[str, dict[str, Any]] | None:
    """``[name, {text: uint | bytes, ...}]`` without copying the bytes values (memoryview
    slices of *view*); None for anything else, which :func:`decode` then takes in full."""
    head = _cbor_arg(view, 0)
    if head is None or head[:2] != (4, 2):
        return None
    text = _cbor_text(view, head[2])
    if text is None:
        return None
    name, pos = text
    item = _cbor_arg(view, pos)
    if item is None or item[0] != 5 or item[1] > 16:
        return None
    pos = item[2]
    data: dict[str, Any] = {}
    for _ in range(item[1]):
        key = _cbor_text(view, pos)
        if key is None:
            return None
        field, pos = key
        value = _cbor_arg(view, pos)
        if value is None:
            return None
        if value[0] == 0:
            data[field], pos = value[1], value[2]
        elif value[0] == 2:
            pos = value[2] + value[1]
            data[field] = view[value[2] : pos]
        else:
            return None
    if pos != len(view):
        return None
    return name, data


def decode_view(payload: memoryview) -> tuple[str, Any]:
    """:func:`decode` for a message in a buffer (a received frame).

    A message shaped like a data chunk (a map of unsigned integers and byte
    strings) is read in place: its byte strings are memoryview slices of
    *payload*, so a large payload is never copied.  Anything else is copied
    and decoded in full.
    """
    flat = _decode_flat(payload)
    if flat is not None:
        return flat
    return decode(payload.tobytes())


def _check(protocol: Protocol, msg: str, data: Any, *, sending: bool) -> Any:
    table = protocol.send if sending else protocol.recv
    if msg not in table:
        raise ProtocolError(f"message {msg} is not allowed on the {protocol.name} socket")
    schema = table[msg]
    if schema is None:
        if data is not None:
            raise ProtocolError(f"{msg} on the {protocol.name} socket carries no payload")
        return None
    if data is None:
        raise ProtocolError(f"{msg} on the {protocol.name} socket needs a payload")
    try:
        return schema(data)
    except MultipleInvalid as exc:
        problems = "; ".join(_format_invalid(e) for e in exc.errors)
        raise ProtocolError(f"invalid {msg} on the {protocol.name} socket: {problems}") from exc
    except Invalid as exc:
        raise ProtocolError(
            f"invalid {msg} on the {protocol.name} socket: {_format_invalid(exc)}"
        ) from exc


def _format_invalid(exc: Invalid) -> str:
    path = ".".join(str(p) for p in exc.path)
    msg = exc.error_message
    return f"{path}: {msg}" if path else msg


# -- sockets -----------------------------------------------------------------------


class Received(NamedTuple):
    """One checked message: its name, payload and (on ROUTER sockets) who sent it."""

    msg: str
    data: Any
    peer: tuple[bytes, ...] | None = None

    @property
    def peer_name(self) -> str:
        return describe_peer(self.peer)


def describe_peer(peer: Sequence[bytes] | None) -> str:
    """A printable form of a routing envelope, for logs."""
    if not peer:
        return "peer"
    ident = peer[0]
    try:
        text = ident.decode("ascii")
        if text.isprintable() and text:
            return text
    except UnicodeDecodeError:
        pass
    return ident.hex()


class Socket:
    """A ZeroMQ socket that speaks one :class:`Protocol`."""

    def __init__(
        self,
        context: Context,
        kind: int,
        protocol: Protocol,
        *,
        max_msg_size: int = DEFAULT_MAX_MSG,
        hwm: int | None = None,
        identity: bytes | None = None,
        name: str | None = None,
    ) -> None:
        self.context = context
        self.kind = kind
        self.protocol = protocol
        self.max_msg_size = max_msg_size
        self.name = name or protocol.name
        self._sock: zmq.Socket[bytes] = context.zmq.socket(kind)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.setsockopt(zmq.IPV6, True)
        # libzmq drops anything far above the limit before we see it (protecting
        # memory); anything above the limit itself is refused below with a message.
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size * 2 + 4096)
        if hwm is not None:
            self._sock.setsockopt(zmq.SNDHWM, hwm)
            self._sock.setsockopt(zmq.RCVHWM, hwm)
        if identity is not None:
            self._sock.setsockopt(zmq.IDENTITY, identity)
        if kind == zmq.SUB:
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        if kind == zmq.ROUTER:
            # Sending to a peer that has gone raises instead of vanishing silently.
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, True)
        self.endpoints: list[str] = []
        # Only inproc endpoints: the peers check what this socket sends (see the module doc).
        self._inproc = False
        self.closed = False

    def __repr__(self) -> str:
        kind = _TYPE_NAMES.get(int(self.kind), str(self.kind))
        return f"<Socket {kind} {self.name} {self.endpoints}>"

    @property
    def zmq_socket(self) -> zmq.Socket[bytes]:
        """The raw pyzmq socket (for pollers)."""
        return self._sock

    # -- security --------------------------------------------------------------

    def curve_server(self, keys: CurveKeys) -> None:
        """Make this (binding) socket a CurveZMQ server; clients are checked by ZAP."""
        if keys.secret is None:
            raise ConfigError("a CurveZMQ server needs its secret key")
        self.context.start_authenticator()
        self._sock.curve_secretkey = keys.secret
        self._sock.curve_publickey = keys.public
        self._sock.curve_server = True

    def curve_client(self, keys: CurveKeys, server_public: bytes) -> None:
        """Make this (connecting) socket a CurveZMQ client of a server with *server_public*."""
        if keys.secret is None:
            raise ConfigError("a CurveZMQ client needs its secret key")
        self._sock.curve_secretkey = keys.secret
        self._sock.curve_publickey = keys.public
        self._sock.curve_serverkey = server_public

    # -- addresses -------------------------------------------------------------

    def bind(self, endpoint: str) -> str:
        """Bind to *endpoint*; returns the address actually bound (port 0 resolved)."""
        if endpoint.startswith("ipc://"):
            Path(endpoint[6:]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind {self.name} socket to {endpoint}: {exc}") from exc
        actual = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        self._add_endpoint(actual)
        return actual

    def connect(self, endpoint: str) -> None:
        """Connect to *endpoint*."""
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect {self.name} socket to {endpoint}: {exc}") from exc
        self._add_endpoint(endpoint)

    def _add_endpoint(self, endpoint: str) -> None:
        self.endpoints.append(endpoint)
        self._inproc = all(e.startswith("inproc://") for e in self.endpoints)

    def close(self, linger: float | None = None) -> None:
        """Close the socket; *linger* seconds to flush what is queued."""
        if not self.closed:
            self._sock.close(linger=None if linger is None else int(linger * 1000))
            self.closed = True

    # -- messages --------------------------------------------------------------

    def poll(self, timeout: float | None = None, flags: int = zmq.POLLIN) -> bool:
        """True if a message is waiting within *timeout* seconds (None: forever)."""
        ms = None if timeout is None else int(timeout * 1000)
        return bool(self._sock.poll(ms, flags))

    def send_msg(
        self,
        msg: str,
        data: Any = None,
        *,
        peer: Sequence[bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Check and send one message (to *peer* on a ROUTER socket)."""
        if not self._inproc:
            data = _check(self.protocol, msg, data, sending=True)
        elif msg not in self.protocol.send:
            raise ProtocolError(f"message {msg} is not allowed on the {self.protocol.name} socket")
        self._send_frames(msg, encode(msg, data), peer, timeout)

    def _send_frames(
        self, msg: str, payload: bytes, peer: Sequence[bytes] | None, timeout: float | None
    ) -> None:
        if len(payload) > self.max_msg_size:
            raise ProtocolError(
                f"{msg} is {len(payload)} bytes, over the {self.max_msg_size} byte limit "
                f"of the {self.name} socket"
            )
        frames: list[bytes]
        if self.kind == zmq.ROUTER:
            if not peer:
                raise TransportError(f"{self.name}: a ROUTER socket needs a peer to send to")
            frames = [*peer, payload]
        else:
            frames = [payload]
        if timeout is not None and not self.poll(timeout, zmq.POLLOUT):
            raise TransportTimeout(f"{self.name}: could not send {msg} within {timeout}s")
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK if timeout is not None else 0)
        except zmq.Again as exc:
            raise TransportTimeout(f"{self.name}: could not send {msg}") from exc
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise TransportError(
                    f"{self.name}: {describe_peer(peer)} is no longer connected"
                ) from exc
            raise TransportError(f"{self.name}: cannot send {msg}: {exc}") from exc

    def send_encoded(
        self,
        msg: str,
        payload: bytes,
        *,
        peer: Sequence[bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send one message already encoded (:func:`encode`, or :func:`encode_checked`) as it is.

        For a payload made elsewhere (piw-logger's parser processes encode their
        batches): only the message name, that *payload* is that message and the size
        limit are checked here.  The receiver checks everything, as ever, and refuses
        what fails.
        """
        if msg not in self.protocol.send:
            raise ProtocolError(f"message {msg} is not allowed on the {self.protocol.name} socket")
        if not payload.startswith(_head(msg)):
            raise ProtocolError(f"the encoded payload is not a {msg} message")
        self._send_frames(msg, payload, peer, timeout)

    def recv_msg(self, timeout: float | None = None, *, copy: bool = True) -> Received:
        """Receive and check one message.

        Raises :class:`TransportTimeout` when nothing arrives within *timeout*
        seconds, and :class:`ProtocolError` (naming the peer) for anything
        malformed; the offending message is consumed either way, so the next
        call gets the next message.

        With *copy* false, the byte strings of a data message (see
        :func:`decode_view`) are memoryviews of the received frame instead of
        copies: for large payloads (file chunks) that are written and hashed
        straight from where ZeroMQ put them.  The message is checked the same.
        """
        if timeout is not None and not self.poll(timeout):
            raise TransportTimeout(f"{self.name}: nothing received within {timeout}s")
        if not copy:
            return self._recv_view()
        frames = self._sock.recv_multipart()
        peer: tuple[bytes, ...] | None = None
        if self.kind == zmq.ROUTER:
            if len(frames) < 2:
                raise ProtocolError(f"{self.name}: message without envelope")
            peer, frames = tuple(frames[:-1]), frames[-1:]
        elif self.kind == zmq.REQ or (
            self.kind == zmq.DEALER and len(frames) == 2 and not frames[0]
        ):
            frames = frames[-1:]
        who = describe_peer(peer)
        if len(frames) != 1:
            raise ProtocolError(f"{self.name}: {len(frames)} frames from {who}, expected 1")
        return self._decoded(frames[0], peer, who, decode)

    def _recv_view(self) -> Received:
        """:meth:`recv_msg` without copying the payload frame (``copy=False``)."""
        parts = self._sock.recv_multipart(copy=False)
        peer: tuple[bytes, ...] | None = None
        if self.kind == zmq.ROUTER:
            if len(parts) < 2:
                raise ProtocolError(f"{self.name}: message without envelope")
            peer, parts = tuple(p.bytes for p in parts[:-1]), parts[-1:]
        elif self.kind == zmq.REQ or (
            self.kind == zmq.DEALER and len(parts) == 2 and not len(parts[0].buffer)
        ):
            parts = parts[-1:]
        who = describe_peer(peer)
        if len(parts) != 1:
            raise ProtocolError(f"{self.name}: {len(parts)} frames from {who}, expected 1")
        return self._decoded(parts[0].buffer, peer, who, decode_view)

    def _decoded(
        self,
        payload: Any,
        peer: tuple[bytes, ...] | None,
        who: str,
        decoder: Callable[[Any], tuple[str, Any]],
    ) -> Received:
        """The message in *payload* (bytes or a frame's buffer), decoded and checked."""
        if len(payload) > self.max_msg_size:
            raise ProtocolError(
                f"{self.name}: {len(payload)} byte message from {who} is over the "
                f"{self.max_msg_size} byte limit"
            )
        try:
            msg, data = decoder(payload)
            data = _check(self.protocol, msg, data, sending=False)
        except ProtocolError as exc:
            err = ProtocolError(f"{exc} (from {who})")
            err.peer = peer  # type: ignore[attr-defined]
            raise err from exc
        return Received(msg, data, peer)

    def send_raw(self, frames: Sequence[bytes]) -> None:
        """Send frames unchecked (tests use this to play a hostile peer)."""
        self._sock.send_multipart(list(frames))


# -- keys -----------------------------------------------------------------------------


class CurveKeys(NamedTuple):
    """A CurveZMQ key pair (Z85-encoded bytes); *secret* is None for a public key alone."""

    public: bytes
    secret: bytes | None


def generate_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (mode 0600) into *folder*."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_keys(path: Path) -> CurveKeys:
    """Load a certificate written by :func:`generate_keys` (public or secret file)."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CurveZMQ key {path}: {exc}") from exc
    return CurveKeys(public, secret)


# -- context ------------------------------------------------------------------------------


class Context:
    """A ZeroMQ context with an optional CurveZMQ authenticator.

    *authorized_keys* is a folder of client public keys (``*.key``); when it is
    given, every CurveZMQ server socket of this context accepts only those.
    """

    def __init__(self, *, authorized_keys: Path | None = None) -> None:
        self.zmq: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.authorized_keys = authorized_keys
        self._auth: Any = None
        self._lock = threading.Lock()

    def socket(self, kind: int, protocol: Protocol, **kwargs: Any) -> Socket:
        """A new :class:`Socket` of *kind* speaking *protocol*."""
        return Socket(self, kind, protocol, **kwargs)

    def start_authenticator(self) -> None:
        """Start the ZAP handler that checks clients of CurveZMQ servers."""
        with self._lock:
            if self._auth is not None:
                return
            if self.authorized_keys is None:
                raise ConfigError(
                    "CurveZMQ is on but no folder of authorized client keys is configured "
                    "(set [keys] authorized_keys_dir, or curve = false for plain sockets)"
                )
            if not self.authorized_keys.is_dir():
                raise ConfigError(f"authorized keys folder {self.authorized_keys} does not exist")
            from zmq.auth.thread import ThreadAuthenticator

            auth = ThreadAuthenticator(self.zmq, log=logging.getLogger("piwheels.auth"))
            auth.start()
            auth.configure_curve(domain="*", location=str(self.authorized_keys))
            self._auth = auth

    def reload_keys(self) -> None:
        """Read the authorized keys folder again (after adding or removing a builder)."""
        with self._lock:
            if self._auth is not None and self.authorized_keys is not None:
                self._auth.configure_curve(domain="*", location=str(self.authorized_keys))

    def close(self) -> None:
        """Stop the authenticator and end the context (sockets must be closed)."""
        with self._lock:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
        self.zmq.term()


def now() -> datetime:
    """The current time, timezone-aware (every timestamp sent must be)."""
    from datetime import UTC

    return datetime.now(UTC)
