"""Both sides of the ``files`` protocol: chunked, credit-based, resumable transfers.

The receiver (the master) pulls; the sender (a builder or piw-import) only
answers.  After the sender's ``HELLO`` names a transfer token, the receiver
keeps up to *window* ``FETCH`` requests of at most *chunk_size* bytes
outstanding, writing each ``CHUNK`` at its offset into a temporary file that
was pre-sized to the announced size.  Every chunk received earns one more
fetch (the credit-based flow control of the ZeroMQ guide), so the sender
never floods the receiver and a slow disk slows the sender down.

A sender that hears nothing for a while says ``HELLO`` again (on the same or a
new socket); the receiver forgets what was in flight and fetches whatever is
still missing, so a transfer survives a broken connection.  The receiver
computes the size and SHA-256 from the bytes it wrote; nothing the sender
says about the file is trusted.

:class:`TransferTable` is the receiver's state (no sockets: it maps a
received message to the replies to send) and :class:`FileSender` the
sender's loop on a DEALER socket.  Neither depends on the task runtime.
A sender of many files gives its :class:`FileSender` objects one
:class:`SenderConnections`, which keeps each connection open for the next
transfer (a CurveZMQ handshake per file costs the receiver more CPU than a
small file does).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import re
import secrets
import shutil
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import protocols
from .errors import ProtocolError, TransportError, TransportTimeout
from .transport import DEALER, Context, CurveKeys, Received, Socket

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_WINDOW",
    "MAX_CHUNK",
    "FileSender",
    "Reply",
    "SendResult",
    "SenderConnections",
    "Transfer",
    "TransferRefused",
    "TransferTable",
    "chunk_head",
    "new_token",
    "send_file",
    "sha256_of",
    "valid_token",
]

log = logging.getLogger("piwheels.filetransfer")

DEFAULT_CHUNK = 64 * 1024
#: The files protocol refuses larger FETCH lengths and CHUNK payloads.
MAX_CHUNK = 1024 * 1024
DEFAULT_WINDOW = 10
#: Files at least this big are hashed on a worker thread while chunks arrive.
HASH_THREAD_MIN = 4 * 1024 * 1024
#: Bytes kept before a chunk in the sender's buffer for the CHUNK message's CBOR head
#: (at most 34 bytes: the name, two keys, a 64-bit offset and a length).
HEAD_ROOM = 48
#: Empty staging folders kept for reuse (about the transfers in flight at once).
FREE_FOLDERS = 256
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _cbor_head(major: int, value: int) -> bytes:
    """The CBOR head of *major* type with argument *value* (shortest form, as cbor2 writes)."""
    if value < 24:
        return bytes([major << 5 | value])
    for code, fmt, limit in ((24, ">B", 1 << 8), (25, ">H", 1 << 16), (26, ">I", 1 << 32)):
        if value < limit:
            return bytes([major << 5 | code]) + struct.pack(fmt, value)
    return bytes([major << 5 | 27]) + struct.pack(">Q", value)


def chunk_head(offset: int, length: int) -> bytes:
    """The encoded ``CHUNK`` message up to its data: the frame is this plus the bytes.

    Byte for byte what :func:`piwheels.transport.encode` makes of
    ``["CHUNK", {"offset": offset, "data": <length bytes>}]``, so the sender
    can read the file straight into the frame it sends (no encoder copies,
    no schema walk over a payload it built itself).
    """
    return (
        b"\x82\x65CHUNK\xa2\x66offset" + _cbor_head(0, offset) + b"\x64data" + _cbor_head(2, length)
    )


class _Hasher:
    """SHA-256 of bytes given in file order, computed on a worker thread.

    hashlib releases the GIL on large blocks, so the hash of a big file runs
    beside the socket and disk work of the receiving thread instead of after
    it.  The queue is bounded: a hash that falls behind slows the receiver.
    """

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        update = self._hasher.update
        while (block := self._queue.get()) is not None:
            update(block)

    def update(self, data: bytes | memoryview) -> None:
        # A memoryview keeps the received frame it points into alive until hashed.
        self._queue.put(data)

    def hexdigest(self) -> str:
        self.close()
        return self._hasher.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def new_token() -> str:
    """A fresh transfer token: unguessable, so one sender cannot hijack another's file."""
    return secrets.token_urlsafe(24)


