"""The file receiver task, driven with poll(0): every bad file refused, good ones published."""

from __future__ import annotations

import base64
import csv
import errno
import hashlib
import io
import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from piwheels import protocols
from piwheels.filetransfer import FileSender, SendResult, new_token
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import STAGING_DIR, FileReceiver
from piwheels.settings import Settings
from piwheels.tasks import Task
from piwheels.transport import DEALER, Context, Received
from tests.peer import ScriptedPeer, wait_for


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    name: str = "foo",
    version: str = "1.0",
    tag: str = "py3-none-any",
    *,
    filename: str | None = None,
    requires: tuple[str, ...] = ('bar>=1; python_version < "3.12"',),
    body: str = "VALUE = 1\n",
    corrupt_record: bool = False,
) -> Path:
    """A valid wheel written with zipfile and a correct RECORD (unless *corrupt_record*)."""
    mod = name.replace("-", "_")
    dist_info = f"{mod}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.8\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    wheel = f"Wheel-Version: 1.0\nGenerator: piwheels-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
    members = {
        f"{mod}/__init__.py": body,
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": wheel,
    }
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for path, text in members.items():
        data = text.encode()
        digest = _record_hash(b"tampered" if corrupt_record and path.endswith(".py") else data)
        writer.writerow([path, digest, len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (filename or f"{mod}-{version}-{tag}.whl")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in members.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist_info}/RECORD", rows.getvalue())
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Harness:
    """A FileReceiver, a scripted dispatcher on its transfers socket, and a context."""

    context: Context
    receiver: FileReceiver
    dispatcher: ScriptedPeer
    output: Path

    def request(self, msg: str, data: dict[str, Any]) -> Received:
        self.dispatcher.send(msg, data)
        return self.dispatcher.recv()

    def expect(self, path: Path, **claims: Any) -> tuple[str, Received]:
        token = claims.pop("transfer", None) or new_token()
        data = {
            "transfer": token,
            "filename": path.name,
            "package": "foo",
            "version": "1.0",
            "abi": "cp311",
            "platform": None,
            "size": path.stat().st_size,
            "sha256": sha(path),
        }
        data.update(claims)
        return token, self.request("EXPECT", data)

    def send(self, path: Path, token: str) -> SendResult:
        sender = FileSender(self.context, self.receiver.file_address, path, token, silence=2)
        result: list[SendResult] = []
        thread = threading.Thread(target=lambda: result.append(sender.run()))
        thread.start()
        wait_for(lambda: not thread.is_alive(), drive=(self.receiver,), timeout=30)
        thread.join()
        return result[0]

    def staged(self) -> list[Path]:
        # Files only: emptied staging folders are kept for the next transfers.
        return [p for p in (self.output / STAGING_DIR).rglob("*") if not p.is_dir()]

    def published(self) -> list[Path]:
        simple = self.output / "simple"
        return sorted(p for p in simple.rglob("*") if p.is_file()) if simple.exists() else []


def make_env(output: Path, **master: Any) -> MasterEnv:
    settings = Settings().replace("master", **master) if master else Settings()
    return MasterEnv(
        settings=settings,
        addresses={"file": "tcp://127.0.0.1:0", "transfers": f"inproc://transfers-{new_token()}"},
        output_path=output,
    )


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    context = Context()
    output = tmp_path / "www"
    receiver = FileReceiver(context, make_env(output, max_file_size=64 * 1024))
    dispatcher = ScriptedPeer(
        context,
        DEALER,
        reversed(protocols.transfers),
        connect=receiver.transfers_address,
        drive=(receiver,),
    )
    try:
        yield Harness(context, receiver, dispatcher, output)
    finally:
        dispatcher.close()
        receiver.close()
        context.close()


def refused(reply: Received, code: str, words: str) -> None:
    assert reply.msg == "REFUSED", reply
    assert reply.data["code"] == code, reply.data
    assert words in reply.data["reason"], reply.data["reason"]


# -- the good path ----------------------------------------------------------------------


def test_good_wheel_is_published_with_its_metadata(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src")
    token, reply = harness.expect(wheel)
    assert reply.msg == "EXPECTING" and reply.data == {"transfer": token}
    result = harness.send(wheel, token)
    assert result.ok and result.sha256 == sha(wheel)

    verified = harness.request("VERIFY", {"transfer": token})
    assert verified.msg == "VERIFIED"
    facts = verified.data["file"]
    assert facts["sha256"] == sha(wheel) and facts["size"] == wheel.stat().st_size
    assert facts["requires_python"] == ">=3.8"
    assert facts["requires_dist"] == ['bar>=1; python_version < "3.12"']
    assert facts["tags"] == ["py3-none-any"] and facts["modules"] == ["foo"]
    assert harness.published() == []  # verified is not yet published

    published = harness.request("PUBLISH", {"transfer": token})
    assert published.msg == "PUBLISHED" and published.data["existed"] is False
    target = harness.output / "simple" / "foo" / wheel.name
    assert published.data["file"]["path"] == f"simple/foo/{wheel.name}"
    assert target.read_bytes() == wheel.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    metadata = Path(f"{target}.metadata").read_bytes()
    assert metadata.startswith(b"Metadata-Version: 2.1\nName: foo\n")
    assert hashlib.sha256(metadata).hexdigest() == facts["metadata_sha256"]
    assert stat.S_IMODE(Path(f"{target}.metadata").stat().st_mode) == 0o644
    assert harness.staged() == []
    # The token is spent.
    refused(harness.request("VERIFY", {"transfer": token}), "unknown", "published")


def test_same_content_again_is_idempotent(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src")
    for existed in (False, True):
        token, reply = harness.expect(wheel)
        assert reply.msg == "EXPECTING"
        assert harness.send(wheel, token).ok
        published = harness.request("PUBLISH", {"transfer": token})
        assert published.msg == "PUBLISHED" and published.data["existed"] is existed
    assert len(harness.published()) == 2  # the wheel and its .metadata
    assert harness.staged() == []


def test_published_only_after_bytes_then_names_are_synced(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes are fsynced before their names exist; the new names before PUBLISHED."""
    from piwheels.master import file_receiver

    wheel = make_wheel(tmp_path / "src")
    target = harness.output / "simple" / "foo" / wheel.name
    synced: list[tuple[Path, bool]] = []  # (path, published name visible at that moment)
    plain = file_receiver._fsync

    def spy(path: Path) -> None:
        synced.append((path, target.exists()))
        plain(path)

    monkeypatch.setattr(file_receiver, "_fsync", spy)
    token, _ = harness.expect(wheel)
    assert harness.send(wheel, token).ok
    assert harness.request("PUBLISH", {"transfer": token}).msg == "PUBLISHED"
    order = {path: (i, visible) for i, (path, visible) in enumerate(synced)}
    wheel_sync = next(v for p, v in order.items() if p.name == wheel.name)
    meta_sync = next(v for p, v in order.items() if p.name.startswith(f".{wheel.name}.metadata"))
    folder_sync = order[target.parent]
    index_sync = order[harness.output / "simple"]  # the project folder is new
    assert not wheel_sync[1] and not meta_sync[1] and not index_sync[1]
    assert folder_sync[1]  # synced after linking, before the answer
    assert folder_sync[0] > max(wheel_sync[0], meta_sync[0], index_sync[0])


def test_folder_sync_failure_withdraws_the_file(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piwheels.master import file_receiver

    wheel = make_wheel(tmp_path / "src")
    folder = harness.output / "simple" / "foo"
    plain = file_receiver._fsync

    def failing(path: Path) -> None:
        if path == folder:
            raise OSError(errno.EIO, "Input/output error")
        plain(path)

    monkeypatch.setattr(file_receiver, "_fsync", failing)
    token, _ = harness.expect(wheel)
    assert harness.send(wheel, token).ok
    refused(harness.request("PUBLISH", {"transfer": token}), "disk", "Input/output error")
    assert harness.published() == [] and harness.staged() == []


def test_name_spelling_goes_to_the_canonical_folder(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src", name="Foo_Bar", version="2.0")
    token, _ = harness.expect(wheel, package="foo.bar", version="2.0")
    assert harness.send(wheel, token).ok
    published = harness.request("PUBLISH", {"transfer": token})
    assert published.msg == "PUBLISHED"
    assert (harness.output / "simple" / "foo-bar" / wheel.name).is_file()


def test_cancel_removes_everything(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src")
    token, _ = harness.expect(wheel)
    assert harness.staged() != []
    assert harness.request("CANCEL", {"transfer": token}).msg == "CANCELLED"
    assert harness.staged() == []
    refused(harness.request("PUBLISH", {"transfer": token}), "unknown", "cancelled")


def test_incomplete_transfer_is_not_final(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src")
    token, _ = harness.expect(wheel)
    reply = harness.request("VERIFY", {"transfer": token})
    refused(reply, "incomplete", "have not arrived")
    assert reply.data["final"] is False
    # It can still be sent, then verified.
    assert harness.send(wheel, token).ok
    assert harness.request("VERIFY", {"transfer": token}).msg == "VERIFIED"


# -- every bad file --------------------------------------------------------------------


def assert_nothing_left(harness: Harness) -> None:
    assert harness.published() == []
    assert harness.staged() == []


@pytest.mark.parametrize(
    ("claims", "code", "words"),
    [
        ({"filename": "../foo-1.0-py3-none-any.whl"}, "invalid_name", "path parts"),
        ({"filename": "sub/foo-1.0-py3-none-any.whl"}, "invalid_name", "path parts"),
        ({"filename": "foo-1.0.tar.gz"}, "invalid_name", "does not end in .whl"),
        ({"filename": "foo.whl"}, "invalid_name", "invalid wheel filename"),
        ({"package": "other"}, "wrong_package", "not 'other'"),
        ({"version": "2.0"}, "wrong_version", "not '2.0'"),
        ({"size": 64 * 1024 + 1}, "too_large", "over the limit"),
    ],
    ids=["dotdot", "subdir", "not-a-wheel-name", "bad-wheel-name", "package", "version", "size"],
)
def test_bad_claims_are_refused_at_expect(
    harness: Harness, tmp_path: Path, claims: dict[str, Any], code: str, words: str
) -> None:
    wheel = make_wheel(tmp_path / "src")
    token, reply = harness.expect(wheel, **claims)
    refused(reply, code, words)
    assert reply.data["final"] is True
    assert_nothing_left(harness)
    # The sender is told too.
    result = harness.send(wheel, token)
    assert not result.ok and "unknown transfer" in (result.reason or "")


def test_wrong_abi_is_refused(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src", tag="cp310-cp310-linux_x86_64")
    _, reply = harness.expect(wheel, abi="cp311")
    refused(reply, "wrong_abi", "does not serve ABI cp311")
    assert_nothing_left(harness)
    wheel = make_wheel(tmp_path / "src2", tag="cp311-cp311-linux_x86_64")
    _, reply = harness.expect(wheel, abi="cp311", platform="linux_armv7l")
    refused(reply, "wrong_abi", "cp311 on linux_armv7l")
    assert_nothing_left(harness)


def test_received_bytes_over_the_limit_are_refused(harness: Harness, tmp_path: Path) -> None:
    # The builder claims a small file but the real one is far larger than the limit.
    big = tmp_path / "big" / "foo-1.0-py3-none-any.whl"
    big.parent.mkdir()
    big.write_bytes(os.urandom(200 * 1024))
    token, reply = harness.expect(big, size=1000)
    assert reply.msg == "EXPECTING"
    # The receiver only ever asks for the claimed 1000 bytes; anything more is refused.
    result = harness.send(big, token)
    assert result.ok and result.size == 1000
    refused(harness.request("VERIFY", {"transfer": token}), "hash_mismatch", "claimed")
    assert_nothing_left(harness)


def test_not_a_zip_is_refused(harness: Harness, tmp_path: Path) -> None:
    junk = tmp_path / "src" / "foo-1.0-py3-none-any.whl"
    junk.parent.mkdir()
    junk.write_bytes(b"this is not a zip archive at all" * 10)
    token, _ = harness.expect(junk)
    assert harness.send(junk, token).ok
    refused(harness.request("VERIFY", {"transfer": token}), "invalid_wheel", "not a valid zip")
    assert_nothing_left(harness)


def test_bad_record_is_refused(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src", corrupt_record=True)
    token, _ = harness.expect(wheel)
    assert harness.send(wheel, token).ok
    refused(harness.request("PUBLISH", {"transfer": token}), "invalid_wheel", "RECORD hash")
    assert_nothing_left(harness)


def test_hash_differing_from_the_claim_is_refused(harness: Harness, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src")
    token, _ = harness.expect(wheel, sha256="0" * 64)
    result = harness.send(wheel, token)
    assert result.ok  # the bytes arrived; the claim is what is wrong
    reply = harness.request("PUBLISH", {"transfer": token})
    refused(reply, "hash_mismatch", "the builder claimed " + "0" * 64)
    assert reply.data["final"] is True
    assert_nothing_left(harness)


def test_different_content_never_overwrites(harness: Harness, tmp_path: Path) -> None:
    first = make_wheel(tmp_path / "one")
    token, _ = harness.expect(first)
    assert harness.send(first, token).ok
    assert harness.request("PUBLISH", {"transfer": token}).msg == "PUBLISHED"
    target = harness.output / "simple" / "foo" / first.name
    before = target.read_bytes(), Path(f"{target}.metadata").read_bytes()

    second = make_wheel(tmp_path / "two", body="VALUE = 2\n", requires=())
    assert second.name == first.name and sha(second) != sha(first)
    token, _ = harness.expect(second)
    assert harness.send(second, token).ok
    assert harness.request("VERIFY", {"transfer": token}).msg == "VERIFIED"
    reply = harness.request("PUBLISH", {"transfer": token})
    refused(reply, "conflict", "already published with different content")
    assert (target.read_bytes(), Path(f"{target}.metadata").read_bytes()) == before
    assert harness.staged() == []


def test_unknown_transfer_is_refused(harness: Harness) -> None:
    for msg in ("VERIFY", "PUBLISH"):
        refused(harness.request(msg, {"transfer": "nosuch"}), "unknown", "unknown transfer")
    assert harness.request("CANCEL", {"transfer": "nosuch"}).msg == "CANCELLED"


def test_idle_transfers_expire(tmp_path: Path) -> None:
    from datetime import timedelta

    context = Context()
    output = tmp_path / "www"
    receiver = FileReceiver(context, make_env(output, builder_timeout=timedelta(seconds=0.2)))
    dispatcher = ScriptedPeer(
        context,
        DEALER,
        reversed(protocols.transfers),
        connect=receiver.transfers_address,
        drive=(receiver,),
    )
    try:
        harness = Harness(context, receiver, dispatcher, output)
        token, reply = harness.expect(make_wheel(tmp_path / "src"))
        assert reply.msg == "EXPECTING" and harness.staged() != []
        wait_for(lambda: harness.staged() == [], drive=(receiver,), timeout=10)
        refused(harness.request("VERIFY", {"transfer": token}), "unknown", "expired")
    finally:
        dispatcher.close()
        receiver.close()
        context.close()


def test_staging_left_by_a_previous_run_is_cleared(tmp_path: Path) -> None:
    output = tmp_path / "www"
    leftover = output / STAGING_DIR / "oldtoken" / "foo-1.0-py3-none-any.whl"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    context = Context()
    receiver = FileReceiver(context, make_env(output))
    try:
        assert not leftover.exists() and (output / STAGING_DIR).is_dir()
    finally:
        receiver.close()
        context.close()


def test_malformed_requests_do_not_stop_the_task(harness: Harness) -> None:
    harness.dispatcher.socket.send_raw([b"\x00not cbor"])
    harness.dispatcher.socket.send_raw([b""])
    for _ in range(5):
        harness.receiver.poll(0.05)
    assert harness.request("CANCEL", {"transfer": "x"}).msg == "CANCELLED"


def test_declares_its_endpoints() -> None:
    assert {e.name for e in FileReceiver.binds} == {"file", "transfers"}
    assert issubclass(FileReceiver, Task)


# -- a burst of PUBLISH requests (published together, one round of fsyncs) ----------


def test_burst_of_publishes_each_answered_on_its_own(harness: Harness, tmp_path: Path) -> None:
    """Good, conflicting, repeated and lying files in one burst: each gets its own answer."""
    good = [make_wheel(tmp_path / f"src{i}", version=f"1.{i}") for i in range(3)]
    first = make_wheel(tmp_path / "old", version="2.0")
    clash = make_wheel(tmp_path / "new", version="2.0", body="VALUE = 2\n")
    liar = make_wheel(tmp_path / "liar", version="3.0")
    # 2.0 is already published with other content.
    token, _ = harness.expect(first, version="2.0")
    assert harness.send(first, token).ok
    assert harness.request("PUBLISH", {"transfer": token}).msg == "PUBLISHED"
    tokens = {}
    for path, version in [(g, f"1.{i}") for i, g in enumerate(good)] + [(clash, "2.0")]:
        tokens[path], reply = harness.expect(path, version=version)
        assert reply.msg == "EXPECTING"
        assert harness.send(path, tokens[path]).ok
    tokens[liar], _ = harness.expect(liar, version="3.0", sha256="0" * 64)
    assert harness.send(liar, tokens[liar]).ok
    order = [good[0], clash, good[1], liar, good[2]]
    batches: list[int] = []
    plain = harness.receiver._fsync_all

    def spy(paths: list[Path]) -> dict[Path, OSError]:
        batches.append(len(paths))
        return plain(paths)

    harness.receiver._fsync_all = spy  # type: ignore[method-assign]
    sock = harness.dispatcher.socket
    for path in order:
        sock.send_msg("PUBLISH", {"transfer": tokens[path]})
    sock.send_msg("PUBLISH", {"transfer": tokens[good[0]]})  # asked twice: spent the 2nd time
    sock.send_msg("CANCEL", {"transfer": tokens[good[1]]})  # after its PUBLISH: too late
    replies = {}
    spent = []
    for _ in range(len(order) + 2):
        got = harness.dispatcher.recv()
        if got.data["transfer"] in replies:
            spent.append(got)
        else:
            replies[got.data["transfer"]] = got
    for path in good:
        reply = replies[tokens[path]]
        assert reply.msg == "PUBLISHED", reply
        target = harness.output / "simple" / "foo" / path.name
        assert target.read_bytes() == path.read_bytes()
        metadata = Path(f"{target}.metadata").read_bytes()
        assert hashlib.sha256(metadata).hexdigest() == reply.data["file"]["metadata_sha256"]
    refused(replies[tokens[clash]], "conflict", "never replaced")
    refused(replies[tokens[liar]], "hash_mismatch", "claimed")
    assert (harness.output / "simple" / "foo" / first.name).read_bytes() == first.read_bytes()
    assert not (harness.output / "simple" / "foo" / liar.name).exists()
    assert [s.msg for s in spent] == ["REFUSED", "CANCELLED"]
    refused(spent[0], "unknown", "is published")
    # The burst shared its fsyncs: 4 files (3 good + the clash) and their .metadata at once.
    assert max(batches) == 8
    # Nothing staged or half-written is left behind.
    assert harness.staged() == []
    leftovers = [p.name for p in harness.published() if ".tmp-" in p.name]
    assert leftovers == []


# -- flow control ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "window"), [(64 << 10, 10), (256 << 10, 10), (512 << 10, 6), (1 << 20, 3)]
)
def test_bytes_in_flight_per_transfer_are_bounded(tmp_path: Path, chunk: int, window: int) -> None:
    """The receiver asks for at most ~3 MiB per transfer whatever the chunk size (its memory
    per transfer), and never for fewer than three chunks (the link stays busy)."""
    context = Context()
    receiver = FileReceiver(context, make_env(tmp_path / "www", file_chunk_size=chunk))
    try:
        assert receiver.table.window == window
        transfer = receiver.table.expect(new_token(), "x.bin", 64 << 20)
        fetches = transfer.hello((b"peer",))
        assert len(fetches) == window
        assert sum(f.data["length"] for f in fetches) <= max(3 << 20, 10 * chunk)
    finally:
        receiver.close()
        context.close()
