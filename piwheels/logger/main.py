"""``piw-logger``: read access logs, classify each request, send batches to the master.

Sources: standard input (a pipe from the web server, e.g. Apache's
``CustomLog "|piw-logger --drop" combined``), files given as arguments
(plain or gzipped, read in order), or ``--follow FILE`` (across rotation).

Lines are parsed and classified by a pool of ``--workers`` processes, each
turning a chunk of lines into one packed batch (rows per hit table in COPY
text, see :mod:`piwheels.logger.batch`); batches go to the master's log
endpoint over a DEALER socket in the order they are ready.  Every batch is kept until the
master acknowledges it: a NACK schedules a resend after its ``retry_after``,
and a batch with no answer within ``--ack-timeout`` is sent again (the
master recognises a resend by logger identity and batch id, so nothing is
counted twice).  Without ``--drop``, reading waits while too many batches
are unacknowledged; with it, records that do not fit are dropped and
counted, so the web server writing into the pipe is never held up.

Malformed lines are counted and skipped (a few samples are logged).  After
the input ends piw-logger waits until every batch is acknowledged, then
exits 0; if ``--drain-timeout`` passes first it exits 1 saying how many
records were not stored.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket as _socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .. import protocols
from ..cli import Command
from ..errors import ProtocolError, TransportError, TransportTimeout, UsageError
from ..settings import Settings
from ..transport import DEALER, Context, Socket
from .anonymise import Anonymiser, load_secret
from .batch import BatchEncoder
from .classify import AccessRecord
from .parse import MAX_LINE
from .pool import ParserPool
from .reader import LogReader, follow_lines, iter_chunks, open_log

__all__ = ["COMMAND", "BatchSender", "main", "stdin_lines"]

log = logging.getLogger("piwheels.logger")


@dataclass
class _Pending:
    batch_id: int
    payload: dict[str, Any] | bytes  # without batch_id, or the whole message encoded
    records: int
    due: float  # when to (re)send it
    sent: int = 0  # times sent


class BatchSender:
    """Batches records, sends them, keeps each until acknowledged, resends as needed."""

    def __init__(
        self,
        context: Context,
        endpoint: str,
        *,
        identity: bytes | None = None,
        batch_size: int = 1000,
        flush_interval: float = 2.0,
        max_pending: int = 50,
        ack_timeout: float = 10.0,
        drop: bool = False,
        keys: Any = None,
    ) -> None:
        self.identity = (
            identity or f"piw-logger-{_socket.gethostname()}-{uuid.uuid4().hex[:12]}".encode()
        )
        self.sock: Socket = context.socket(
            DEALER, reversed(protocols.logger), identity=self.identity, name="logger"
        )
        if keys is not None and endpoint.startswith("tcp://"):
            self.sock.curve_client(keys.client, keys.server_public)
        self.sock.connect(endpoint)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.ack_timeout = ack_timeout
        self.drop = drop
        self.encoder = BatchEncoder()
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        self.last_flush = time.monotonic()
        self.sent = 0  # records in batches sent (first time)
        self.acked = 0  # records acknowledged
        self.stored = 0  # what the master says it stored
        self.dropped = 0
        self.resends = 0
        self.nacks = 0
        self.waited = 0.0  # seconds reading waited for ACKs (max_pending batches unacked)

    # -- batching ------------------------------------------------------------------------

    def add(self, record: AccessRecord) -> None:
        """Queue one record; sends a batch when one is full."""
        enc = self.encoder
        enc.add(record)
        n = enc.records
        # The clock is read every 256 records only: this runs for every line.
        if n >= self.batch_size or (
            n & 255 == 0 and time.monotonic() - self.last_flush >= self.flush_interval
        ):
            self.flush()

    def idle(self) -> None:
        """Called while the input is quiet: send a partial batch when it is old, handle replies."""
        if self.encoder.records and time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()
        self.poll(0)

    def flush(self) -> None:
        """Send what is buffered as one batch (waiting, or dropping, if too much is unacked)."""
        self.last_flush = time.monotonic()
        if not self.encoder.records:
            self.poll(0)
            return
        self.send_payload(self.encoder.take())

    def new_id(self) -> int:
        """A batch id not used before (for a batch encoded elsewhere: :meth:`send_encoded`)."""
        self.next_id += 1
        return self.next_id - 1

    def send_payload(self, payload: dict[str, Any]) -> None:
        """Send one packed batch (``batch.BatchEncoder.take``); keep it until acknowledged."""
        self._queue(self.new_id(), payload, payload["records"])

    def send_encoded(self, batch_id: int, records: int, payload: bytes) -> None:
        """Send one BATCH checked and encoded by a parser process (with *batch_id*, from
        :meth:`new_id`) as it is; keep it until acknowledged."""
        self._queue(batch_id, payload, records)

    def _queue(self, batch_id: int, payload: dict[str, Any] | bytes, records: int) -> None:
        self.poll(0)
        if len(self.pending) >= self.max_pending:
            t0 = time.monotonic()
            while len(self.pending) >= self.max_pending:
                if self.drop:
                    self.dropped += records
                    break
                self.poll(0.1)
            self.waited += time.monotonic() - t0
            if len(self.pending) >= self.max_pending:
                return
        batch = _Pending(batch_id, payload, records, 0.0)
        self.pending[batch.batch_id] = batch
        self._send(batch)
        self.sent += batch.records

    def _send(self, batch: _Pending) -> None:
        now = time.monotonic()
        try:
            if isinstance(batch.payload, bytes):
                self.sock.send_encoded("BATCH", batch.payload, timeout=0)
            else:
                data = {"batch_id": batch.batch_id, **batch.payload}
                self.sock.send_msg("BATCH", data, timeout=0)
        except (TransportTimeout, TransportError) as exc:
            # Not connected (yet): try again shortly; the batch stays pending.
            log.debug("batch %d not sent: %s", batch.batch_id, exc)
            batch.due = now + 1.0
            return
        if batch.sent:
            self.resends += 1
        batch.sent += 1
        batch.due = now + self.ack_timeout

    # -- replies -------------------------------------------------------------------------

    def poll(self, timeout: float = 0) -> None:
        """Handle every reply waiting (up to *timeout* for the first); resend what is due."""
        wait = timeout
        while self.sock.poll(wait):
            wait = 0
            try:
                received = self.sock.recv_msg()
            except ProtocolError as exc:
                log.warning("bad reply from the master: %s", exc)
                continue
            batch_id = received.data["batch_id"]
            batch = self.pending.get(batch_id)
            if received.msg == "ACK":
                if batch is not None:
                    del self.pending[batch_id]
                    self.acked += batch.records
                    self.stored += received.data["stored"]
            elif received.msg == "NACK" and batch is not None:
                self.nacks += 1
                retry = max(0.05, float(received.data["retry_after"]))
                log.info(
                    "batch %d refused (%s); again in %.1fs",
                    batch_id,
                    received.data["reason"],
                    retry,
                )
                batch.due = time.monotonic() + retry
        now = time.monotonic()
        for batch in list(self.pending.values()):
            if batch.due <= now:
                self._send(batch)

    @property
    def unacked(self) -> int:
        """Records sent or buffered and not yet acknowledged."""
        return sum(b.records for b in self.pending.values()) + self.encoder.records

    def drain(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Send what is buffered and wait for every ACK; False if *timeout* passed first."""
        self.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if stop is not None and stop.is_set():
                return False
            self.poll(0.1)
        return True

    def close(self) -> None:
        self.sock.close(linger=0)


