"""Parser processes: chunks of lines in, packed batches out (order does not matter).

Parsing and classifying a line costs ~10-20 us of Python, far more than
sending it, so piw-logger hands chunks of raw lines (one batch each) to a
pool of processes, each with its own :class:`LogReader` and
:class:`BatchEncoder`.  Records are order-independent (each carries its
time), so batches are sent in whatever order they are ready.  Workers are
started by a fork server, before piw-logger opens its ZeroMQ context.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from ..transport import encode
from .anonymise import Anonymiser
from .batch import BatchEncoder
from .reader import LogReader, ReadStats, chunk_lines

__all__ = ["ChunkResult", "ParserPool", "parse_chunk"]

#: (batch id, records, the BATCH message encoded, lines, parsed,
#: malformed by reason, new samples)
ChunkResult = tuple[int, int, bytes, int, int, dict[str, int], list[tuple[str, str]]]

_state: dict[str, Any] = {}


def _init(mode: str, secret: bytes | None, max_samples: int) -> None:
    # Samples are returned and logged once by the parent, not by each worker.
    logging.getLogger("piwheels.logger.reader").disabled = True
    _state["reader"] = LogReader(Anonymiser(mode, secret), max_samples=max_samples)
    _state["encoder"] = BatchEncoder()


def parse_chunk(lines: list[bytes] | tuple[bytes, int], batch_id: int) -> ChunkResult:
    """Parse, classify and encode one chunk in a worker; returns the batch and counts.

    *lines* is a list of lines or a chunk of :func:`~piwheels.logger.reader.iter_chunks`
    (split here, in C: nothing per line was pickled).  The batch comes back as the
    BATCH message, encoded here (*batch_id* is the sender's), so that piw-logger's
    main process only moves its bytes (``Socket.send_encoded``).

    It is not checked against ``protocols.logger`` here: the master checks every
    BATCH it receives (each table's rows by one match, the aggregates against the
    rows) and refuses one that fails, and :class:`BatchEncoder` builds every cell
    from values it checked or escaped itself.  Checking it here as well cost about
    2.3 us per line, a sixth of a worker's CPU; the tests check the workers' batches.
    """
    if isinstance(lines, tuple):
        lines = chunk_lines(lines)
    reader: LogReader = _state["reader"]
    encoder: BatchEncoder = _state["encoder"]
    st = reader.stats
    lines0, parsed0, mal0, samples0 = st.lines, st.parsed, Counter(st.malformed), len(st.samples)
    encoder.add_lines(lines, reader)
    malformed = {k: v - mal0.get(k, 0) for k, v in st.malformed.items() if v != mal0.get(k, 0)}
    payload = encoder.take()
    records = payload["records"]
    message = encode("BATCH", {"batch_id": batch_id, **payload})
    return (
        batch_id,
        records,
        message,
        st.lines - lines0,
        st.parsed - parsed0,
        malformed,
        st.samples[samples0:],
    )


class ParserPool:
    """At most ``2 * workers`` chunks in flight; :meth:`ready` yields finished batches."""

    def __init__(self, workers: int, anonymiser: Anonymiser, stats: ReadStats) -> None:
        self.stats = stats
        self.limit = 2 * workers
        self._done: list[ChunkResult] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.in_flight = 0
        self.waited = 0.0  # seconds waited with every worker's queue full (reading was ahead)
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init,
            initargs=(anonymiser.mode, anonymiser._secret or None, stats.max_samples),
        )

    def _finished(self, fut: Future[ChunkResult]) -> None:
        with self._cond:
            self.in_flight -= 1
            if not fut.cancelled():
                exc = fut.exception()
                if exc is not None:
                    # A worker died (killed, out of memory): that is fatal for the logger.
                    self._done.append(exc)  # type: ignore[arg-type]
                else:
                    self._done.append(fut.result())
            self._cond.notify_all()

    def full(self) -> bool:
        return self.in_flight >= self.limit

    def submit(self, lines: list[bytes] | tuple[bytes, int], batch_id: int) -> None:
        with self._cond:
            self.in_flight += 1
        self._pool.submit(parse_chunk, lines, batch_id).add_done_callback(self._finished)

    def wait(self, timeout: float) -> None:
        """Wait up to *timeout* for a chunk to finish (if any is in flight and none is ready)."""
        with self._cond:
            if not self._done and self.in_flight:
                full = self.in_flight >= self.limit
                t0 = time.monotonic()
                self._cond.wait(timeout)
                if full:
                    self.waited += time.monotonic() - t0

    def ready(self) -> Iterator[tuple[int, int, bytes]]:
        """Finished batches: (batch id, records, encoded BATCH); counts merged into ``stats``."""
        with self._cond:
            done, self._done = self._done, []
        st = self.stats
        for item in done:
            if isinstance(item, BaseException):
                raise item
            batch_id, records, message, lines, parsed, malformed, samples = item
            st.lines += lines
            st.parsed += parsed
            st.malformed.update(malformed)
            for reason, sample in samples:
                if len(st.samples) < st.max_samples:
                    st.samples.append((reason, sample))
                    logging.getLogger("piwheels.logger.reader").warning(
                        "skipped malformed log line (%s): %r", reason, sample
                    )
            yield batch_id, records, message

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
