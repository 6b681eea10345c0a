"""The files protocol end to end: TransferTable on a ROUTER, FileSender on a DEALER, over tcp."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from piwheels import filetransfer, protocols
from piwheels.errors import ProtocolError, TransportError
from piwheels.filetransfer import (
    FileSender,
    SendResult,
    TransferRefused,
    TransferTable,
    chunk_head,
    new_token,
)
from piwheels.transport import DEALER, ROUTER, Context, Socket, encode

CHUNK = 64 * 1024


@pytest.fixture
def context() -> Iterator[Context]:
    ctx = Context()
    yield ctx
    ctx.close()


@pytest.fixture
def router(context: Context) -> Iterator[Socket]:
    sock = context.socket(ROUTER, protocols.files, max_msg_size=2 << 20)
    sock.bind("tcp://127.0.0.1:0")
    yield sock
    sock.close(linger=0)


def serve_one(table: TransferTable, router: Socket, *, copy: bool = True) -> None:
    """Receive one message and send the table's replies (chunks as frame views unless *copy*)."""
    try:
        received = router.recv_msg(copy=copy)
    except ProtocolError as exc:
        logging.getLogger("test").warning("%s", exc)
        return
    for reply in table.handle(received):
        try:
            router.send_msg(reply.msg, reply.data, peer=reply.peer)
        except TransportError:
            pass  # the sender vanished (as FileReceiver does: it will say HELLO again)


def run_sender(
    table: TransferTable, router: Socket, sender: FileSender, *, copy: bool = True
) -> SendResult:
    """Run *sender* in a thread while this thread serves the receiver."""
    result: list[SendResult] = []
    thread = threading.Thread(target=lambda: result.append(sender.run()))
    thread.start()
    while thread.is_alive():
        if router.poll(0.05):
            serve_one(table, router, copy=copy)
    thread.join()
    return result[0]


def random_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("copy", [True, False])
def test_multi_chunk_file_arrives_intact(
    tmp_path: Path, context: Context, router: Socket, copy: bool
) -> None:
    source = tmp_path / "src.bin"
    digest = random_file(source, 20 * CHUNK + 123)
    table = TransferTable(tmp_path / "staging", max_size=1 << 30, chunk_size=CHUNK, window=4)
    token = new_token()
    transfer = table.expect(token, "x.bin", source.stat().st_size)
    sender = FileSender(context, router.endpoints[0], source, token, silence=2.0)
    result = run_sender(table, router, sender, copy=copy)
    assert result.ok, result.reason
    assert transfer.state == "complete"
    # The receiver's figures come from what it wrote, and match the real file.
    assert transfer.sha256 == digest == result.sha256
    assert result.size == source.stat().st_size
    assert transfer.path.read_bytes() == source.read_bytes()
    assert result.chunks == 21  # 20 full chunks and the tail, each asked for once


@pytest.mark.parametrize("offset", [0, 23, 24, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32])
@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 65535, 65536, 1 << 20])
def test_chunk_frames_are_what_the_encoder_makes(offset: int, length: int) -> None:
    data = os.urandom(length)
    assert chunk_head(offset, length) + data == encode("CHUNK", {"offset": offset, "data": data})


@pytest.mark.parametrize("copy", [True, False])
def test_big_file_hashed_beside_the_transfer(
    tmp_path: Path, context: Context, router: Socket, copy: bool
) -> None:
    """The hash thread hashes each chunk from the received frame (views of it, when not
    copied) after the receiver has moved on to the next ones."""
    source = tmp_path / "big.bin"
    size = filetransfer.HASH_THREAD_MIN + 3 * CHUNK + 7
    digest = random_file(source, size)
    table = TransferTable(tmp_path / "staging", max_size=1 << 30, chunk_size=CHUNK, window=8)
    token = new_token()
    transfer = table.expect(token, "big.bin", size)
    result = run_sender(
        table, router, FileSender(context, router.endpoints[0], source, token), copy=copy
    )
    assert result.ok, result.reason
    assert transfer.sha256 == digest == result.sha256
    assert transfer.path.read_bytes() == source.read_bytes()
    assert not [t for t in threading.enumerate() if t.name == "sha256"]


