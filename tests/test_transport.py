"""The transport over real ZeroMQ sockets: tcp, ipc and inproc; CurveZMQ."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from piwheels import protocols
from piwheels.errors import ConfigError, ProtocolError, TransportError, TransportTimeout
from piwheels.transport import (
    DEALER,
    PULL,
    PUSH,
    REQ,
    ROUTER,
    Context,
    encode,
    generate_keys,
    load_keys,
)

from .test_protocols import VALID


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.zmq.term()


def _address(kind: str, tmp: Path) -> str:
    if kind == "tcp":
        return "tcp://127.0.0.1:0"
    if kind == "ipc":
        return f"ipc://{tmp}/sock"
    return f"inproc://test-{uuid.uuid4().hex}"


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
def test_router_dealer_round_trip(context: Context, kind: str, tmp_short: Path) -> None:
    server = context.socket(ROUTER, protocols.builder)
    client = context.socket(DEALER, reversed(protocols.builder))
    try:
        address = server.bind(_address(kind, tmp_short))
        client.connect(address)
        client.send_msg("HELLO", VALID["builder", "HELLO"])
        got = server.recv_msg(timeout=5)
        assert got.msg == "HELLO" and got.data == VALID["builder", "HELLO"]
        assert got.peer is not None
        server.send_msg("ACK", VALID["builder", "ACK"], peer=got.peer)
        reply = client.recv_msg(timeout=5)
        assert reply == ("ACK", VALID["builder", "ACK"], None)
    finally:
        server.close(0)
        client.close(0)


def test_req_client_gets_reply_through_router(context: Context) -> None:
    address = f"inproc://req-{uuid.uuid4().hex}"
    server = context.socket(ROUTER, protocols.admin)
    client = context.socket(REQ, reversed(protocols.admin))
    try:
        server.bind(address)
        client.connect(address)
        client.send_msg("UNYANK", {"package": "foo", "version": "1.0"})
        got = server.recv_msg(timeout=5)
        assert len(got.peer or ()) == 2  # identity and the REQ delimiter
        server.send_msg("OK", {"code": "UNYANKVER", "message": "done"}, peer=got.peer)
        assert client.recv_msg(timeout=5).data["code"] == "UNYANKVER"
    finally:
        server.close(0)
        client.close(0)


def test_receive_timeout(context: Context) -> None:
    sock = context.socket(PULL, protocols.pages)
    try:
        sock.bind(f"inproc://t-{uuid.uuid4().hex}")
        with pytest.raises(TransportTimeout, match=r"within 0\.05s"):
            sock.recv_msg(timeout=0.05)
    finally:
        sock.close(0)


def test_bad_messages_raise_and_the_next_one_is_served(context: Context) -> None:
    address = f"inproc://bad-{uuid.uuid4().hex}"
    server = context.socket(ROUTER, protocols.builder, max_msg_size=4096)
    client = context.socket(DEALER, reversed(protocols.builder), identity=b"rogue-1")
    try:
        server.bind(address)
        client.connect(address)
        hostile = [
            b"\xff\xfe garbage",  # malformed CBOR
            encode("FROB", None),  # unknown message
            encode("IDLE", {"stats": "lots"}),  # wrong field type
            encode("IDLE", {}),  # missing field
            encode("PAUSE", None),  # a control message on the builder socket
            encode("IDLE", {"stats": VALID["builder", "IDLE"]["stats"], "pad": "x" * 5000}),
        ]
        for frame in hostile:
            client.send_raw([frame])
        errors = []
        for _ in hostile:
            with pytest.raises(ProtocolError) as info:
                server.recv_msg(timeout=5)
            errors.append(str(info.value))
        assert all("rogue-1" in e for e in errors), errors
        assert "malformed CBOR" in errors[0]
        assert "FROB is not allowed" in errors[1]
        assert "stats: expected a mapping" in errors[2] or "stats" in errors[2]
        assert "missing field" in errors[3]
        assert "PAUSE is not allowed" in errors[4]
        assert "over the 4096 byte limit" in errors[5]
        # After all that, a good message still gets through.
        client.send_msg("IDLE", VALID["builder", "IDLE"])
        assert server.recv_msg(timeout=5).msg == "IDLE"
    finally:
        server.close(0)
        client.close(0)


def test_invalid_messages_are_not_sent(context: Context) -> None:
    sock = context.socket(PUSH, reversed(protocols.pages), max_msg_size=100)
    try:
        with pytest.raises(ProtocolError, match="missing field"):
            sock.send_msg("PROJECT", {})
        with pytest.raises(ProtocolError, match="over the 100 byte limit"):
            sock.send_msg("LOG", {"build_id": 1, "log": "x" * 200})
    finally:
        sock.close(0)


def test_router_reports_gone_peer(context: Context) -> None:
    server = context.socket(ROUTER, protocols.builder)
    try:
        server.bind(f"inproc://gone-{uuid.uuid4().hex}")
        with pytest.raises(TransportError, match="no longer connected"):
            server.send_msg("CONT", None, peer=(b"nobody",))
    finally:
        server.close(0)


def test_bind_failure_names_the_address(context: Context) -> None:
    sock = context.socket(ROUTER, protocols.builder)
    try:
        with pytest.raises(TransportError, match="cannot bind builder socket to tcp://nowhere"):
            sock.bind("tcp://nowhere:-1")
    finally:
        sock.close(0)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    generate_keys(tmp_path / "server", "master")
    generate_keys(tmp_path / "clients", "builder1")
    generate_keys(tmp_path / "rogue", "rogue")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "builder1.key").write_bytes((tmp_path / "clients" / "builder1.key").read_bytes())
    return tmp_path


@pytest.mark.parametrize("kind", ["tcp", "ipc"])
def test_curve_accepts_known_and_refuses_unknown_keys(
    keys: Path, kind: str, tmp_short: Path
) -> None:
    ctx = Context(authorized_keys=keys / "allowed")
    server_keys = load_keys(keys / "server" / "master.key_secret")
    server = ctx.socket(ROUTER, protocols.builder)
    good = ctx.socket(DEALER, reversed(protocols.builder))
    rogue = ctx.socket(DEALER, reversed(protocols.builder))
    try:
        server.curve_server(server_keys)
        address = server.bind(_address(kind, tmp_short))
        good.curve_client(load_keys(keys / "clients" / "builder1.key_secret"), server_keys.public)
        rogue.curve_client(load_keys(keys / "rogue" / "rogue.key_secret"), server_keys.public)
        rogue.connect(address)
        good.connect(address)
        rogue.send_msg("IDLE", VALID["builder", "IDLE"])
        good.send_msg("HELLO", VALID["builder", "HELLO"])
        got = server.recv_msg(timeout=5)
        assert got.msg == "HELLO"  # the known key got through
        with pytest.raises(TransportTimeout):
            server.recv_msg(timeout=0.5)  # the unknown key never did
    finally:
        for sock in (server, good, rogue):
            sock.close(0)
        ctx.close()


def test_curve_needs_authorized_keys_folder(keys: Path) -> None:
    ctx = Context()
    sock = ctx.socket(ROUTER, protocols.builder)
    try:
        with pytest.raises(ConfigError, match="authorized client keys"):
            sock.curve_server(load_keys(keys / "server" / "master.key_secret"))
    finally:
        sock.close(0)
        ctx.close()


def test_public_key_alone_cannot_serve(keys: Path) -> None:
    ctx = Context(authorized_keys=keys / "allowed")
    sock = ctx.socket(ROUTER, protocols.builder)
    try:
        with pytest.raises(ConfigError, match="secret key"):
            sock.curve_server(load_keys(keys / "server" / "master.key"))
        with pytest.raises(ConfigError, match="cannot read CurveZMQ key"):
            load_keys(keys / "nope.key")
    finally:
        sock.close(0)
        ctx.close()


def test_secret_key_is_private(keys: Path) -> None:
    mode = (keys / "server" / "master.key_secret").stat().st_mode & 0o777
    assert mode == 0o600


def test_inproc_sends_are_checked_by_the_receiver(context: Context) -> None:
    """Between sockets of one process the receiver's full check is the one that counts:
    the sender checks only the message name; a tcp sender checks everything."""
    address = f"inproc://trust-{uuid.uuid4().hex}"
    pull = context.socket(PULL, protocols.pages)
    push = context.socket(PUSH, reversed(protocols.pages))
    try:
        pull.bind(address)
        push.connect(address)
        with pytest.raises(ProtocolError, match="FROB is not allowed"):
            push.send_msg("FROB", None)
        push.send_msg("PROJECT", {})  # a bug in our own task: caught on the other side
        with pytest.raises(ProtocolError, match="missing field"):
            pull.recv_msg(timeout=5)
        push.send_msg("PROJECT", {"package": "foo"})
        assert pull.recv_msg(timeout=5).data == {"package": "foo"}
    finally:
        pull.close(0)
        push.close(0)
    tcp = context.socket(PUSH, reversed(protocols.pages))
    try:
        tcp.connect("tcp://127.0.0.1:9")
        with pytest.raises(ProtocolError, match="missing field"):
            tcp.send_msg("PROJECT", {})
    finally:
        tcp.close(0)


def test_send_encoded_sends_a_checked_payload_as_it_is(context: Context, tmp_short: Path) -> None:
    """A message checked and encoded elsewhere (piw-logger's parser processes) goes out
    byte for byte; the receiver still checks it, so a bad one is refused there."""
    from piwheels.transport import encode_checked

    server = context.socket(ROUTER, protocols.logger)
    client = context.socket(DEALER, reversed(protocols.logger))
    try:
        client.connect(server.bind(_address("ipc", tmp_short)))
        batch = VALID["logger", "BATCH"]
        payload = encode_checked(reversed(protocols.logger), "BATCH", batch)
        assert payload == encode("BATCH", batch)
        client.send_encoded("BATCH", payload)
        got = server.recv_msg(timeout=5)
        assert got.msg == "BATCH" and got.data == batch
        # Not checked on the way out (that is the caller's job), but checked on arrival.
        client.send_encoded("BATCH", encode("BATCH", {**batch, "records": -1}))
        with pytest.raises(ProtocolError, match="invalid BATCH on the logger socket"):
            server.recv_msg(timeout=5)
        with pytest.raises(ProtocolError, match="not allowed"):
            client.send_encoded("ACK", encode("ACK", {"batch_id": 1, "stored": 1}))
        with pytest.raises(ProtocolError, match="not a BATCH message"):
            client.send_encoded("BATCH", encode("ACK", {"batch_id": 1, "stored": 1}))
        with pytest.raises(ProtocolError, match="invalid BATCH"):
            encode_checked(reversed(protocols.logger), "BATCH", {**batch, "tables": {"x": b""}})
        client.max_msg_size = 10
        with pytest.raises(ProtocolError, match="byte limit"):
            client.send_encoded("BATCH", payload)
    finally:
        server.close(0)
        client.close(0)
