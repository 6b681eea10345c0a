"""The fast path (BatchEncoder.add_lines) gives exactly the batches of the general path.

Each test feeds the same lines to ``BatchEncoder.add_lines`` and to
``BatchEncoder.extend(LogReader.records(...))`` and compares the payloads and
the reader's counts (lines, parsed, malformed by reason, samples).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.batch import BatchEncoder
from piwheels.logger.reader import LogReader
from tests.logger.lines import BOT_UA, BROWSER_UA, PIP_UA, SECRET, UV_UA, combined_line, json_line
from tests.synthetic_logs import SpikeSpec, generate


def _both(lines: list[bytes], mode: str = "hash", chunk: int = 500) -> tuple[Any, Any]:
    out = []
    for fast in (False, True):
        reader = LogReader(Anonymiser(mode, SECRET if mode == "hash" else None))
        enc = BatchEncoder()
        payloads = []
        for i in range(0, len(lines), chunk):
            part = lines[i : i + chunk]
            if fast:
                enc.add_lines(part, reader)
            else:
                enc.extend(reader.records(part))
            payloads.append(enc.take())
        st = reader.stats
        out.append((payloads, st.lines, st.parsed, dict(st.malformed), st.samples))
    return out[0], out[1]


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("fmt", ["json", "combined", "mixed"])
@pytest.mark.parametrize("mode", ["hash", "prefix"])
def test_synthetic_log_same_batches(tmp_path: Path, fmt: str, mode: str) -> None:
    path = tmp_path / "access.log"
    generate(path, days=2, lines_per_day=1500, seed=11, fmt=fmt, spike=SpikeSpec(days=[1]))
    lines = path.read_bytes().splitlines(keepends=True)
    slow, fast = _both(lines, mode)
    assert fast == slow
    payloads = slow[0]
    assert sum(p["records"] for p in payloads) == slow[2]
    assert any(p["tables"].get("downloads") for p in payloads)


def test_edge_lines_same_batches() -> None:
    """Escapes, other offsets, odd numbers, bots, non-GET, garbage: judged as before."""
    whl = "/simple/numpy/numpy-1.26.4-cp311-cp311-linux_armv7l.whl"
    texts = [
        json_line(whl),
        json_line(whl, ua=UV_UA, addr="2001:db8::1"),
        json_line(whl, ua=BROWSER_UA),
        json_line(whl, ua=BOT_UA),
        json_line("/simple/numpy/", ua=BROWSER_UA),
        json_line("/simple/numpy/", ua=BOT_UA),
        json_line("/simple/Num_Py/"),
        json_line("/project/numpy/json/"),
        json_line("/project/numpy/"),
        json_line("/"),
        json_line("/faq.html"),
        json_line("/simple/"),
        json_line(whl + ".metadata"),
        json_line(whl, method="HEAD"),
        json_line(whl, status=304),
        json_line(whl, status=206),
        json_line(whl, nbytes=0),
        json_line('/simple/a"b/'),
        json_line("/simple/caf\u00e9/"),
        json_line(whl, ua='pip/1.0 {"x":"\\\\"}'),
        json_line(whl, ua="caf\u00e9 \u2603"),
        json_line(whl, ua=""),
        json_line(whl, addr="not-an-address"),
        json_line(whl, time="2021-10-01T23:30:00+02:00"),
        json_line(whl, time="2021-10-01T23:30:00.250+00:00"),
        json_line(whl, time="2021-02-30T10:00:00+00:00"),
        json_line(whl, time="2021-10-01T24:00:00+00:00"),
        json_line(whl).replace('"status":200', '"status":"200"'),
        json_line(whl).replace('"bytes":1234', '"bytes":01234'),
        json_line(whl).replace('"bytes":1234', '"bytes":-5'),
        json_line(whl).replace('"bytes":1234', '"bytes":1234567890123456'),
        json_line(whl).replace('"addr":"192.0.2.10"', '"addr":"192.0.2.\\u0031"'),
        json_line(whl).replace('{"time"', '{"when"'),
        json_line(whl)[:-1],
        # The user agent is cut by a find: hand-made lines that break its rules
        # (a bare ',"' inside it, a field missing or added after it, it last) and
        # fields the match does not take (an escaped referer, other keys).
        json_line(whl).replace('"ua":"pip/', '"ua":"pip,"/'),
        json_line(whl).replace(',"accept":"*/*"', ""),
        json_line(whl).replace(',"host":', ',"x":1,"host":'),
        json_line(whl).replace('","accept":"*/*","rt":0.004,"host":"piwheels.test"}', '"}'),
        json_line(whl).replace('"referer":""', '"referer":"a\\"b\\\\"'),
        json_line(whl).replace('"body_bytes":934', '"body_bytes":"-"'),
        json_line(whl).replace('"proto":"HTTP/1.1"', '"protocol":"HTTP/1.1"'),
        # Escapes before the status (the match lets them through; a find sends them
        # the general way), and a line whose last field is cut short after its ',"'.
        json_line("/simple/a\\\\b/"),
        json_line("/simple/numpy/\\u0041/"),
        json_line(whl).replace('"method":"GET"', '"method":"G\\u0045T"'),
        json_line(whl).replace('"proto":"HTTP/1.1"', '"proto":"HTTP\\/1.1"'),
        json_line(whl).replace('"addr":"192.0.2.10"', '"addr":"192.0.2.10\\\\"'),
        json_line(whl).replace('"host":"piwheels.test"}', "}"),
        json_line(whl).replace('"host":"piwheels.test"}', '"}'),
        json_line(whl, time="2021-10-01T12:00:60+00:00"),
        json_line(whl, time="2021-10-01T12:00:00Z"),
        json_line(whl) + "   ",
        "  " + json_line(whl),
        '{"time":"2021-10-01T12:00:00+00:00","status":200,"request":"GET /simple/x/ HTTP/1.1"}',
        '{198.51.100.1 - - [01/Oct/2021:12:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x"',
        combined_line(whl),
        combined_line(whl, apache=True),
        combined_line(whl, ua=BOT_UA),
        combined_line(whl, nbytes="-"),
        combined_line(whl, nbytes="007"),
        combined_line(whl, time="01/Oct/2021:12:00:00 -0700"),
        combined_line(whl, time="31/Feb/2021:12:00:00 +0000"),
        combined_line("/simple/caf\u00e9/"),
        combined_line('/simple/a"b/'),
        combined_line("/simple/numpy/", ua="-"),
        combined_line("/simple/numpy/", ua=PIP_UA, method="POST"),
        combined_line(whl) + " host.example 0.004",
        combined_line(whl).rsplit(' "-" ', 1)[0],
        '198.51.100.1 - - [01/Oct/2021:12:00:00 +0000] "GET /x" 200 5',
        "",
        "   ",
        "x" * 20000,
        "[1, 2, 3]",
        "{not json",
    ]
    lines = [t.encode("utf-8", "surrogateescape") + b"\n" for t in texts]
    lines.append(b'{"time":"2021-10-01T12:00:00+00:00","addr":"\xff\xfe"}\n')
    lines.append(json_line(whl, ua="caf\u00e9").encode().replace(b"\xc3\xa9", b"\xe9") + b"\n")
    for mode in ("hash", "prefix"):
        slow, fast = _both(lines * 3, mode, chunk=7)
        assert fast == slow
        assert slow[3], "some of the lines are malformed"


def test_worker_batches_pass_the_masters_check(tmp_path: Path) -> None:
    """Workers encode their batches unchecked: every one passes the master's check."""
    from piwheels import protocols
    from piwheels.logger import pool
    from piwheels.transport import _check, decode

    path = tmp_path / "access.log"
    generate(path, days=2, lines_per_day=1500, seed=5, fmt="mixed", spike=SpikeSpec(days=[1]))
    lines = path.read_bytes().splitlines(keepends=True)
    pool._init("hash", SECRET, 10)
    total = 0
    for i in range(0, len(lines), 700):
        batch_id, records, message, *_ = pool.parse_chunk(lines[i : i + 700], i + 1)
        msg, data = decode(message)
        assert msg == "BATCH"
        checked = _check(protocols.logger, "BATCH", data, sending=False)
        assert checked["batch_id"] == batch_id == i + 1
        assert checked["records"] == records
        total += records
    assert total > 2000