def test_threaded_hash_of_chunks_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks that arrive out of order are hashed in file order, on the worker thread too."""
    monkeypatch.setattr(filetransfer, "HASH_THREAD_MIN", 1)
    data = os.urandom(10 * 1000 + 1)
    table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=1000, window=20)
    transfer = table.expect("tok", "f.bin", len(data))
    peer = (b"p",)
    fetches = transfer.hello(peer)
    assert len(fetches) == 11
    order = [3, 0, 1, 7, 2, 10, 4, 6, 5, 9, 8]
    replies = []
    for i in order:
        replies = transfer.chunk(peer, i * 1000, data[i * 1000 : (i + 1) * 1000])
    assert [r.msg for r in replies] == ["DONE"]
    assert transfer.sha256 == hashlib.sha256(data).hexdigest()
    assert not [t for t in threading.enumerate() if t.name == "sha256"]


def test_discarded_big_transfer_stops_its_hash_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filetransfer, "HASH_THREAD_MIN", 1)
    table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=1000)
    transfer = table.expect("tok", "f.bin", 5000)
    transfer.hello((b"p",))
    transfer.chunk((b"p",), 0, b"x" * 1000)
    assert [t for t in threading.enumerate() if t.name == "sha256"]
    table.discard("tok")
    assert not [t for t in threading.enumerate() if t.name == "sha256"]
    assert not transfer.path.exists()


def test_staging_folders_are_reused_one_transfer_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    table = TransferTable(staging, max_size=1 << 20, chunk_size=1000)
    first = table.expect("one", "same.whl", 3)
    second = table.expect("two", "same.whl", 3)
    # Two transfers of one file name at once: each in a folder of its own.
    assert first.folder != second.folder
    first.hello((b"p",))
    assert [r.msg for r in first.chunk((b"p",), 0, b"abc")] == ["DONE"]
    table.discard("one")
    assert not first.path.exists() and first.folder.is_dir()
    third = table.expect("three", "other.whl", 2)
    assert third.folder == first.folder and third.path.exists()
    assert third.path.read_bytes() == b"\0\0"
    # A stray file of the same name in a kept folder: the transfer takes a new folder.
    table.discard("three")
    (first.folder / "stray.whl").write_bytes(b"x")
    fourth = table.expect("four", "stray.whl", 1)
    assert fourth.folder == staging / "four" and (first.folder / "stray.whl").read_bytes() == b"x"
    # At most FREE_FOLDERS are kept; the rest go.
    monkeypatch.setattr(filetransfer, "FREE_FOLDERS", 0)
    table.discard("two")
    assert not second.folder.exists()
    table.clear_staging()
    assert list(staging.iterdir()) == []


def test_empty_file(tmp_path: Path, context: Context, router: Socket) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    table = TransferTable(tmp_path / "staging", max_size=100)
    token = new_token()
    table.expect(token, "empty", 0)
    result = run_sender(table, router, FileSender(context, router.endpoints[0], source, token))
    assert result.ok and result.size == 0
    assert result.sha256 == hashlib.sha256(b"").hexdigest()


def test_sender_disconnects_and_resumes(tmp_path: Path, context: Context, router: Socket) -> None:
    source = tmp_path / "src.bin"
    digest = random_file(source, 30 * CHUNK + 7)
    table = TransferTable(tmp_path / "staging", max_size=1 << 30, chunk_size=CHUNK, window=3)
    token = new_token()
    transfer = table.expect(token, "x.bin", source.stat().st_size)

    first = run_sender(
        table, router, FileSender(context, router.endpoints[0], source, token, max_chunks=10)
    )
    assert not first.ok and first.chunks == 10
    # Drain what the vanished sender managed to send.
    while router.poll(0.2):
        serve_one(table, router)
    assert transfer.state == "receiving"
    assert 0 < transfer.received < transfer.size
    already = transfer.received

    # A new sender (new socket, new identity) resumes with only what is missing.
    second = run_sender(table, router, FileSender(context, router.endpoints[0], source, token))
    assert second.ok, second.reason
    assert second.sha256 == digest == transfer.sha256
    assert transfer.path.read_bytes() == source.read_bytes()
    assert second.chunks <= 31 - already // CHUNK


def test_silence_makes_the_sender_say_hello_again(
    tmp_path: Path, context: Context, router: Socket
) -> None:
    source = tmp_path / "src.bin"
    digest = random_file(source, 5 * CHUNK)
    table = TransferTable(tmp_path / "staging", max_size=1 << 30, chunk_size=CHUNK, window=2)
    token = new_token()
    table.expect(token, "x.bin", source.stat().st_size)
    sender = FileSender(context, router.endpoints[0], source, token, silence=0.3, give_up=30)
    result: list[SendResult] = []
    thread = threading.Thread(target=lambda: result.append(sender.run()))
    thread.start()
    # Ignore the first HELLO entirely: the receiver was "busy".
    assert router.poll(5)
    router.recv_msg()
    while thread.is_alive():
        if router.poll(0.05):
            serve_one(table, router)
    thread.join()
    assert result[0].ok and result[0].sha256 == digest
    assert result[0].hellos >= 2


def test_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    table = TransferTable(tmp_path / "staging", max_size=1000)
    with pytest.raises(TransferRefused, match="over the limit of 1000 bytes") as info:
        table.expect(new_token(), "big.whl", 1001)
    assert info.value.code == "too_large"
    assert list((tmp_path / "staging").glob("**/*")) == []


def test_bad_tokens_and_names_are_refused(tmp_path: Path) -> None:
    table = TransferTable(tmp_path / "staging", max_size=1000)
    with pytest.raises(TransferRefused, match="not valid"):
        table.expect("../escape", "x.whl", 10)
    with pytest.raises(TransferRefused, match="path parts"):
        table.expect(new_token(), "../x.whl", 10)
    token = new_token()
    table.expect(token, "x.whl", 10)
    with pytest.raises(TransferRefused, match="already expected"):
        table.expect(token, "x.whl", 10)


def _rogue(context: Context, router: Socket) -> Socket:
    sock = context.socket(DEALER, reversed(protocols.files), max_msg_size=2 << 20)
    sock.connect(router.endpoints[0])
    return sock


def test_bytes_past_the_claimed_size_are_refused(
    tmp_path: Path, context: Context, router: Socket
) -> None:
    table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=CHUNK)
    token = new_token()
    transfer = table.expect(token, "x.bin", 100)
    rogue = _rogue(context, router)
    try:
        rogue.send_msg("HELLO", {"transfer": token})
        serve_one(table, router)
        fetch = rogue.recv_msg(timeout=5)
        assert fetch.msg == "FETCH" and fetch.data == {"offset": 0, "length": 100}
        rogue.send_msg("CHUNK", {"offset": 0, "data": b"x" * 5000})
        serve_one(table, router)
        error = rogue.recv_msg(timeout=5)
        assert error.msg == "ERROR"
        assert "past the announced 100" in error.data["reason"]
        assert transfer.state == "failed" and transfer.code == "too_large"
        assert not transfer.path.exists()
    finally:
        rogue.close(linger=0)


def test_a_file_shorter_than_claimed_is_refused(
    tmp_path: Path, context: Context, router: Socket
) -> None:
    source = tmp_path / "short.bin"
    random_file(source, 3 * CHUNK)
    table = TransferTable(tmp_path / "staging", max_size=1 << 30, chunk_size=CHUNK)
    token = new_token()
    transfer = table.expect(token, "x.bin", 5 * CHUNK)
    result = run_sender(table, router, FileSender(context, router.endpoints[0], source, token))
    assert not result.ok
    assert "shorter than the announced" in (result.reason or "")
    assert transfer.state == "failed" and not transfer.path.exists()


def test_stray_chunk_is_ignored_and_logged(
    tmp_path: Path, context: Context, router: Socket, caplog: pytest.LogCaptureFixture
) -> None:
    table = TransferTable(tmp_path / "staging", max_size=1 << 20)
    token = new_token()
    transfer = table.expect(token, "x.bin", 10)
    rogue = _rogue(context, router)
    try:
        with caplog.at_level(logging.WARNING, logger="piwheels.filetransfer"):
            rogue.send_msg("CHUNK", {"offset": 0, "data": b"0123456789"})
            assert router.poll(5)
            assert table.handle(router.recv_msg()) == []
        assert "stray CHUNK" in caplog.text
        assert transfer.received == 0 and transfer.state == "receiving"
        assert not rogue.poll(0.2)  # nothing was sent back
    finally:
        rogue.close(linger=0)


def test_unknown_transfer_gets_an_error(tmp_path: Path, context: Context, router: Socket) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"abc")
    table = TransferTable(tmp_path / "staging", max_size=100)
    result = run_sender(table, router, FileSender(context, router.endpoints[0], source, "nope"))
    assert not result.ok and result.reason == "unknown transfer nope"


def test_garbage_on_the_file_socket_is_dropped(
    tmp_path: Path, context: Context, router: Socket
) -> None:
    rogue = _rogue(context, router)
    try:
        rogue.send_raw([b"\xff\x00garbage"])
        rogue.send_raw([encode("FETCH", {"offset": 0, "length": 1})])  # wrong direction
        for _ in range(2):
            assert router.poll(5)
            with pytest.raises(ProtocolError):
                router.recv_msg()
    finally:
        rogue.close(linger=0)


def test_silent_receiver_makes_the_sender_give_up(tmp_path: Path, context: Context) -> None:
    source = tmp_path / "x"
    source.write_bytes(b"abc")
    sock = context.socket(ROUTER, protocols.files)
    address = sock.bind("tcp://127.0.0.1:0")
    try:
        sender = FileSender(context, address, source, new_token(), silence=0.1, give_up=0.5)
        result = sender.run()
        assert not result.ok and "silent" in (result.reason or "")
        assert result.hellos >= 2
    finally:
        sock.close(linger=0)


def test_curve_transfer(tmp_path: Path) -> None:
    from piwheels.transport import generate_keys, load_keys

    generate_keys(tmp_path / "server", "master")
    generate_keys(tmp_path / "clients", "builder")
    server = load_keys(tmp_path / "server" / "master.key_secret")
    client = load_keys(tmp_path / "clients" / "builder.key_secret")
    ctx = Context(authorized_keys=tmp_path / "clients")
    try:
        router = ctx.socket(ROUTER, protocols.files, max_msg_size=2 << 20)
        router.curve_server(server)
        router.bind("tcp://127.0.0.1:0")
        source = tmp_path / "src.bin"
        digest = random_file(source, 3 * CHUNK + 5)
        table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=CHUNK)
        token = new_token()
        table.expect(token, "x.bin", source.stat().st_size)
        sender = FileSender(
            ctx, router.endpoints[0], source, token, keys=client, server_public=server.public
        )
        result = run_sender(table, router, sender)
        assert result.ok and result.sha256 == digest
        router.close(linger=0)
    finally:
        ctx.close()


def test_sender_connections_carry_many_files(tmp_path: Path) -> None:
    """Over CurveZMQ, one kept connection sends file after file; each arrives intact, and
    a transfer that ended in an ERROR does not hand its connection on."""
    from piwheels.filetransfer import SenderConnections
    from piwheels.transport import generate_keys, load_keys

    generate_keys(tmp_path / "server", "master")
    generate_keys(tmp_path / "clients", "builder")
    server = load_keys(tmp_path / "server" / "master.key_secret")
    client = load_keys(tmp_path / "clients" / "builder.key_secret")
    ctx = Context(authorized_keys=tmp_path / "clients")
    connections = SenderConnections()
    try:
        router = ctx.socket(ROUTER, protocols.files, max_msg_size=2 << 20)
        router.curve_server(server)
        router.bind("tcp://127.0.0.1:0")
        table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=CHUNK)
        peers = set()
        for i in range(3):
            source = tmp_path / f"src{i}.bin"
            digest = random_file(source, (i + 1) * CHUNK + 7)
            token = new_token()
            transfer = table.expect(token, f"x{i}.bin", source.stat().st_size)
            sender = FileSender(
                ctx,
                router.endpoints[0],
                source,
                token,
                keys=client,
                server_public=server.public,
                connections=connections,
            )
            result = run_sender(table, router, sender)
            assert result.ok and result.sha256 == digest == transfer.sha256
            assert transfer.path.read_bytes() == source.read_bytes()
            peers.add(transfer.peer)
        assert connections.opened == 1 and len(peers) == 1
        # The receiver refuses: that connection is closed, the next transfer opens another.
        bad = FileSender(
            ctx,
            router.endpoints[0],
            tmp_path / "src0.bin",
            "nope",
            keys=client,
            server_public=server.public,
            connections=connections,
        )
        result = run_sender(table, router, bad)
        assert not result.ok and result.reason == "unknown transfer nope"
        assert connections.opened == 1  # it took the kept one...
        token = new_token()
        table.expect(token, "again.bin", (tmp_path / "src0.bin").stat().st_size)
        again = FileSender(
            ctx,
            router.endpoints[0],
            tmp_path / "src0.bin",
            token,
            keys=client,
            server_public=server.public,
            connections=connections,
        )
        assert run_sender(table, router, again).ok
        assert connections.opened == 2  # ...and did not give it back
        router.close(linger=0)
    finally:
        connections.close()
        ctx.close()


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.pwrite may write less than asked (a signal, a nearly full disk): the rest follows."""
    real = os.pwrite
    calls = []

    def stingy(fd: int, data: bytes | memoryview, offset: int) -> int:
        calls.append(len(data))
        return real(fd, memoryview(data)[: max(1, len(data) // 3)], offset)

    monkeypatch.setattr(filetransfer.os, "pwrite", stingy)
    data = os.urandom(5000)
    table = TransferTable(tmp_path / "staging", max_size=1 << 20, chunk_size=2000, window=4)
    transfer = table.expect("tok", "f.bin", len(data))
    peer = (b"p",)
    transfer.hello(peer)
    replies = []
    for start in range(0, len(data), 2000):
        replies = transfer.chunk(peer, start, memoryview(data)[start : start + 2000])
    assert [r.msg for r in replies] == ["DONE"]
    assert len(calls) > 3
    assert transfer.path.read_bytes() == data
    assert transfer.sha256 == hashlib.sha256(data).hexdigest()
