"""Faults on a real farm: unknown keys, rogue builders, killed builders, a master restart.

One farm for the module (tests run in order and each cleans up its builders).
Builders here run without bubblewrap so a build can wait for a flag file the
test creates: that is how a test holds a build at an exact point.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import sysconfig
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from piwheels import protocols
from piwheels.db import abis as db_abis
from piwheels.master import build_dispatcher
from piwheels.settings import Settings
from piwheels.transport import encode
from tests import sdists
from tests.sdists import make_sdist

from .conftest import BUILDER_TIMEOUT, Farm, RunningBuilder, wait_until
from .rogue import ROGUE_ABI, ROGUE_PLATFORM, ROGUE_TARGET, Rogue, file_record, wheel_bytes

pytestmark = pytest.mark.slow

ABI = "cp{}{}".format(*sys.version_info[:2])
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")
#: Large enough for a wheel whose transfer takes long enough to be caught mid-way.
FAULTS_MAX_FILE_SIZE = 64 << 20
#: Long enough for the master to drop a silent builder and give its build back.
REQUEUE_WAIT = BUILDER_TIMEOUT.total_seconds() * 3 + 60


def gated_sdist(dest: Path, name: str, flag: Path) -> Path:
    """A pure package whose setup.py waits until *flag* exists (at most five minutes)."""
    body = f"""\
    import os, time
    print("piwtest waiting for the flag", flush=True)
    deadline = time.time() + 300
    while not os.path.exists({str(flag)!r}) and time.time() < deadline:
        time.sleep(0.1)
    """
    return make_sdist(dest, name, "1.0", sdists._setup(name, "1.0", body, py_modules="[]"))


@pytest.fixture(scope="module")
def farm(farm_factory: Any) -> Farm:
    """A farm that knows both targets from the start, so releases can skip either."""
    f = farm_factory(max_file_size=FAULTS_MAX_FILE_SIZE)
    with f.engine.begin() as conn:
        db_abis.add_abi(conn, ABI, PLATFORM)
        db_abis.add_abi(conn, ROGUE_ABI, ROGUE_PLATFORM)
    f.start_master()
    return f


def start_real(farm: Farm, label: str | None = None, **over: Any) -> RunningBuilder:
    return farm.start_builder(label, sandbox="off", **over)


def real_target(farm: Farm) -> str:
    return f"{ABI}-{PLATFORM}"


def gated_release(farm: Farm, name: str) -> Path:
    flag = farm.root / f"flag-{name}"
    farm.publish_sdist(gated_sdist, name, flag)
    farm.add_release(name, skip_abis=(ROGUE_TARGET,))
    return flag


def building(farm: Farm, package: str) -> Any:
    return wait_until(
        lambda: next((b for b in farm.builds(package) if b.status == "building"), None),
        timeout=120,
        what=f"{package} building",
    )


def assert_master_healthy(farm: Farm) -> None:
    assert farm.master is not None and farm.master_thread is not None
    assert farm.master_thread.is_alive() and farm.master.failed is None
    assert all(t.is_alive() for t in farm.master.tasks)


# -- keys ------------------------------------------------------------------------------------


def test_unknown_key_never_gets_ack(farm: Farm) -> None:
    label = f"stranger-{uuid.uuid4().hex[:6]}"
    stranger = farm.keys.builder(label, admitted=False)
    running = farm.start_builder(label, secret=stranger, reply_timeout=1.0)
    # It keeps trying (backoffs grow) and is never welcomed.
    wait_until(lambda: len(running.daemon.backoffs) >= 3, timeout=60, what="three attempts")
    assert running.daemon.builder_id is None
    assert len(running.daemon.hellos) >= 3
    assert farm.sql("SELECT 1 FROM builders WHERE label = :l", l=label) == []
    assert running.stop() == 0
    assert_master_healthy(farm)


# -- a rogue builder ---------------------------------------------------------------------------


@pytest.fixture
def rogue(farm: Farm) -> Any:
    r = Rogue(farm, f"rogue-{uuid.uuid4().hex[:6]}")
    r.hello()
    yield r
    r.close()


def _bad(kind: str, name: str) -> tuple[str, bytes, dict[str, Any], str]:
    """(filename, bytes, record overrides, words the refusal names) for each bad file kind."""
    good_name, good = wheel_bytes(name)
    if kind == "path-parts":
        return f"../{good_name}", good, {}, "path"
    if kind == "other-package":
        other, data = wheel_bytes("piwtest-someone-else")
        return other, data, {}, "is not a wheel of"
    if kind == "wrong-version":
        other, data = wheel_bytes(name, "2.0")
        return other, data, {}, "version"
    if kind == "over-size":
        return good_name, good, {"size": FAULTS_MAX_FILE_SIZE + 1}, "limit"
    if kind == "not-a-zip":
        return good_name, os.urandom(4096), {}, "zip"
    if kind == "bad-record":
        _, data = wheel_bytes(name, tamper=True)
        return good_name, data, {}, "RECORD"
    if kind == "hash-claim":
        return good_name, good, {"sha256": hashlib.sha256(b"other").hexdigest()}, "sha256"
    raise AssertionError(kind)


BAD_KINDS = (
    "path-parts",
    "other-package",
    "wrong-version",
    "over-size",
    "not-a-zip",
    "bad-record",
    "hash-claim",
)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_rogue_bad_file_refused(
    farm: Farm, rogue: Rogue, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piwheels")
    package = f"piwtest-rogue-{kind}"
    farm.add_release(package, skip_abis=(real_target(farm),))
    build = rogue.take_build(package)
    filename, data, over, words = _bad(kind, package)
    reply = rogue.deliver(build, filename, data, **over)
    assert reply.msg in ("DONE", "DIE"), reply
    (row,) = farm.wait_finished(package)
    assert (row.status, row.failure_class) in (("failed", "invalid_wheel"), ("failed", "other"))
    assert farm.files(package) == []
    assert not (farm.output / "simple" / package).exists() or not list(
        (farm.output / "simple" / package).glob("*.whl")
    )
    wait_until(lambda: farm.staged() == [], timeout=30, what="an empty staging folder")
    log = farm.build_log(row.build_id)
    assert "refused" in log and words.lower() in log.lower(), log[-2000:]
    # The master's own log names the build and why it failed.
    assert f"build {row.build_id} " in caplog.text and "invalid_wheel" in caplog.text
    assert_master_healthy(farm)


def test_rogue_good_file_accepted(farm: Farm, rogue: Rogue) -> None:
    """The same path with a good file publishes it (the refusals above are not the harness)."""
    package = "piwtest-rogue-good"
    farm.add_release(package, skip_abis=(real_target(farm),))
    build = rogue.take_build(package)
    filename, data = wheel_bytes(package)
    reply = rogue.deliver(build, filename, data)
    assert reply.msg == "DONE" and reply.data["build_id"] == build["build_id"]
    row = farm.wait_success(package)
    assert row.build_id == build["build_id"]
    assert (farm.output / "simple" / package / filename).read_bytes() == data
    assert (farm.output / "simple" / package / f"{filename}.metadata").exists()
    farm.wait_page_lists(package, filename)


MALFORMED: list[tuple[str, bytes]] = [
    ("garbage", b"\xff\x00not cbor at all"),
    ("not a pair", encode("HELLO", None)[:-1]),
    ("unknown message", encode("GIMME", {"all": "the builds"})),
    ("HELLO missing fields", encode("HELLO", {"protocol": protocols.PROTOCOL_VERSION})),
    ("IDLE with bad stats", encode("IDLE", {"stats": {"disk_free": "lots"}})),
    ("reply message from a builder", encode("ACK", {"builder_id": 1})),
]


@pytest.mark.parametrize("what,payload", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_message_refused(
    farm: Farm, what: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piwheels")
    rogue = Rogue(farm, f"mal-{uuid.uuid4().hex[:6]}")
    try:
        reply = rogue.raw(payload)
        assert reply.msg == "DIE", reply
        assert "protocol error" in reply.data["reason"]
        warned = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "build_dispatcher" in r.name
        ]
        assert warned, "the refusal was not logged"
    finally:
        rogue.close()
    assert_master_healthy(farm)


def test_messages_out_of_turn(farm: Farm, rogue: Rogue) -> None:
    # BUILT for a build it was never given: the master lets it forget it.
    reply = rogue.built({"build_id": 999_999, "package": "x"}, [])
    assert reply.msg == "DONE"
    # SENT for a file nobody asked for.
    reply = rogue.request("SENT", {"build_id": 999_999, "filename": "x-1.0-py3-none-any.whl"})
    assert reply.msg == "DONE"
    # BUSY for a build it does not hold.
    reply = rogue.request("BUSY", {"build_id": 999_999, "stats": rogue.hello_data()["stats"]})
    assert reply.msg == "ABORT"
    # A stranger's IDLE (no HELLO first) is told to start again.
    other = Rogue(farm, f"nohello-{uuid.uuid4().hex[:6]}")
    try:
        reply = other.idle()
        assert reply.msg == "DIE" and "HELLO" in reply.data["reason"]
    finally:
        other.close()
    assert farm.sql("SELECT count(*) FROM builds WHERE build_id = 999999") == [(0,)]
    assert_master_healthy(farm)


def test_real_builder_after_the_rogues(farm: Farm) -> None:
    """The master is unaffected: a real builder builds a real sdist afterwards."""
    farm.publish_sdist(sdists.pure_sdist, "piwtest-after-rogues")
    farm.add_release("piwtest-after-rogues", skip_abis=(ROGUE_TARGET,))
    running = start_real(farm)
    try:
        row = farm.wait_success("piwtest-after-rogues")
        (f,) = farm.files("piwtest-after-rogues")
        farm.wait_page_lists("piwtest-after-rogues", f.filename)
        assert row.status == "success"
    finally:
        running.stop()


# -- builders that die -------------------------------------------------------------------------


def test_builder_vanishes_mid_transfer(farm: Farm) -> None:
    package = "piwtest-rogue-vanish"
    farm.add_release(package, skip_abis=(real_target(farm),))
    first = Rogue(farm, f"vanish-{uuid.uuid4().hex[:6]}")
    first.hello()
    build = first.take_build(package)
    # Several chunks of the farm's default size, so three of them are only part of the file.
    filename, data = wheel_bytes(package, payload=4 * Settings().master.file_chunk_size)
    reply = first.built(build, [file_record(filename, data)])
    assert reply.msg == "SEND"
    result = first.send_file(reply.data["transfer"], data, max_chunks=3)
    assert not result.ok and result.chunks == 3
    # Part of the file has arrived, in staging only.
    assert farm.staged() and not (farm.output / "simple" / package).exists()
    first.close()  # the builder is gone: no SENT, no BYE
    (lost,) = farm.wait_finished(package, timeout=REQUEUE_WAIT)
    assert (lost.status, lost.failure_class) == ("failed", "builder_lost")
    wait_until(lambda: farm.staged() == [], timeout=30, what="the partial file removed")
    assert farm.files(package) == []
    assert not list((farm.output / "simple").rglob(f"{filename}*"))
    # The build went back to the queue: another builder gets it and delivers it whole.
    second = Rogue(farm, f"vanish2-{uuid.uuid4().hex[:6]}")
    try:
        second.hello()
        build2 = second.take_build(package)
        assert build2["build_id"] != build["build_id"]
        assert second.deliver(build2, filename, data).msg == "DONE"
    finally:
        second.close()
    rows = farm.wait_finished(package, count=2)
    assert [(r.status, r.failure_class) for r in rows] == [
        ("failed", "builder_lost"),
        ("success", None),
    ]
    assert (farm.output / "simple" / package / filename).read_bytes() == data
    assert farm.staged() == []


def test_builder_process_killed_mid_build(farm: Farm) -> None:
    package = "piwtest-killed"
    flag = gated_release(farm, package)
    proc = farm.spawn_builder()
    try:
        first = building(farm, package)
        # SIGKILL the piw-builder: no BYE, no goodbye of any kind.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        flag.touch()  # lets any orphaned build process end
        (lost,) = farm.wait_finished(package, timeout=REQUEUE_WAIT)
        assert lost.build_id == first.build_id
        assert (lost.status, lost.failure_class) == ("failed", "builder_lost")
        assert farm.staged() == []
        running = start_real(farm)
        try:
            done = farm.wait_success(package)
        finally:
            running.stop()
        assert done.build_id > first.build_id
        rows = farm.builds(package)
        assert [r.status for r in rows] == ["failed", "success"]
        assert len(farm.files(package)) == 1
        assert len(list((farm.output / "simple" / package).glob("*.whl"))) == 1
    finally:
        flag.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def big_sdist(dest: Path, name: str, size: int) -> Path:
    """A package whose wheel carries *size* random (incompressible) bytes, made at build time."""
    mod = name.replace("-", "_")
    body = f"""\
    import os
    os.makedirs({mod!r}, exist_ok=True)
    open(os.path.join({mod!r}, "__init__.py"), "w").close()
    if not os.path.exists(os.path.join({mod!r}, "blob.bin")):
        with open(os.path.join({mod!r}, "blob.bin"), "wb") as fh:
            fh.write(os.urandom({size}))
    """
    return make_sdist(
        dest,
        name,
        "1.0",
        sdists._setup(
            name, "1.0", body, packages=f"[{mod!r}]", package_data=f"{{{mod!r}: ['blob.bin']}}"
        ),
    )


def test_builder_process_killed_mid_transfer(farm: Farm) -> None:
    """A real piw-builder frozen then killed while its wheel is on the way: nothing partial
    is left anywhere, and the build comes back and is delivered whole by another builder."""
    package = "piwtest-killed-sending"
    # Big enough (40 MiB) that the transfer lasts well beyond the moment it is caught.
    farm.publish_sdist(big_sdist, package, 40 << 20)
    farm.add_release(package, skip_abis=(ROGUE_TARGET,))
    staging = farm.output / ".transfers"
    assert farm.staged() == [], "a transfer is already in progress"
    proc = farm.spawn_builder()
    try:
        # The receiver creates the staging file when it is told to expect the wheel,
        # before the first chunk: freeze the builder the moment it appears.
        deadline = time.monotonic() + 300
        while not (staging.exists() and any(p.is_file() for p in staging.rglob("*"))):
            assert time.monotonic() < deadline and proc.poll() is None, farm.process_log(proc)
            time.sleep(0.0005)
        os.killpg(proc.pid, signal.SIGSTOP)
        # Mid-transfer: the staged file has its full size from the start (allocated at
        # EXPECT) and the chunks arrive in order, so its last bytes are still zero; a whole
        # wheel ends with the zip's end-of-directory record, never with zeros.
        (staged,) = [p for p in staging.rglob("*") if p.is_file()]
        # (Created a moment before it is given its size.)
        wait_until(lambda: staged.stat().st_size > 0, timeout=10, what="the staged file's size")
        with staged.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - 4096))
            tail = fh.read()
        assert size > 40 << 20 and tail == bytes(len(tail)), (
            f"not mid-transfer: staged {farm.staged()}, {size} bytes, tail {tail[-32:]!r}"
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        (lost,) = farm.wait_finished(package, timeout=REQUEUE_WAIT)
        assert (lost.status, lost.failure_class) == ("failed", "builder_lost")
        wait_until(lambda: farm.staged() == [], timeout=60, what="the partial file removed")
        assert not (farm.output / "simple" / package).exists() or not list(
            (farm.output / "simple" / package).glob("*.whl")
        )
        running = start_real(farm)
        try:
            farm.wait_success(package)
        finally:
            running.stop()
        (f,) = farm.files(package)
        published = farm.output / "simple" / package / f.filename
        assert hashlib.sha256(published.read_bytes()).hexdigest() == f.sha256
        assert farm.staged() == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# -- the master restarts -----------------------------------------------------------------------


def restart_master(farm: Farm) -> None:
    assert farm.stop_master() == 0
    farm.start_master()


def test_master_restart_idle_builders_reconnect(farm: Farm) -> None:
    builders = [start_real(farm), start_real(farm)]
    try:
        # Both sides must know the ids: the master registers a builder before the builder has
        # read the ACK that tells it its id.
        ids = wait_until(
            lambda: (
                len(farm.dispatcher().snapshot()) == 2
                and {s.builder_id for s in farm.dispatcher().snapshot().values()}
                == {b.daemon.builder_id for b in builders}
                and {b.daemon.builder_id for b in builders}
            ),
            timeout=60,
            what="two builders",
        )
        restart_master(farm)
        wait_until(
            lambda: {s.builder_id for s in farm.dispatcher().snapshot().values()} == ids,
            timeout=60,
            what="both builders back",
        )
        assert all(b.alive for b in builders), [b.result for b in builders]
        # And they build.
        farm.publish_sdist(sdists.pure_sdist, "piwtest-after-restart")
        farm.add_release("piwtest-after-restart", skip_abis=(ROGUE_TARGET,))
        farm.wait_success("piwtest-after-restart")
    finally:
        for b in builders:
            b.stop()


def test_master_restart_mid_build(farm: Farm) -> None:
    package = "piwtest-restart-mid"
    flag = gated_release(farm, package)
    running = start_real(farm, reply_timeout=2.0)
    try:
        first = building(farm, package)
        restart_master(farm)
        flag.touch()
        done = farm.wait_success(package, timeout=REQUEUE_WAIT)
        rows = farm.builds(package)
        assert [r.status for r in rows if r.status != "failed"] == ["success"]
        assert all(r.status in ("success", "failed") for r in rows), rows
        assert done.build_id >= first.build_id
        assert len(list((farm.output / "simple" / package).glob("*.whl"))) == 1
        assert running.alive
    finally:
        flag.touch()
        running.stop()


def test_master_restart_resumes_finished_build(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that finishes while the master is away is collected by the new master.

    A long heartbeat keeps the builder waiting for its build (not in a BUSY
    exchange) when the master stops, so the build ends while nobody listens
    and the builder's BUILT goes unanswered: it keeps the build and its wheel.
    """
    monkeypatch.setattr(build_dispatcher, "HEARTBEAT", timedelta(seconds=60))
    package = "piwtest-restart-resume"
    flag = gated_release(farm, package)
    running = start_real(farm, reply_timeout=3.0)
    try:
        first = building(farm, package)
        assert farm.stop_master() == 0
        flag.touch()
        # The build ends while nobody listens; the builder keeps it and retries.
        wait_until(
            lambda: running.daemon.held is not None and running.daemon.backoffs,
            timeout=120,
            what="the builder holding a finished build",
        )
        farm.start_master()
        done = farm.wait_success(package, timeout=120)
        assert done.build_id == first.build_id
        assert running.daemon.hellos[-1].get("resume_build_id") == first.build_id
        assert [r.status for r in farm.builds(package)] == ["success"]
        (f,) = farm.files(package)
        farm.wait_page_lists(package, f.filename)
        assert farm.staged() == []
    finally:
        flag.touch()
        running.stop()


def test_master_restart_builder_never_returns(farm: Farm) -> None:
    package = "piwtest-restart-orphan"
    flag = gated_release(farm, package)
    proc = farm.spawn_builder()
    try:
        first = building(farm, package)
        assert farm.stop_master() == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        farm.start_master()
        # Give the new master more than its builder timeout to notice nobody holds it.
        (row,) = farm.wait_finished(package, timeout=BUILDER_TIMEOUT.total_seconds() * 3)
        assert row.build_id == first.build_id
        assert (row.status, row.failure_class) == ("failed", "builder_lost")
    finally:
        flag.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        # Leave nothing in flight for the next test.
        farm.execute(
            "UPDATE builds SET status = 'failed', failure_class = 'builder_lost', "
            "duration = interval '0' WHERE package = :p AND status = 'building'",
            p=package,
        )


def test_no_build_left_in_flight(farm: Farm) -> None:
    wait_until(
        lambda: farm.sql("SELECT count(*) FROM builds WHERE status = 'building'")[0][0] == 0,
        timeout=REQUEUE_WAIT,
        what="no build still marked building",
    )
    assert_master_healthy(farm)