def valid_token(token: str) -> bool:
    """True if *token* is usable (it may become a folder name in the staging area)."""
    return bool(_TOKEN.match(token))


class TransferRefused(ProtocolError):
    """A transfer cannot be set up or has been abandoned; ``code`` says why."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        super().__init__(reason)


@dataclass(frozen=True)
class Reply:
    """One message the receiver must send to a peer."""

    peer: tuple[bytes, ...]
    msg: str
    data: dict[str, Any]


# -- receiver ---------------------------------------------------------------------------


@dataclass
class Transfer:
    """The receiving side of one file: a pre-sized temporary file and what is missing.

    States: ``receiving`` -> ``complete`` (all bytes written, hash known) or
    ``failed`` (temporary file removed, ``reason`` set).
    """

    token: str
    filename: str
    size: int
    folder: Path
    #: The folder exists already (an empty one the table keeps for reuse).
    reused: bool = False
    chunk_size: int = DEFAULT_CHUNK
    window: int = DEFAULT_WINDOW
    state: str = "receiving"
    reason: str | None = None
    code: str | None = None
    peer: tuple[bytes, ...] | None = None
    sha256: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    #: Sorted, disjoint [start, end) ranges not yet written.
    missing: list[list[int]] = field(default_factory=list)
    #: offset -> length of each FETCH sent and not yet answered.
    inflight: dict[int, int] = field(default_factory=dict)
    _cursor: int = 0
    _fd: int | None = None
    _hasher: Any = None
    _hashed: int = 0

    @property
    def path(self) -> Path:
        """Where the bytes are written (named as the file, so checks see its real name)."""
        return self.folder / self.filename

    @property
    def received(self) -> int:
        """Bytes written so far."""
        return self.size - sum(end - start for start, end in self.missing)

    def open(self) -> None:
        """Create the temporary file, reserving *size* bytes of disk up front."""
        if not self.reused:
            self.folder.mkdir(parents=True, exist_ok=False)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if self.size:
                try:
                    os.posix_fallocate(self._fd, 0, self.size)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise TransferRefused(
                            "disk", f"no room for {self.size} bytes in {self.folder.parent}"
                        )
                    # Filesystems without fallocate: a sparse file does the job.
                    os.ftruncate(self._fd, self.size)
        except BaseException:
            self.discard()
            raise
        self._hasher = _Hasher() if self.size >= HASH_THREAD_MIN else hashlib.sha256()
        self.missing = [[0, self.size]] if self.size else []
        if not self.size:
            self._finish()

    def hello(self, peer: tuple[bytes, ...]) -> list[Reply]:
        """The sender (re)started: forget what was in flight and fetch what is missing."""
        self.peer = peer
        self.inflight.clear()
        self._cursor = 0
        self.last_activity = time.monotonic()
        if self.state == "complete":
            return [self._done()]
        if self.state == "failed":
            return [Reply(peer, "ERROR", {"reason": self.reason or "transfer failed"})]
        return self._fetches()

    def chunk(self, peer: tuple[bytes, ...], offset: int, data: bytes | memoryview) -> list[Reply]:
        """Write one chunk from the bound sender; returns fetches, DONE or ERROR.

        *data* may be a view of the received frame: it is written and hashed from
        there (the bytes hashed are the bytes written), never copied.
        """
        if self.state != "receiving":
            return []  # late duplicate after the end: nothing to do
        self.last_activity = time.monotonic()
        end = offset + len(data)
        if end > self.size:
            return self.fail(
                "too_large", f"{self.filename}: sender sent bytes past the announced {self.size}"
            )
        asked = self.inflight.pop(offset, None)
        if asked is not None and len(data) != asked:
            if len(data) < asked:
                why = f"{self.filename}: file is shorter than the announced {self.size} bytes"
            else:
                why = f"{self.filename}: sender sent {len(data)} bytes for a {asked} byte range"
            return self.fail("too_large" if len(data) > asked else "short", why)
        if data and self._overlaps_missing(offset, end):
            self._write(data, offset)
            self._subtract(offset, end)
            self._advance_hash(offset, data)
        if not self.missing:
            self._finish()
            return [self._done()]
        return self._fetches() if asked is not None else []

    def fail(self, code: str, reason: str) -> list[Reply]:
        """Abandon the transfer: remove the temporary file and tell the sender why."""
        self.state = "failed"
        self.code = code
        self.reason = reason
        self.discard()
        log.warning("transfer %s refused: %s", self.token, reason)
        return [Reply(self.peer, "ERROR", {"reason": reason})] if self.peer else []

    def discard(self) -> None:
        """Close and remove the temporary file (its folder stays, empty, for reuse)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        """Close the file descriptor (the file stays)."""
        if isinstance(self._hasher, _Hasher):
            self._hasher.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- internals ------------------------------------------------------------------

    def _fetches(self) -> list[Reply]:
        replies: list[Reply] = []
        if self.peer is None:
            return replies
        while len(self.inflight) < self.window:
            nxt = self._next_range()
            if nxt is None:
                break
            start, length = nxt
            self.inflight[start] = length
            replies.append(Reply(self.peer, "FETCH", {"offset": start, "length": length}))
        return replies

    def _next_range(self) -> tuple[int, int] | None:
        # One pass over the missing ranges per HELLO: each byte is asked for
        # once; a resumed sender restarts the pass from the first gap.
        for start, end in self.missing:
            if end <= self._cursor:
                continue
            begin = max(start, self._cursor)
            length = min(self.chunk_size, end - begin)
            self._cursor = begin + length
            return begin, length
        return None

    def _overlaps_missing(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.missing)

    def _subtract(self, start: int, end: int) -> None:
        out: list[list[int]] = []
        for s, e in self.missing:
            if e <= start or end <= s:
                out.append([s, e])
                continue
            if s < start:
                out.append([s, start])
            if end < e:
                out.append([end, e])
        self.missing = out

    def _write(self, data: bytes | memoryview, offset: int) -> None:
        assert self._fd is not None
        written = os.pwrite(self._fd, data, offset)
        while written < len(data):
            # A short write (a signal, a full disk): the rest, or the error it meets.
            more = os.pwrite(self._fd, memoryview(data)[written:], offset + written)
            if not more:
                raise OSError(errno.EIO, f"{self.path}: nothing written at {offset + written}")
            written += more

    def _advance_hash(self, offset: int, data: bytes | memoryview) -> None:
        # Hash in file order as the contiguous prefix grows; in the usual
        # in-order case straight from the chunk, otherwise from the file.
        if offset == self._hashed and data:
            self._hasher.update(data)
            self._hashed += len(data)
        frontier = self.missing[0][0] if self.missing else self.size
        while self._hashed < frontier:
            assert self._fd is not None
            block = os.pread(self._fd, min(MAX_CHUNK, frontier - self._hashed), self._hashed)
            if not block:
                raise OSError(f"{self.path}: short read while hashing")
            self._hasher.update(block)
            self._hashed += len(block)

    def _finish(self) -> None:
        assert self._fd is not None
        self._advance_hash(self._hashed, b"")
        self.sha256 = self._hasher.hexdigest()
        # No fsync here: staging is wiped when the master starts, so only a
        # published file must be durable (the publisher syncs it).
        self.close()
        self.state = "complete"
        self.inflight.clear()

    def _done(self) -> Reply:
        assert self.peer is not None and self.sha256 is not None
        return Reply(self.peer, "DONE", {"sha256": self.sha256, "size": self.size})


