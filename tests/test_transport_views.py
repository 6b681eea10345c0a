"""Receiving without copying (``recv_msg(copy=False)``): same checks, payloads as views."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator

import cbor2
import pytest

from piwheels import protocols
from piwheels.errors import ProtocolError
from piwheels.filetransfer import chunk_head
from piwheels.transport import DEALER, ROUTER, Context, decode, decode_view, encode


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.zmq.term()


def _view(payload: bytes) -> memoryview:
    return memoryview(bytearray(payload))


@pytest.mark.parametrize("offset", [0, 23, 24, 255, 256, 65536, 1 << 32, (1 << 64) - 1])
@pytest.mark.parametrize("size", [0, 1, 23, 24, 300, 70000])
def test_chunk_read_in_place_equals_full_decode(offset: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    payload = encode("CHUNK", {"offset": offset, "data": data})
    assert payload == chunk_head(offset, size) + data
    view = _view(payload)
    msg, fields = decode_view(view)
    assert (msg, fields) == decode(payload)
    assert isinstance(fields["data"], memoryview)
    # A view of the frame itself, not a copy: a change to the frame shows through.
    if size:
        view[-1] ^= 0xFF
        assert fields["data"][-1] == (data[-1] ^ 0xFF)


def test_non_shortest_heads_are_read_too() -> None:
    # CBOR allows longer heads than needed; cbor2 reads them, so must the fast path.
    payload = (
        b"\x82\x65CHUNK\xa2\x66offset\x1b"
        + struct.pack(">Q", 7)
        + b"\x64data\x5a"
        + struct.pack(">I", 3)
        + b"abc"
    )
    msg, fields = decode_view(_view(payload))
    assert msg == "CHUNK"
    assert fields["offset"] == 7
    assert bytes(fields["data"]) == b"abc"
    assert decode(payload) == ("CHUNK", {"offset": 7, "data": b"abc"})


@pytest.mark.parametrize(
    "message",
    [
        ["HELLO", {"transfer": "abc"}],  # a text value
        ["FETCH", {"offset": -1, "length": 5}],  # a negative integer
        ["DONE", None],  # no map
        ["X", {"a": [1, 2]}],  # a nested value
        ["X", {"a": 1.5}],
        ["X", {str(i): i for i in range(20)}],  # a big map
        ["X", {1: b"x"}],  # a key that is not text
    ],
)
def test_other_messages_are_decoded_in_full(message: list[object]) -> None:
    payload = cbor2.dumps(message)
    assert decode_view(_view(payload)) == decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        encode("CHUNK", {"offset": 1, "data": b"abc"})[:-1],  # truncated data
        encode("CHUNK", {"offset": 1, "data": b"abc"}) + b"\x00",  # trailing byte
        b"\x82\x65CHUNK\xa2\x66offset\x1b\x00\x00",  # truncated head
        b"\x82\x65CH\xffNK\xa1\x61a\x01",  # a name that is not UTF-8
        b"\x82\x65CHUNK\xa1\x61\xff\x01",  # a key that is not UTF-8
        b"\x83\x65CHUNK\xa0\x00",  # three items
        b"\xff\xfe garbage",
        b"",
    ],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"malformed CBOR|not a \[name, payload\]"):
        decode_view(_view(payload))


def test_router_receives_chunks_as_views_and_checks_them(context: Context) -> None:
    address = f"inproc://views-{uuid.uuid4().hex}"
    server = context.socket(ROUTER, protocols.files, max_msg_size=1024 * 1024 + 4096)
    client = context.socket(DEALER, reversed(protocols.files), identity=b"sender-1")
    try:
        server.bind(address)
        client.connect(address)
        data = bytes(range(256)) * 1024
        client.send_raw([chunk_head(4096, len(data)) + data])
        got = server.recv_msg(timeout=5, copy=False)
        assert got.msg == "CHUNK"
        assert got.peer == (b"sender-1",)
        assert got.data["offset"] == 4096
        assert isinstance(got.data["data"], memoryview)
        assert bytes(got.data["data"]) == data
        # Messages without bytes come through as ever.
        client.send_msg("HELLO", {"transfer": "tok"})
        assert server.recv_msg(timeout=5, copy=False).data == {"transfer": "tok"}
        hostile = [
            b"\xff\xfe garbage",
            chunk_head(0, 2 * 1024 * 1024) + bytes(2 * 1024 * 1024),  # over the message limit
            chunk_head(0, 1024 * 1024 + 1) + bytes(1024 * 1024 + 1),  # over the chunk limit
            encode("CHUNK", {"offset": 0}),  # missing field
            encode("CHUNK", {"offset": 0, "data": b"x", "extra": 1}),  # unexpected field
            encode("FETCH", {"offset": 0, "length": 1}),  # a message the master sends
            encode("CHUNK", {"offset": "0", "data": b"x"}),  # wrong type
        ]
        for frame in hostile:
            client.send_raw([frame])
        errors = []
        for _ in hostile:
            with pytest.raises(ProtocolError) as info:
                server.recv_msg(timeout=5, copy=False)
            errors.append(str(info.value))
        assert all("sender-1" in e for e in errors), errors
        assert "malformed CBOR" in errors[0]
        assert "over the" in errors[1] and "byte limit" in errors[1]
        assert "data: more than 1048576 bytes" in errors[2]
        assert "missing field" in errors[3]
        assert "unexpected field" in errors[4]
        assert "FETCH is not allowed" in errors[5]
        assert "offset: expected an integer" in errors[6]
    finally:
        server.close(0)
        client.close(0)


def test_chunk_data_refuses_other_buffers() -> None:
    check = protocols.chunk_data(8)
    assert check(b"abc") == b"abc"
    assert bytes(check(memoryview(b"abcd"))) == b"abcd"
    with pytest.raises(protocols.Invalid, match="shaped buffer"):
        check(memoryview(bytearray(8)).cast("H"))
    with pytest.raises(protocols.Invalid, match="more than 8 bytes"):
        check(memoryview(bytes(9)))
    with pytest.raises(protocols.Invalid, match="expected bytes, got str"):
        check("abc")
    with pytest.raises(protocols.Invalid, match="expected bytes, got bytearray"):
        check(bytearray(b"abc"))
