"""Reading logs from files (plain, gzipped), pipes, and following them across rotation."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.classify import AccessRecord
from piwheels.logger.parse import MAX_LINE
from piwheels.logger.reader import (
    LogReader,
    chunk_lines,
    follow_lines,
    iter_chunks,
    iter_lines,
    open_log,
)
from tests.logger.lines import PIP_UA, combined_line, json_line


def numbered(n: int, start: int = 0) -> list[str]:
    """Lines whose package name carries their number, so order can be checked."""
    return [json_line(f"/simple/pkg{i}/pkg{i}-1.0-py3-none-any.whl") for i in range(start, n)]


def numbers(records: list[AccessRecord]) -> list[int]:
    return [int((r.package or "pkg-1")[3:]) for r in records]


def write(path: Path, lines: list[str], mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def test_plain_and_gzip_files_in_order(tmp_path: Path, anonymiser: Anonymiser) -> None:
    plain = tmp_path / "access.log"
    write(plain, numbered(3))
    # Gzip detected by its magic bytes, whatever the file is called.
    gz = tmp_path / "access.log.1"
    with gzip.open(gz, "wt") as f:
        f.writelines(line + "\n" for line in numbered(6, 3))
    reader = LogReader(anonymiser)
    recs = list(reader.read_files([plain, gz]))
    assert numbers(recs) == [0, 1, 2, 3, 4, 5]
    assert all(r.kind == "download" for r in recs)
    assert (reader.stats.lines, reader.stats.parsed, reader.stats.malformed_total) == (6, 6, 0)


def test_open_log_reads_gzip_and_plain(tmp_path: Path) -> None:
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(b"hello\nworld\n"))
    with open_log(gz) as f:
        assert f.read() == b"hello\nworld\n"
    plain = tmp_path / "x"
    plain.write_bytes(b"\x1f")  # one byte: too short for the magic
    with open_log(plain) as f:
        assert f.read() == b"\x1f"


def test_pipe(tmp_path: Path, anonymiser: Anonymiser) -> None:
    path = tmp_path / "access.log"
    write(path, numbered(50))
    # A real pipe, as when the web server pipes its log into piw-logger.
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    recs = list(LogReader(anonymiser).read_stream(proc.stdout))
    proc.wait()
    assert numbers(recs) == list(range(50))


def test_malformed_lines_counted_skipped_sampled(anonymiser: Anonymiser) -> None:
    good = numbered(4)
    lines = [
        good[0],
        "garbage garbage",
        "",
        good[1],
        '{"time":"2021-10-01T12:00:00+00:00","uri":',
        "x" * 500,
        good[2],
        "[1,2]",
        "\xff\xfe not utf-8 after decoding",
        good[3],
    ]
    data = "\n".join(lines).encode("utf-8") + b"\n" + b"\xff\xfe\x00bad bytes\n"
    reader = LogReader(anonymiser, max_samples=3)
    recs = list(reader.read_stream(io.BytesIO(data)))
    assert numbers(recs) == [0, 1, 2, 3]
    stats = reader.stats
    assert stats.lines == len(lines) + 1
    assert stats.parsed == 4
    assert stats.malformed_total == len(lines) + 1 - 4
    assert stats.malformed["empty"] == 1
    assert stats.malformed["json"] == 1
    assert stats.malformed["format"] == 5
    assert len(stats.samples) == 3
    assert stats.samples[0] == ("format", "garbage garbage")
    assert stats.as_dict()["parsed"] == 4


def test_sample_text_is_cut(anonymiser: Anonymiser) -> None:
    reader = LogReader(anonymiser)
    list(reader.records(["y" * 5000]))
    reason, sample = reader.stats.samples[0]
    assert reason == "format"
    assert 0 < len(sample) < 5000


def test_overlong_line_cut_and_skipped(anonymiser: Anonymiser) -> None:
    good = numbered(2)
    data = (good[0] + "\n" + "z" * (MAX_LINE * 5) + "\n" + good[1] + "\n").encode()
    lines = list(iter_lines(io.BytesIO(data)))
    assert len(lines) == 3
    assert len(lines[1]) == MAX_LINE + 1
    reader = LogReader(anonymiser)
    assert numbers(list(reader.read_stream(io.BytesIO(data)))) == [0, 1]
    assert dict(reader.stats.malformed) == {"too-long": 1}


def test_mixed_formats_in_one_stream(anonymiser: Anonymiser) -> None:
    lines = [
        json_line("/simple/a/a-1.0-py3-none-any.whl"),
        combined_line("/simple/b/b-1.0-py3-none-any.whl", ua=PIP_UA),
        combined_line("/simple/c/c-1.0-py3-none-any.whl", ua=PIP_UA, apache=True),
    ]
    recs = list(LogReader(anonymiser).records(lines))
    assert [(r.kind, r.package, r.installer_name) for r in recs] == [
        ("download", "a", "pip"),
        ("download", "b", "pip"),
        ("download", "c", "pip"),
    ]


# -- following -------------------------------------------------------------------


def pull(gen: Iterator[AccessRecord | None], limit: int = 10_000) -> list[AccessRecord]:
    """Records from *gen* until it reports it is waiting (None)."""
    out = []
    for _ in range(limit):
        rec = next(gen)
        if rec is None:
            return out
        out.append(rec)
    raise AssertionError("follow never went idle")


def pull_until(
    gen: Iterator[AccessRecord | None], count: int, deadline: float = 30.0
) -> list[AccessRecord]:
    """Records until *count* arrived, giving up (and failing) after *deadline* seconds."""
    out: list[AccessRecord] = []
    end = time.monotonic() + deadline
    while len(out) < count and time.monotonic() < end:
        out += pull(gen)
    return out


def test_follow_rename_rotation(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    write(log, numbered(3))
    stop = threading.Event()
    gen = LogReader(anonymiser).follow(log, stop, poll_interval=0.001, rotate_grace=0.05)
    assert numbers(pull(gen)) == [0, 1, 2]
    assert pull(gen) == []  # nothing new
    # logrotate renames the file; the server still writes to it until it reopens.
    os.rename(log, tmp_path / "access.log.1")
    write(tmp_path / "access.log.1", numbered(5, 3))
    assert numbers(pull(gen)) == [3, 4]
    # A new file appears (created empty first, as logrotate's "create" does).
    log.touch()
    write(tmp_path / "access.log.1", numbered(6, 5))
    assert numbers(pull(gen)) == [5]
    # The server reopens and writes to the new file: the old one is drained first.
    write(tmp_path / "access.log.1", numbered(7, 6))
    write(log, numbered(9, 7))
    assert numbers(pull_until(gen, 3)) == [6, 7, 8]
    stop.set()
    assert list(gen) == []


def test_follow_rotation_to_an_empty_file_after_grace(
    tmp_path: Path, anonymiser: Anonymiser
) -> None:
    log = tmp_path / "access.log"
    write(log, numbered(2))
    stop = threading.Event()
    gen = LogReader(anonymiser).follow(log, stop, poll_interval=0.001, rotate_grace=0.05)
    assert numbers(pull(gen)) == [0, 1]
    os.rename(log, tmp_path / "old.log")
    log.touch()
    # The new file stays empty; after the grace period the reader moves to it
    # and sees what the server writes there next.
    time.sleep(0.1)
    pull(gen)
    write(log, numbered(4, 2))
    assert numbers(pull_until(gen, 2)) == [2, 3]
    stop.set()


def test_follow_copytruncate(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    write(log, numbered(4))
    stop = threading.Event()
    gen = LogReader(anonymiser).follow(log, stop, poll_interval=0.001)
    assert numbers(pull(gen)) == [0, 1, 2, 3]
    shutil.copy(log, tmp_path / "access.log.1")
    with open(log, "r+b") as f:
        f.truncate(0)
    write(log, numbered(5, 4))
    assert numbers(pull(gen)) == [4]
    write(log, numbered(7, 5))
    assert numbers(pull(gen)) == [5, 6]
    stop.set()


def test_follow_partial_line_waits_for_newline(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    line = numbered(1)[0]
    log.write_text(line[:100])
    stop = threading.Event()
    reader = LogReader(anonymiser)
    gen = reader.follow(log, stop, poll_interval=0.001)
    assert pull(gen) == []
    with open(log, "a") as f:
        f.write(line[100:] + "\n")
    assert numbers(pull(gen)) == [0]
    assert reader.stats.malformed_total == 0
    stop.set()


def test_follow_from_end_and_missing_file(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    stop = threading.Event()
    gen = LogReader(anonymiser).follow(log, stop, poll_interval=0.001, from_end=True)
    assert pull(gen) == []  # no file yet: waits
    # A file that appears after reading started is new: read from its start.
    write(log, numbered(2))
    assert numbers(pull(gen)) == [0, 1]
    write(log, numbered(4, 2))
    assert numbers(pull(gen)) == [2, 3]
    stop.set()


def test_follow_from_end_skips_existing(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    write(log, numbered(3))
    stop = threading.Event()
    gen = LogReader(anonymiser).follow(log, stop, poll_interval=0.001, from_end=True)
    assert pull(gen) == []
    write(log, numbered(5, 3))
    assert numbers(pull(gen)) == [3, 4]
    stop.set()


def test_follow_overlong_line_bounded(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    stop = threading.Event()
    log.write_bytes(b"a" * (MAX_LINE * 3))
    gen = follow_lines(log, stop, poll_interval=0.001)
    first = next(gen)
    assert first is not None and len(first) == MAX_LINE + 1
    assert next(gen) is None
    with open(log, "ab") as f:
        f.write(b"a" * 100 + b"\nshort\n")
    assert next(gen) == b"short\n"
    stop.set()
    assert list(gen) == []


def test_follow_stops_from_another_thread(tmp_path: Path, anonymiser: Anonymiser) -> None:
    log = tmp_path / "access.log"
    write(log, numbered(1))
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    try:
        recs = [r for r in LogReader(anonymiser).follow(log, stop, poll_interval=0.01) if r]
    finally:
        timer.cancel()
    assert numbers(recs) == [0]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_iter_chunks_gives_the_lines_of_iter_lines(block: int, size: int) -> None:
    rng = random.Random(block * 31 + size)
    pieces = []
    for _ in range(300):
        length = rng.choice([0, 1, 5, 20, 39, 40, 41, 42, 90])
        pieces.append(bytes(rng.choice(b"ab\r\x00 ") for _ in range(length)))
    for tail in (b"", b"unterminated", b"x" * 100):
        data = b"\n".join(pieces) + b"\n" + tail
        expected = list(iter_lines(io.BytesIO(data), max_line=40))
        chunks = list(iter_chunks(io.BytesIO(data), size, max_line=40, block=block))
        got: list[bytes] = []
        for chunk in chunks:
            lines = chunk_lines(chunk)
            assert 0 < len(lines) <= size
            got += lines
        assert got == expected
        assert any(len(line) == 41 and not line.endswith(b"\n") for line in got)  # cut
        assert len(chunks) == -(-len(expected) // size)  # full chunks but the last
        for chunk in chunks:  # memory stays bounded whatever the lines
            assert len(chunk[0]) <= size * 42 + 2 * (block + 84)


def test_iter_chunks_bounds_a_line_without_end() -> None:
    """A line far longer than the limit (no newline for megabytes) is cut, the rest skipped."""
    data = b"a\n" + b"x" * 3_000_000 + b"\nb\n" + b"y" * 100 + b"\n"
    chunks = list(iter_chunks(io.BytesIO(data), 2, max_line=40, block=4096))
    got = [line for chunk in chunks for line in chunk_lines(chunk)]
    assert got == list(iter_lines(io.BytesIO(data), max_line=40))
    assert got == [b"a\n", b"x" * 41, b"b\n", b"y" * 41]
    assert max(len(chunk[0]) for chunk in chunks) < 2 * 4096 + 200