class TransferTable:
    """The receiver's transfers, by token and by the sender bound to each.

    *staging* is a folder on the same filesystem as the published files, so a
    finished file can be renamed into place.  :meth:`handle` turns one
    received ``files`` message into the replies to send.
    """

    def __init__(
        self,
        staging: Path,
        *,
        max_size: int,
        chunk_size: int = DEFAULT_CHUNK,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK} bytes")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.staging = staging
        self.max_size = max_size
        self.chunk_size = chunk_size
        self.window = window
        self.transfers: dict[str, Transfer] = {}
        self._by_peer: dict[tuple[bytes, ...], str] = {}
        # Empty staging folders of finished transfers, reused by the next ones: each
        # file keeps its own name in a folder of its own, without a mkdir and an
        # rmdir per file (creating names is the slow part of a small file's trip).
        self._free: list[Path] = []

    def clear_staging(self) -> None:
        """Remove whatever a previous run left in the staging folder."""
        if self.staging.exists():
            for entry in self.staging.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._free = []

    def expect(self, token: str, filename: str, size: int) -> Transfer:
        """Prepare to receive *filename* of *size* bytes under *token*.

        Raises :class:`TransferRefused` for a bad token, a size over the limit,
        or no room on disk.  The caller checks the filename itself.
        """
        if not valid_token(token):
            raise TransferRefused("invalid", f"transfer token {token[:70]!r} is not valid")
        if token in self.transfers:
            raise TransferRefused("invalid", f"transfer {token} is already expected")
        if size > self.max_size:
            raise TransferRefused(
                "too_large",
                f"{filename}: {size} bytes is over the limit of {self.max_size} bytes",
            )
        if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise TransferRefused("invalid_name", f"file name {filename[:80]!r} has path parts")
        reused = bool(self._free)
        transfer = Transfer(
            token=token,
            filename=filename,
            size=size,
            folder=self._free.pop() if reused else self.staging / token,
            reused=reused,
            chunk_size=self.chunk_size,
            window=self.window,
        )
        try:
            transfer.open()
        except FileExistsError:
            if not reused:
                raise
            # Something else wrote into the kept folder: leave it and take a new one.
            transfer.folder, transfer.reused = self.staging / token, False
            transfer.open()
        self.transfers[token] = transfer
        return transfer

    def get(self, token: str) -> Transfer | None:
        return self.transfers.get(token)

    def discard(self, token: str) -> Transfer | None:
        """Forget *token*, removing its temporary file; returns it if it was known.

        Also how a published file's staging name goes (the published link stays).
        """
        transfer = self.transfers.pop(token, None)
        if transfer is not None:
            transfer.discard()
            if transfer.peer is not None and self._by_peer.get(transfer.peer) == token:
                del self._by_peer[transfer.peer]
            self._keep(transfer.folder)
        return transfer

    def _keep(self, folder: Path) -> None:
        """Keep an emptied staging folder for the next transfer (a bounded number)."""
        if len(self._free) < FREE_FOLDERS:
            if folder.is_dir():
                self._free.append(folder)
            return
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)

    def release(self, token: str) -> Transfer | None:
        """Forget *token* without touching its file (it has been moved elsewhere)."""
        transfer = self.transfers.pop(token, None)
        if transfer is not None:
            transfer.close()
            if transfer.peer is not None and self._by_peer.get(transfer.peer) == token:
                del self._by_peer[transfer.peer]
        return transfer

    def expired(self, max_idle: float) -> list[str]:
        """Tokens of transfers idle for longer than *max_idle* seconds."""
        cutoff = time.monotonic() - max_idle
        return [t for t, tr in self.transfers.items() if tr.last_activity < cutoff]

    def handle(self, received: Received) -> list[Reply]:
        """The replies to one checked ``files`` message from a sender."""
        peer = received.peer
        if peer is None:
            raise TransportError("files messages must come through a ROUTER socket")
        if received.msg == "HELLO":
            token = received.data["transfer"]
            transfer = self.transfers.get(token)
            if transfer is None:
                log.warning("HELLO from %s for unknown transfer %r", received.peer_name, token)
                return [Reply(peer, "ERROR", {"reason": f"unknown transfer {token}"})]
            if transfer.peer is not None and transfer.peer != peer:
                log.info("transfer %s resumed by a new connection", token)
                self._by_peer.pop(transfer.peer, None)
            old = self._by_peer.get(peer)
            if old is not None and old != token and old in self.transfers:
                # One sender socket, one transfer: it moved on to another file.
                self.transfers[old].peer = None
            self._by_peer[peer] = token
            return transfer.hello(peer)
        if received.msg == "CHUNK":
            token = self._by_peer.get(peer)
            transfer = self.transfers.get(token) if token else None
            if transfer is None or transfer.peer != peer:
                log.warning(
                    "stray CHUNK at %d from %s (no transfer): ignored",
                    received.data["offset"],
                    received.peer_name,
                )
                return []
            return transfer.chunk(peer, received.data["offset"], received.data["data"])
        log.warning("unexpected %s from %s", received.msg, received.peer_name)
        return []


