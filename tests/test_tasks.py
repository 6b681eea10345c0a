"""The task runtime: dispatch, timers, control, failure, ordering."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from piwheels import protocols
from piwheels.tasks import Endpoint, Task, socket_map, start_order
from piwheels.transport import PULL, PUSH, Context, encode

from .peer import ScriptedPeer, wait_for


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.zmq.term()


class PageSink(Task):
    """A task that records page requests and ticks a timer."""

    role = "page_sink"
    binds = (Endpoint("pages", "PULL", "pages"),)

    def __init__(self, context: Context, address: str, **kwargs: Any) -> None:
        super().__init__(context, **kwargs)
        self.pages = self.socket(PULL, protocols.pages, name="pages")
        self.pages.bind(address)
        self.register(self.pages)
        self.seen: list[str] = []
        self.ticks = 0
        self.every(0.01, self.tick)

    def tick(self) -> None:
        self.ticks += 1

    def do_PROJECT(self, data: dict[str, Any]) -> None:
        self.seen.append(data["package"])
        if data["package"] == "explode":
            raise RuntimeError("boom")

    def do_HOME(self, data: None) -> None:
        self.seen.append("<home>")


def _address() -> str:
    return f"inproc://pages-{uuid.uuid4().hex}"


def test_poll_dispatches_without_a_thread(context: Context) -> None:
    address = _address()
    task = PageSink(context, address)
    peer = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=address)
    try:
        peer.send("PROJECT", {"package": "foo"})
        peer.send("HOME")
        wait_for(lambda: len(task.seen) == 2, drive=(task,))
        assert task.seen == ["foo", "<home>"]
        wait_for(lambda: task.ticks >= 3, drive=(task,))
    finally:
        peer.close()
        task.close()


def test_waiting_for_a_timer_does_not_spin(context: Context) -> None:
    """An idle task wakes about once per tick, not in a loop before each one."""
    task = PageSink(context, _address())
    waits: list[int | None] = []
    poll = task._poller.poll

    def counted(timeout: int | None = None) -> Any:
        waits.append(timeout)
        return poll(timeout)

    task._poller.poll = counted  # type: ignore[method-assign]
    try:
        while task.ticks < 20:
            task.poll(None)
        # Waits rounded down to whole milliseconds made the last sliver before each
        # tick a string of zero-length polls (dozens per tick).
        assert len(waits) <= 2 * task.ticks + 2, (task.ticks, waits.count(0))
    finally:
        task.close()


def test_bad_message_is_logged_and_the_task_goes_on(
    context: Context, caplog: pytest.LogCaptureFixture
) -> None:
    address = _address()
    task = PageSink(context, address)
    peer = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=address)
    try:
        with caplog.at_level(logging.WARNING, logger="piwheels.page_sink"):
            peer.socket.send_raw([b"\x00not cbor"])
            peer.socket.send_raw([encode("PROJECT", {"package": 7})])
            peer.send("PROJECT", {"package": "after"})
            wait_for(lambda: task.seen == ["after"], drive=(task,))
        assert "malformed CBOR" in caplog.text
        assert "package: expected text" in caplog.text
    finally:
        peer.close()
        task.close()


def test_file_descriptor_wakes_its_handler(context: Context) -> None:
    # A helper thread's pipe is polled beside the sockets: its handler runs when a byte
    # arrives and not before; once unregistered it is never called again.
    task = PageSink(context, _address())
    r, w = os.pipe()
    woken: list[bytes] = []
    try:
        task.register_fd(r, lambda: woken.append(os.read(r, 1)), pausable=False)
        task.poll(0.02)
        assert woken == []
        threading.Thread(target=os.write, args=(w, b"!")).start()
        wait_for(lambda: woken == [b"!"], drive=(task,))
        task.unregister_fd(r)
        os.write(w, b"?")
        task.poll(0.02)
        assert woken == [b"!"]
    finally:
        task.close()
        os.close(r)
        os.close(w)


def test_pause_stops_work_and_resume_catches_up(context: Context) -> None:
    address = _address()
    task = PageSink(context, address)
    peer = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=address)
    try:
        task.pause()
        wait_for(lambda: task.paused, drive=(task,))
        ticks = task.ticks
        peer.send("PROJECT", {"package": "queued"})
        for _ in range(20):
            task.poll(0.01)
        assert task.seen == [] and task.ticks == ticks
        task.resume()
        wait_for(lambda: task.seen == ["queued"], drive=(task,))
        assert not task.paused
    finally:
        peer.close()
        task.close()


def test_thread_lifecycle_quit(context: Context) -> None:
    address = _address()
    task = PageSink(context, address)
    task.start()
    peer = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=address)
    try:
        peer.send("PROJECT", {"package": "threaded"})
        wait_for(lambda: task.seen == ["threaded"])
        task.quit()
        task.join(5)
        assert not task.is_alive()
        assert task.failure is None
    finally:
        peer.close()


def test_exception_is_fatal_logged_and_reported(
    context: Context, caplog: pytest.LogCaptureFixture
) -> None:
    address = _address()
    reported: list[tuple[str, str]] = []
    done = threading.Event()

    def on_fatal(task: Task, exc: BaseException) -> None:
        reported.append((task.role, str(exc)))
        done.set()

    task = PageSink(context, address, on_fatal=on_fatal)
    peer = ScriptedPeer(context, PUSH, reversed(protocols.pages), connect=address)
    try:
        with caplog.at_level(logging.ERROR):
            task.start()
            peer.send("PROJECT", {"package": "explode"})
            assert done.wait(5)
            task.join(5)
        assert not task.is_alive()
        assert reported == [("page_sink", "boom")]
        assert "task page_sink failed" in caplog.text
    finally:
        peer.close()


def _task(role: str, binds: tuple[str, ...] = (), connects: tuple[str, ...] = ()) -> type[Task]:
    return type(
        role,
        (Task,),
        {
            "role": role,
            "binds": tuple(Endpoint(b, "ROUTER", "x") for b in binds),
            "connects": tuple(Endpoint(c, "DEALER", "x") for c in connects),
        },
    )


def test_start_order_binds_before_connects() -> None:
    db = _task("db", binds=("db",))
    pages = _task("pages", binds=("pages",), connects=("db",))
    dispatcher = _task("dispatcher", binds=("builder",), connects=("db", "pages"))
    order = start_order([dispatcher, pages, db])
    assert order.index(db) < order.index(pages) < order.index(dispatcher)
    rows = socket_map([dispatcher, pages, db])
    assert ("db", "ROUTER", "x", "db", ["dispatcher", "pages"]) in rows


def test_start_order_refuses_cycles_and_double_binds() -> None:
    a = _task("a", binds=("x",), connects=("y",))
    b = _task("b", binds=("y",), connects=("x",))
    with pytest.raises(ValueError, match="cycle"):
        start_order([a, b])
    with pytest.raises(ValueError, match="bound by both"):
        start_order([_task("c", binds=("z",)), _task("d", binds=("z",))])
