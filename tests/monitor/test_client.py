"""MonitorClient against a scripted master on real ZeroMQ sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from piwheels.errors import ConfigError, ProtocolError, TransportError, TransportTimeout
from piwheels.monitor.client import (
    ACTIONS,
    BUILDER_ACTIONS,
    MonitorClient,
    Reply,
    client_keys,
    fetch_state,
)
from piwheels.settings import KeysSettings
from piwheels.transport import Context, generate_keys, load_keys
from tests.peer import wait_for

from .conftest import ScriptedMaster
from .factories import at, builder_state, current_build, history, master_info, master_stats

MasterFactory = Callable[..., ScriptedMaster]


@pytest.fixture
def make_client(zmq_context: Context) -> Iterator[Callable[..., MonitorClient]]:
    clients: list[MonitorClient] = []

    def make(master: ScriptedMaster, **kw: object) -> MonitorClient:
        kw.setdefault("reconnect_interval", 0.1)
        kw.setdefault("request_timeout", 2.0)
        client = MonitorClient(
            master.status_endpoint, master.control_endpoint, context=zmq_context, **kw
        )
        clients.append(client.start())
        return client

    yield make
    for client in clients:
        client.stop()


def connect(peer: ScriptedMaster, client: MonitorClient, **history_kw: object) -> None:
    peer.answer_hello(history(**history_kw))
    assert client.wait_connected(10)


def test_hello_history_then_live_updates(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    assert client.status == "connecting" and not client.connected
    connect(master, client)
    with client.lock:
        assert client.state.master is not None
        assert client.state.master.hostname == "farm-master"
        assert sorted(client.state.builders) == [1, 2]
        assert len(client.state.stats) == 3
        assert client.connections == 1
    # A follow-up BUILDER changes the builder's state.
    update = builder_state(2, label="pi2", abi="cp39", state="sleeping", paused=True)
    master.publish_until("BUILDER", update, lambda: client.state.builders[2].state == "sleeping")
    master.publish_until(
        "STATS", master_stats(at(60), ingest_rate=99.0), lambda: len(client.state.stats) == 4
    )
    assert client.state.latest is not None and client.state.latest.ingest_rate == 99.0
    master.control.check(0.2)  # nothing else was asked


@pytest.mark.parametrize("action", ACTIONS)
def test_each_action_sends_its_message(
    master_factory: MasterFactory, make_client, action: str
) -> None:
    master = master_factory()
    client = make_client(master)
    connect(master, client)
    builder = 2 if action in BUILDER_ACTIONS else None
    future = client.submit(action, builder)
    expected = None if builder is None else {"builder_id": 2}
    master.control.expect(action, expected)
    master.control.send("OK")
    assert future.result(5) == Reply(True)


def test_action_for_all_builders(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    connect(master, client)
    future = client.submit("KILL", None)
    master.control.expect("KILL", {"builder_id": None})
    master.control.send("ERROR", {"reason": "no builders"})
    assert future.result(5) == Reply(False, "no builders")


def test_blocking_request_and_error(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    connect(master, client)
    import threading

    def answer() -> None:
        master.control.expect("SKIP", {"builder_id": 1})
        master.control.send("ERROR", {"reason": "builder 1 is not building"})

    thread = threading.Thread(target=answer)
    thread.start()
    reply = client.request("SKIP", 1)
    thread.join()
    assert reply == Reply(False, "builder 1 is not building")


def test_replies_are_matched_in_order(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    connect(master, client)
    first, second = client.submit("SLEEP", 1), client.submit("WAKE", 2)
    master.control.expect("SLEEP", {"builder_id": 1})
    master.control.expect("WAKE", {"builder_id": 2})
    master.control.send("ERROR", {"reason": "first"})
    master.control.send("OK")
    assert first.result(5) == Reply(False, "first")
    assert second.result(5) == Reply(True)


@pytest.mark.parametrize(
    ("action", "builder", "match"),
    [
        ("FROB", None, "unknown action"),
        ("HELLO", None, "unknown action"),
        ("PAUSE", 3, "takes no builder"),
        ("SLEEP", 0, "positive integer"),
        ("KILL", True, "positive integer"),
        ("WAKE", "2", "positive integer"),
    ],
)
def test_bad_actions_are_refused(
    master_factory: MasterFactory, make_client, action: str, builder: object, match: str
) -> None:
    master = master_factory()
    client = make_client(master)
    with pytest.raises(ProtocolError, match=match):
        client.submit(action, builder)  # type: ignore[arg-type]


def test_action_before_connect_fails(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    with pytest.raises(TransportError, match="not connected"):
        client.submit("PAUSE").result(5)


def test_unanswered_action_times_out_and_reconnects(
    master_factory: MasterFactory, make_client
) -> None:
    master = master_factory()
    client = make_client(master, request_timeout=0.5)
    connect(master, client)
    future = client.submit("QUIT")
    master.control.expect("QUIT")
    with pytest.raises(TransportTimeout, match="did not answer QUIT"):
        future.result(5)
    # A master that drops a request cannot be trusted to pair replies: start again.
    wait_for(lambda: client.status == "lost")
    connect(master, client)
    assert client.connections == 2


def test_silent_master_is_lost_then_found(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master, silence_timeout=0.5)
    connect(master, client)
    wait_for(lambda: client.status == "lost", timeout=10)
    assert client.reason is not None and "no message" in client.reason
    with pytest.raises(TransportError, match="not connected"):
        client.submit("PAUSE").result(5)
    connect(master, client, master=master_info(hostname="back-again"))
    assert client.connected and client.reason is None
    assert client.state.master is not None and client.state.master.hostname == "back-again"


def test_restarted_master(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    # Silence alone would take a minute here: the lost connection must tell.
    client = make_client(master, silence_timeout=60)
    connect(master, client)
    master.close()
    wait_for(lambda: client.status == "lost", timeout=10)
    assert client.reason == "the master closed the connection"
    second = master_factory()
    connect(second, client, master=master_info(hostname="restarted"), builders=[])
    assert client.state.master is not None and client.state.master.hostname == "restarted"
    assert client.state.builders == {}
    update = builder_state(5, label="new")
    second.publish_until("BUILDER", update, lambda: 5 in client.state.builders)


def test_status_before_history_is_applied_after(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    master.control.expect("HELLO")
    # Published while the monitor waits for HISTORY: must not be lost, nor
    # overwritten by the (older) history.
    update = builder_state(3, label="early", state="building", build=current_build())
    import time

    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        master.publish("BUILDER", update)
        time.sleep(0.02)
    master.control.send("HISTORY", history())
    assert client.wait_connected(10)
    wait_for(lambda: 3 in client.state.builders)


def test_garbage_is_ignored(master_factory: MasterFactory, make_client) -> None:
    master = master_factory()
    client = make_client(master)
    connect(master, client)
    master.status.socket.send_raw([b"\xff\x00 not cbor"])
    master.control.socket.send_raw([*master.control.last_peer, b"\x82\x62OK\x01"])
    master.publish_until("BUILDER", builder_state(9), lambda: 9 in client.state.builders)
    assert client.connected


def test_on_change_is_called(master_factory: MasterFactory, make_client) -> None:
    calls: list[int] = []
    master = master_factory()
    client = make_client(master, on_change=lambda: calls.append(1))
    connect(master, client)
    wait_for(lambda: len(calls) >= 1)


def test_fetch_state(master_factory: MasterFactory, zmq_context: Context) -> None:
    master = master_factory()
    import threading

    thread = threading.Thread(target=master.answer_hello)
    thread.start()
    state = fetch_state(master.control_endpoint, context=zmq_context, timeout=10)
    thread.join()
    assert state.master is not None and sorted(state.builders) == [1, 2]


def test_fetch_state_no_master(tmp_short: Path, zmq_context: Context) -> None:
    endpoint = f"ipc://{tmp_short}/nobody"
    with pytest.raises(TransportTimeout, match=f"did not answer at {endpoint} within 0.3s"):
        fetch_state(endpoint, context=zmq_context, timeout=0.3)


def test_fetch_state_refused(master_factory: MasterFactory, zmq_context: Context) -> None:
    master = master_factory()
    import threading

    def refuse() -> None:
        master.control.expect("HELLO")
        master.control.send("ERROR", {"reason": "monitors not allowed"})

    thread = threading.Thread(target=refuse)
    thread.start()
    with pytest.raises(TransportError, match="monitors not allowed"):
        fetch_state(master.control_endpoint, context=zmq_context, timeout=10)
    thread.join()


def test_bad_timeouts() -> None:
    with pytest.raises(ValueError):
        MonitorClient("ipc://a", "ipc://b", silence_timeout=0)


# -- CurveZMQ ------------------------------------------------------------------------


def test_client_keys_from_settings(tmp_path: Path) -> None:
    ipc = ("ipc://a", "ipc://b")
    tcp = ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert client_keys(KeysSettings(), ipc) is None
    assert client_keys(KeysSettings(curve=False), tcp) is None
    with pytest.raises(ConfigError) as err:
        client_keys(KeysSettings(), tcp)
    assert len(err.value.problems) == 2
    assert "secret_key_file" in str(err.value) and "server_public_key_file" in str(err.value)
    public, secret = generate_keys(tmp_path, "monitor")
    server_public, _ = generate_keys(tmp_path, "master")
    keys = client_keys(
        KeysSettings(secret_key_file=secret, server_public_key_file=server_public), tcp
    )
    assert keys is not None
    assert keys.client == load_keys(secret)
    assert keys.server_public == load_keys(server_public).public
    with pytest.raises(ConfigError, match="holds no secret key"):
        client_keys(KeysSettings(secret_key_file=public, server_public_key_file=server_public), tcp)
    with pytest.raises(ConfigError, match="cannot read"):
        client_keys(
            KeysSettings(secret_key_file=tmp_path / "nope", server_public_key_file=public), tcp
        )


def _curve_master(tmp_path: Path, authorize: bool) -> tuple[ScriptedMaster, Context, Path]:
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    _, server_secret = generate_keys(tmp_path / "server", "master")
    _, client_secret = generate_keys(tmp_path / "client", "monitor")
    if authorize:
        (allowed / "monitor.key").write_bytes((tmp_path / "client" / "monitor.key").read_bytes())
    ctx = Context(authorized_keys=allowed)
    master = ScriptedMaster(
        ctx, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", server_keys=load_keys(server_secret)
    )
    return master, ctx, client_secret


def test_remote_monitor_over_curve(tmp_path: Path) -> None:
    master, ctx, client_secret = _curve_master(tmp_path, authorize=True)
    keys = client_keys(
        KeysSettings(
            secret_key_file=client_secret,
            server_public_key_file=tmp_path / "server" / "master.key",
        ),
        (master.status_endpoint, master.control_endpoint),
    )
    client = MonitorClient(
        master.status_endpoint, master.control_endpoint, keys=keys, reconnect_interval=0.1
    )
    try:
        client.start()
        connect(master, client)
        master.publish_until("BUILDER", builder_state(4), lambda: 4 in client.state.builders)
        future = client.submit("PAUSE")
        master.control.expect("PAUSE")
        master.control.send("OK")
        assert future.result(5).ok
    finally:
        client.stop()
        master.close()
        ctx.close()


def test_remote_monitor_with_unknown_key(tmp_path: Path) -> None:
    master, ctx, client_secret = _curve_master(tmp_path, authorize=False)
    keys = client_keys(
        KeysSettings(
            secret_key_file=client_secret,
            server_public_key_file=tmp_path / "server" / "master.key",
        ),
        (master.status_endpoint, master.control_endpoint),
    )
    client = MonitorClient(
        master.status_endpoint, master.control_endpoint, keys=keys, reconnect_interval=0.1
    )
    try:
        client.start()
        wait_for(lambda: client.reason is not None and "CurveZMQ" in client.reason)
        assert client.status == "connecting" and not client.connected
        master.control.check(0.3)  # the master never heard HELLO
    finally:
        client.stop()
        master.close()
        ctx.close()