# -- sender -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    """How a :class:`FileSender` run ended."""

    ok: bool
    reason: str | None = None  # why not, when not ok
    size: int | None = None  # as computed by the receiver
    sha256: str | None = None  # as computed by the receiver
    chunks: int = 0  # CHUNKs sent (resends included)
    hellos: int = 0  # HELLOs sent


class SenderConnections:
    """Open sender connections kept across transfers, for :class:`FileSender`.

    Each new CurveZMQ connection costs the receiver a handshake and a ZAP check (about
    2 ms of the master's CPU against 0.2 ms for a message on an open connection, on a
    small machine); a builder sending a file per build keeps its connection instead.
    A connection is kept only after a transfer that ended cleanly in one exchange (one
    HELLO, then DONE), so nothing of an earlier transfer can still be on its way to it;
    anything that arrives while it waits is dropped before the next HELLO.  Safe to
    share between threads: a connection serves one transfer at a time.  :meth:`close`
    it before closing the context.
    """

    def __init__(self, max_idle: int = 8) -> None:
        self.max_idle = max_idle
        self.opened = 0  # connections made (tests and benchmarks read it)
        self._idle: dict[tuple[Any, ...], list[Socket]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, key: tuple[Any, ...]) -> Socket | None:
        """An idle connection for *key*, emptied of stray messages, or None."""
        with self._lock:
            idle = self._idle.get(key)
            sock = idle.pop() if idle else None
        if sock is not None:
            while sock.poll(0):
                sock.zmq_socket.recv_multipart()
        return sock

    def give(self, key: tuple[Any, ...], sock: Socket) -> None:
        """Keep *sock* for the next transfer to the same receiver (or close it)."""
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self.max_idle:
                idle.append(sock)
                return
        sock.close(linger=1)

    def close(self) -> None:
        """Close every idle connection; later ones are closed when their transfer ends."""
        with self._lock:
            self._closed = True
            socks = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
        for sock in socks:
            sock.close(linger=1)