def stdin_lines(
    fd: int, stop: threading.Event, *, idle: float = 0.25, max_line: int = MAX_LINE
) -> Iterator[bytes | None]:
    """Lines read from *fd* (a pipe) without blocking the caller for long.

    Yields ``None`` when nothing arrived for *idle* seconds, so batches and
    replies are handled while the web server is quiet.  Ends at end of input.
    """
    buf = b""
    discarding = False
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], idle)
        if not ready:
            yield None
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if discarding:
                discarding = False
                continue
            yield line + b"\n"
        if len(buf) > max_line:
            if not discarding:
                yield buf[: max_line + 1]
            discarding = True
            buf = b""
    if buf and not discarding:
        yield buf


class _Progress:
    def __init__(
        self,
        reader: LogReader,
        sender: BatchSender,
        interval: float = 5.0,
        pool: ParserPool | None = None,
    ) -> None:
        self.reader = reader
        self.sender = sender
        self.pool = pool
        self.interval = interval
        self.start = self.last = time.monotonic()

    def maybe(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.report()

    def report(self) -> None:
        st, s = self.reader.stats, self.sender
        elapsed = max(1e-9, time.monotonic() - self.start)
        waited = self.pool.waited if self.pool is not None else 0.0
        log.info(
            "%d lines (%.0f/s), %d malformed, %d sent, %d acknowledged, %d unacknowledged, "
            "%d dropped; waited %.2fs for acknowledgements, %.2fs for parser workers",
            st.lines, st.lines / elapsed, st.malformed_total, s.sent, s.acked, s.unacked,
            s.dropped, s.waited, waited,
        )  # fmt: skip


def _secret_path(args: argparse.Namespace) -> Path:
    if args.secret_file:
        return Path(args.secret_file)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "piwheels" / "logger-secret"


def run(args: argparse.Namespace, settings: Settings) -> int:
    cfg = settings.logger
    if args.follow and args.files:
        raise UsageError("give files or --follow FILE, not both")
    for f in args.files:
        if not Path(f).is_file():
            raise UsageError(f"no such log file: {f}")
    if cfg.address_mode == "hash":
        secret = _secret_path(args)
        if not secret.exists():
            secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        anonymiser = Anonymiser("hash", load_secret(secret))
    else:
        anonymiser = Anonymiser("prefix")
    reader = LogReader(anonymiser)
    # The worker processes are started before the ZeroMQ context exists.
    pool = ParserPool(args.workers, anonymiser, reader.stats) if args.workers > 1 else None
    endpoint = settings.master.log_endpoint
    from ..monitor.client import client_keys

    keys = client_keys(settings.keys, [endpoint])
    context = Context()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (e.g. from logrotate or the service manager) stops reading and drains.
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    sender = BatchSender(
        context,
        endpoint,
        batch_size=cfg.batch_size,
        flush_interval=cfg.flush_interval.total_seconds(),
        max_pending=args.max_pending,
        ack_timeout=args.ack_timeout,
        drop=cfg.drop,
        keys=keys,
    )
    progress = _Progress(reader, sender, pool=pool)
    try:
        if pool is not None:
            lines: Iterator[bytes | None]
            if args.files:
                _pump_chunks(
                    pool, sender, _file_chunks(args.files, sender.batch_size), stop, progress
                )
                lines = iter(())  # _pump then only waits for the chunks in flight
            elif args.follow:
                lines = follow_lines(args.follow, stop, from_end=args.from_end)
            else:
                lines = stdin_lines(0, stop)
            _pump(pool, sender, lines, stop, progress)
        else:
            source: Iterator[AccessRecord | None]
            if args.files:
                source = reader.read_files(args.files)
            elif args.follow:
                source = reader.follow(args.follow, stop, from_end=args.from_end)
            else:
                source = _records(reader, stdin_lines(0, stop))
            add = sender.add
            for i, record in enumerate(source):
                if record is None:
                    sender.idle()
                    progress.maybe()
                else:
                    add(record)
                    if i & 4095 == 0:
                        progress.maybe()
                if stop.is_set():
                    break
        timeout = args.drain_timeout or None
        if stop.is_set():
            timeout = min(timeout or 10.0, 10.0)
        done = sender.drain(timeout)
        progress.report()
        st = reader.stats
        if st.malformed_total:
            log.warning(
                "%d malformed lines skipped: %s",
                st.malformed_total,
                ", ".join(f"{k} {v}" for k, v in sorted(st.malformed.items())),
            )
        if sender.dropped:
            log.warning("%d records dropped (the master could not keep up)", sender.dropped)
        if not done:
            log.error("%d records were not acknowledged by the master", sender.unacked)
            return 1
        return 0
    finally:
        if pool is not None:
            pool.close()
        sender.close()
        context.close()
        for s, h in old.items():
            signal.signal(s, h)


def _file_chunks(paths: list[str], size: int) -> Iterator[tuple[bytes, int]]:
    for path in paths:
        with open_log(path) as f:
            yield from iter_chunks(f, size)


def _pump_chunks(
    pool: ParserPool,
    sender: BatchSender,
    chunks: Iterator[tuple[bytes, int]],
    stop: threading.Event,
    progress: _Progress,
) -> None:
    """Feed chunks of files (read whole, not line by line) to the pool; send batches as ready."""
    for chunk in chunks:
        while pool.full():
            for ready in pool.ready():
                sender.send_encoded(*ready)
            pool.wait(0.05)
            sender.poll(0)
        pool.submit(chunk, sender.new_id())
        for ready in pool.ready():
            sender.send_encoded(*ready)
        progress.maybe()
        if stop.is_set():
            break


def _pump(
    pool: ParserPool,
    sender: BatchSender,
    lines: Iterator[bytes | None],
    stop: threading.Event,
    progress: _Progress,
) -> None:
    """Feed chunks of one batch of lines to the pool; send each batch when it is ready."""
    size, interval = sender.batch_size, sender.flush_interval
    chunk: list[bytes] = []
    started = time.monotonic()

    def send_ready() -> None:
        for ready in pool.ready():
            sender.send_encoded(*ready)

    for line in lines:
        if line is not None:
            if not chunk:
                started = time.monotonic()
            chunk.append(line)
            if len(chunk) < size:
                continue
        elif not chunk or time.monotonic() - started < interval:
            # The input is quiet: send what is ready, handle replies.
            send_ready()
            sender.poll(0)
            progress.maybe()
            if stop.is_set():
                break
            continue
        while pool.full():
            send_ready()
            pool.wait(0.05)
            sender.poll(0)
        pool.submit(chunk, sender.new_id())
        chunk = []
        send_ready()
        progress.maybe()
        if stop.is_set():
            break
    if chunk:
        pool.submit(chunk, sender.new_id())
    while pool.in_flight:
        pool.wait(0.1)
        send_ready()
        sender.poll(0)
    send_ready()


def _records(reader: LogReader, lines: Iterator[bytes | None]) -> Iterator[AccessRecord | None]:
    record = reader.record
    for line in lines:
        if line is None:
            yield None
        else:
            rec = record(line)
            if rec is not None:
                yield rec


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", help="log files to read (plain or gzipped)")
    parser.add_argument("--follow", metavar="FILE", help="follow FILE across rotation")
    parser.add_argument(
        "--from-end", action="store_true", help="with --follow: start at the end of the file"
    )
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="secret for hashing client addresses (created if missing; "
        "default $XDG_STATE_HOME/piwheels/logger-secret)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="parser processes (default: the CPUs, at most 4; 1 parses in this process)",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=50,
        metavar="N",
        help="batches sent but not acknowledged before reading waits (or drops) (default 50)",
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="resend a batch not answered within S seconds (default 10)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="at the end, wait at most S seconds for acknowledgements (default 0: no limit)",
    )


COMMAND = Command(
    run,
    prog="piw-logger",
    description="Read web server access logs and send download records to the master.",
    sections=("logger", "master", "keys"),
    add_arguments=_arguments,
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
