"""piw-logger as a process: pipes with garbage, drop mode, follow + SIGTERM, resends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from piwheels import protocols
from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.main import BatchSender
from piwheels.logger.reader import LogReader
from piwheels.transport import ROUTER, Context
from tests.logger.lines import SECRET, UV_UA, combined_line, json_line
from tests.peer import ScriptedPeer, wait_for
from tests.stats.pipeline import run_logger, running_ingest

GOOD = [
    json_line("/simple/numpy/numpy-1.26.4-cp311-cp311-linux_armv7l.whl"),
    json_line("/simple/numpy/", ua=UV_UA),
    json_line("/project/numpy/", ua="Mozilla/5.0 (X11; Linux armv7l)"),
    combined_line("/simple/flask-login/Flask_Login-0.6.3-py3-none-any.whl", apache=True),
    combined_line("/packages.html", ua="curl/7.88.1"),
    json_line("/simple/numpy/numpy-1.26.4-cp311-cp311-linux_armv7l.whl", method="HEAD"),
]
GARBAGE = [
    "",
    "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    '{"time":"2021-10-01T00:00:00+00:00","addr":"x"',
    "[1, 2, 3]",
    '10.0.0.1 - - [99/Foo/2021:99:99:99 +0000] "GET / HTTP/1.1" 200 5 "-" "x"',
    "x" * 20000,
]


@pytest.fixture
def engine(new_database: Callable[..., str]) -> Iterator[Engine]:
    eng = create_engine(new_database(template="piwheels_template"))
    yield eng
    eng.dispose()


def logger_process(args: list[str], home: Path, **kw: object) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
    }
    return subprocess.Popen(
        [sys.executable, "-c", "from piwheels.logger.main import main; main()", *args],
        env=env,
        cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE,
        **kw,  # type: ignore[call-overload]
    )


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM downloads) + (SELECT count(*) FROM searches)"
                    " + (SELECT count(*) FROM project_hits) + (SELECT count(*) FROM web_hits)"
                    " + (SELECT coalesce(sum(hits), 0) FROM daily_web_stats WHERE page = '')"
                )
            ).scalar_one()
        )


def test_pipe_with_garbage(engine: Engine, tmp_short: Path) -> None:
    address = f"ipc://{tmp_short}/log"
    lines = []
    for i in range(300):
        lines.append(GOOD[i % len(GOOD)])
        lines.append(GARBAGE[i % len(GARBAGE)])
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    with running_ingest(engine, address, tmp_short) as ingest:
        proc = logger_process(
            ["--log-endpoint", address, "--batch-size", "50", "-v"],
            tmp_short,
            stdin=subprocess.PIPE,
        )
        _out, err = proc.communicate(data, timeout=120)
        assert proc.returncode == 0, err.decode()
        assert ingest.stored == 300
    text_err = err.decode()
    assert "300 malformed lines skipped" in text_err
    assert "skipped" in text_err and "too-long" in text_err
    assert stored(engine) == 300
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM downloads")).scalar_one() == 100
        assert conn.execute(text("SELECT count(*) FROM searches")).scalar_one() == 50


def test_drop_mode_never_blocks(tmp_short: Path) -> None:
    # Nobody listens: every batch stays unacknowledged, so all but the first are dropped.
    proc = logger_process(
        [
            "--log-endpoint", f"ipc://{tmp_short}/nobody", "--drop", "--batch-size", "10",
            "--max-pending", "1", "--drain-timeout", "1", "--address-mode", "prefix",
        ],
        tmp_short,
        stdin=subprocess.PIPE,
    )  # fmt: skip
    data = ("\n".join(GOOD * 1000) + "\n").encode()
    _out, err = proc.communicate(data, timeout=120)
    text_err = err.decode()
    assert proc.returncode == 1
    assert "5990 records dropped" in text_err
    assert "10 records were not acknowledged" in text_err


def test_follow_until_sigterm(engine: Engine, tmp_short: Path) -> None:
    address = f"ipc://{tmp_short}/log"
    log = tmp_short / "access.log"
    log.write_text("\n".join(GOOD[:3]) + "\n")
    with running_ingest(engine, address, tmp_short) as ingest:
        proc = logger_process(
            ["--log-endpoint", address, "--follow", str(log), "--flush-interval", "0.2s"],
            tmp_short,
        )
        try:
            wait_for(lambda: ingest.stored == 3, timeout=60)
            # Rotation: the old file is renamed away, a new one appears.
            log.rename(tmp_short / "access.log.1")
            log.write_text("\n".join(GOOD[3:]) + "\n" + GARBAGE[1] + "\n")
            wait_for(lambda: ingest.stored == len(GOOD), timeout=60)
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err.decode()
        assert "1 malformed lines skipped" in err.decode()


def test_resends_until_acknowledged(tmp_short: Path) -> None:
    context = Context()
    peer = ScriptedPeer(context, ROUTER, protocols.logger, bind=f"ipc://{tmp_short}/log")
    assert peer.address is not None
    sender = BatchSender(context, peer.address, batch_size=2, ack_timeout=0.3)
    peer.drive = (sender,)  # type: ignore[assignment]
    try:
        reader = LogReader(Anonymiser("hash", SECRET))
        for rec in reader.records(GOOD[:2]):
            sender.add(rec)
        first = peer.expect("BATCH")
        assert first.data["batch_id"] == 1
        # No answer: the same batch comes again after the timeout.
        again = peer.expect("BATCH", timeout=5)
        assert again.data == first.data
        peer.send("NACK", {"batch_id": 1, "reason": "database down", "retry_after": 0.2})
        third = peer.expect("BATCH", timeout=5)
        assert third.data == first.data
        peer.send("ACK", {"batch_id": 1, "stored": 2})
        assert sender.drain(timeout=5)
        assert (sender.acked, sender.stored, sender.nacks, sender.resends) == (2, 2, 1, 2)
        # An ACK for a batch it no longer holds (a late duplicate) changes nothing.
        peer.send("ACK", {"batch_id": 1, "stored": 2})
        sender.poll(0.2)
        assert sender.acked == 2
    finally:
        sender.close()
        peer.close()
        context.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-file.log"], "no such log file"),
        (["a.log", "--follow", "b.log"], "not both"),
        (["--batch-size", "zero"], "batch"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "a.log").write_text("")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        code, err = run_logger(args, f"ipc://{tempfile.gettempdir()}/none", tmp_path / "s")
    finally:
        os.chdir(cwd)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) <= 3