class FileSender:
    """Answers a receiver's FETCHes with CHUNKs of one file over a DEALER socket.

    :meth:`run` blocks until the receiver says DONE (ok) or ERROR, the
    receiver stays silent for *give_up* seconds, or *stop* is set.  After
    *silence* seconds without a message it says HELLO again, which makes the
    receiver resume.  With *keys* and *server_public* the socket is a
    CurveZMQ client.  With *connections* the socket comes from (and, after a
    clean transfer, goes back to) that :class:`SenderConnections`; without, it
    is opened and closed for this transfer.
    """

    def __init__(
        self,
        context: Context,
        address: str,
        path: str | os.PathLike[str],
        token: str,
        *,
        keys: CurveKeys | None = None,
        server_public: bytes | None = None,
        silence: float = 5.0,
        give_up: float = 60.0,
        stop: threading.Event | None = None,
        max_chunks: int | None = None,
        connections: SenderConnections | None = None,
    ) -> None:
        if (keys is None) != (server_public is None):
            raise ValueError("CurveZMQ needs both the client keys and the server's public key")
        self.context = context
        self.address = address
        self.path = Path(path)
        self.token = token
        self.keys = keys
        self.server_public = server_public
        self.silence = silence
        self.give_up = give_up
        self.stop = stop or threading.Event()
        #: Tests use this to make a sender vanish mid-transfer.
        self.max_chunks = max_chunks
        self.connections = connections
        self._buffer: bytearray | None = None
        self._key = (
            context,
            address,
            keys.public if keys is not None else None,
            server_public,
        )

    def _socket(self) -> Socket:
        if self.connections is not None:
            sock = self.connections.take(self._key)
            if sock is not None:
                return sock
            self.connections.opened += 1
        sock = self.context.socket(
            DEALER, reversed(protocols.files), max_msg_size=MAX_CHUNK + 4096, hwm=1000
        )
        if self.keys is not None and self.server_public is not None:
            sock.curve_client(self.keys, self.server_public)
        sock.connect(self.address)
        return sock

    def run(self) -> SendResult:
        """Serve the transfer until it ends; never raises for the receiver's behaviour."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            return SendResult(False, f"cannot read {self.path}: {exc.strerror}")
        sock = self._socket()
        chunks = hellos = 0
        clean = False
        try:
            sock.send_msg("HELLO", {"transfer": self.token})
            hellos += 1
            heard = last_hello = time.monotonic()
            while True:
                if self.stop.is_set():
                    return SendResult(False, "stopped", chunks=chunks, hellos=hellos)
                now = time.monotonic()
                if now - heard > self.give_up:
                    return SendResult(
                        False,
                        f"receiver at {self.address} silent for {self.give_up:g} s",
                        chunks=chunks,
                        hellos=hellos,
                    )
                if now - last_hello > self.silence:
                    log.info("transfer %s: receiver silent, saying HELLO again", self.token)
                    sock.send_msg("HELLO", {"transfer": self.token}, timeout=self.silence)
                    hellos += 1
                    last_hello = now
                try:
                    received = sock.recv_msg(timeout=min(0.2, self.silence))
                except TransportTimeout:
                    continue
                except ProtocolError as exc:
                    log.warning("transfer %s: %s", self.token, exc)
                    continue
                heard = last_hello = time.monotonic()
                if received.msg == "FETCH":
                    if self.max_chunks is not None and chunks >= self.max_chunks:
                        return SendResult(
                            False, "chunk limit reached", chunks=chunks, hellos=hellos
                        )
                    self._send_chunk(sock, fd, received.data["offset"], received.data["length"])
                    chunks += 1
                elif received.msg == "DONE":
                    clean = hellos == 1 and self.max_chunks is None
                    return SendResult(
                        True,
                        size=received.data["size"],
                        sha256=received.data["sha256"],
                        chunks=chunks,
                        hellos=hellos,
                    )
                elif received.msg == "ERROR":
                    return SendResult(False, received.data["reason"], chunks=chunks, hellos=hellos)
        except TransportError as exc:
            return SendResult(False, str(exc), chunks=chunks, hellos=hellos)
        finally:
            os.close(fd)
            if clean and self.connections is not None:
                self.connections.give(self._key, sock)
            else:
                sock.close(linger=0 if self.max_chunks is not None else 1)

    def _send_chunk(self, sock: Socket, fd: int, offset: int, length: int) -> None:
        """Read the range into a reused buffer, just after room for its CBOR head, and send
        head and bytes as one frame (zmq copies it once into its message)."""
        if self._buffer is None or len(self._buffer) < HEAD_ROOM + length:
            self._buffer = bytearray(HEAD_ROOM + length)
        view = memoryview(self._buffer)
        got = os.preadv(fd, [view[HEAD_ROOM : HEAD_ROOM + length]], offset)
        # A file shorter than the range asked for: what there is goes (the receiver
        # refuses a short chunk with a clear reason).
        head = chunk_head(offset, got)
        start = HEAD_ROOM - len(head)
        view[start:HEAD_ROOM] = head
        try:
            # Copied, not zero-copy: zero-copy sends cost a message to pyzmq's garbage
            # thread per frame (more than the copy) and a fresh buffer per chunk.
            sock.zmq_socket.send(view[start : HEAD_ROOM + got], copy=True)
        except zmq.ZMQError as exc:
            raise TransportError(f"{sock.name}: cannot send CHUNK: {exc}") from exc
        finally:
            view.release()


def send_file(
    context: Context,
    address: str,
    path: str | os.PathLike[str],
    token: str,
    **kwargs: Any,
) -> SendResult:
    """Send *path* under *token* to the receiver at *address* (see :class:`FileSender`)."""
    return FileSender(context, address, path, token, **kwargs).run()


def sha256_of(path: str | os.PathLike[str], *, block: int = MAX_CHUNK) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while data := fh.read(block):
            hasher.update(data)
            size += len(data)
    return size, hasher.hexdigest()
