"""The file receiver: pulls wheels from builders and importers, checks them, publishes them.

Two sockets:

* ``file`` (ROUTER, external; a CurveZMQ server when the master has keys):
  senders speak the ``files`` protocol (see :mod:`piwheels.filetransfer`).
* ``transfers`` (ROUTER, internal): the build dispatcher and the admin gateway
  speak the ``transfers`` protocol: EXPECT a file under a token, then VERIFY
  and PUBLISH it, or CANCEL it.

Nothing a sender says about a file is trusted.  EXPECT refuses a filename
with path parts or that is not a wheel of the package, version and ABI
expected, and a claimed size over ``[master] max_file_size``; the transfer
itself refuses bytes past the claimed size.  The transfer computes size and
SHA-256 from every byte as it is written; VERIFY compares them with the
claim and checks the archive (:func:`piwheels.wheels.verify_wheel`, given
that digest, so the file is not hashed whole a second time).  PUBLISH links the file into
``simple/<canonical name>/`` (a hard link, which never replaces an existing
file, so a published filename never changes content) and writes its
``.metadata`` beside it.  A refused transfer leaves nothing behind.

Durability: PUBLISHED is answered only after the wheel's and the
``.metadata``'s bytes were fsynced before they got their names, and the
folders holding the new names were fsynced after; a burst of PUBLISH requests
shares each round of fsyncs (run side by side).  So a file the master
acknowledges as published, and then records, is there after a crash.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import protocols
from ..errors import InvalidName, InvalidWheel, ProtocolError, TransportError
from ..filetransfer import MAX_CHUNK, TransferRefused, TransferTable, sha256_of
from ..tasks import Endpoint, Task
from ..transport import ROUTER, Context, describe_peer
from ..wheels import (
    WheelInfo,
    abis_served,
    canonicalize,
    normalize_version,
    parse_wheel_filename,
    verify_wheel,
)
from .env import MasterEnv

__all__ = ["STAGING_DIR", "FileReceiver"]

#: Folder inside the output folder where files arrive (same filesystem: atomic rename).
STAGING_DIR = ".transfers"
#: How long a failed or published transfer is remembered, to answer late requests clearly.
TOMBSTONE_SECONDS = 600.0
#: Requests read from the transfers socket in one go (their PUBLISHes share the fsyncs).
BURST = 64


@dataclass
class _Expected:
    """What the dispatcher (or admin gateway) said the file must be."""

    token: str
    filename: str
    package: str
    version: str
    abi: str | None
    platform: str | None
    size: int
    sha256: str
    info: WheelInfo | None = None  # set once verified


#: What one transfer may have asked for and not yet received, at most (about): the
#: master's memory per transfer, which ZeroMQ's queues may hold at once.
IN_FLIGHT = 3 << 20


def default_window(chunk_size: int) -> int:
    """FETCHes kept in flight per transfer for chunks of *chunk_size* bytes.

    Ten for chunks of 256 KiB or less (as always); fewer for bigger chunks, so that a
    transfer never has more than about :data:`IN_FLIGHT` bytes on its way: three in
    1 MiB chunks, which costs less CPU than ten (bench_filetransfer: the receiver 1.40
    instead of 1.61 ms per MB) and keeps the link as busy.
    """
    return max(3, min(10, IN_FLIGHT // chunk_size))


class FileReceiver(Task):
    """Receives, checks and publishes wheels; see the module docstring."""

    role = "file_receiver"
    # Transfers in flight finish even while the master is paused.
    pausable = False
    # Its own process in the master: it shares nothing with the other tasks but sockets,
    # and its checks of every chunk and wheel need not wait for their interpreter lock.
    process = True
    process_name = "piw-file-recv"
    binds = (
        Endpoint("file", "ROUTER", "files", "builders and piw-import send files"),
        Endpoint("transfers", "ROUTER", "transfers", "dispatcher and admin gateway requests"),
    )
    connects = ()

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        master = env.settings.master
        chunk_size = min(master.file_chunk_size, MAX_CHUNK)
        if window is None:
            window = default_window(chunk_size)
        self.output_path = Path(env.output_path)
        self.simple_path = self.output_path / "simple"
        self.table = TransferTable(
            self.output_path / STAGING_DIR,
            max_size=master.max_file_size,
            chunk_size=chunk_size,
            window=window,
        )
        self.table.clear_staging()
        if not self.simple_path.is_dir():
            self.simple_path.mkdir(parents=True, exist_ok=True)
            _fsync(self.output_path)  # the index folder itself survives a crash too
        self.idle_limit = master.builder_timeout.total_seconds()
        self.expected: dict[str, _Expected] = {}
        # token -> (code, reason, when): answers for transfers that are gone.
        self.tombstones: dict[str, tuple[str, str, float]] = {}

        self.file = self.socket(
            ROUTER, protocols.files, name="file", max_msg_size=MAX_CHUNK + 4096, hwm=1000
        )
        if env.server_keys is not None:
            self.file.curve_server(env.server_keys)
        self.file_address = self.file.bind(env.addresses["file"])
        self.register(self.file, self.handle_file)

        # fsync waits for the disk, not the CPU: a burst's files are synced side by side.
        self.syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="piw-fsync")
        self.requests = self.socket(ROUTER, protocols.transfers, name="transfers")
        self.transfers_address = self.requests.bind(env.addresses["transfers"])
        self.register(self.requests)
        self.every(min(30.0, max(1.0, self.idle_limit / 4)), self.expire)

    # -- the file socket -------------------------------------------------------------

    def handle_file(self) -> None:
        # Drain a burst per wake-up: a transfer is a stream of chunks, and one
        # poll round per chunk costs more than the chunk itself on a fast link.
        for _ in range(64):
            self._file_message()
            if not self.file.poll(0):
                break

    def _file_message(self) -> None:
        try:
            # copy=False: a chunk's bytes are written and hashed from the received frame.
            received = self.file.recv_msg(copy=False)
        except ProtocolError as exc:
            self.log.warning("file: %s", exc)
            return
        for reply in self.table.handle(received):
            try:
                self.file.send_msg(reply.msg, reply.data, peer=reply.peer)
            except TransportError as exc:
                # The sender went away; it will say HELLO again if it comes back.
                self.log.info("file: cannot reply to %s: %s", describe_peer(reply.peer), exc)

    # -- the transfers socket --------------------------------------------------------

    def _reply(self, peer: tuple[bytes, ...], msg: str, data: dict[str, Any]) -> None:
        try:
            self.requests.send_msg(msg, data, peer=peer)
        except TransportError as exc:
            self.log.warning("transfers: cannot reply %s: %s", msg, exc)

    def _refuse(
        self, peer: tuple[bytes, ...], token: str, code: str, reason: str, *, final: bool = True
    ) -> None:
        reason = reason[: protocols.REASON_LIMIT]
        if final:
            self._forget(token, code, reason)
        self.log.warning("transfer %s refused (%s): %s", token, code, reason)
        self._reply(
            peer, "REFUSED", {"transfer": token, "code": code, "reason": reason, "final": final}
        )

    def _forget(self, token: str, code: str, reason: str) -> None:
        self.table.discard(token)
        self.expected.pop(token, None)
        self.tombstones[token] = (code, reason, time.monotonic())

    def do_EXPECT(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        token = data["transfer"]
        exp = _Expected(
            token=token,
            filename=data["filename"],
            package=data["package"],
            version=data["version"],
            abi=data["abi"],
            platform=data["platform"],
            size=data["size"],
            sha256=data["sha256"],
        )
        known = self.expected.get(token)
        if known is not None:
            same = (known.filename, known.size, known.sha256) == (
                exp.filename,
                exp.size,
                exp.sha256,
            )
            if same:
                # The dispatcher asks again (e.g. to resend after an incomplete transfer).
                self._reply(peer, "EXPECTING", {"transfer": token})
            else:
                self._reply(
                    peer,
                    "REFUSED",
                    {
                        "transfer": token,
                        "code": "invalid",
                        "reason": f"transfer {token} is already expecting another file",
                        "final": False,
                    },
                )
            return
        try:
            self._check_name(exp)
            self.table.expect(token, exp.filename, exp.size)
        except TransferRefused as exc:
            self._refuse(peer, token, exc.code, str(exc))
            return
        self.tombstones.pop(token, None)
        self.expected[token] = exp
        self.log.info(
            "expecting %s (%d bytes) for %s %s as %s",
            exp.filename,
            exp.size,
            exp.package,
            exp.version,
            token,
        )
        self._reply(peer, "EXPECTING", {"transfer": token})

    def _check_name(self, exp: _Expected) -> None:
        try:
            fn = parse_wheel_filename(exp.filename)
        except InvalidWheel as exc:
            raise TransferRefused("invalid_name", str(exc))
        try:
            want = canonicalize(exp.package)
        except InvalidName as exc:
            raise TransferRefused("invalid", str(exc))
        if fn.name != want:
            raise TransferRefused(
                "wrong_package", f"{exp.filename} is a wheel of {fn.name!r}, not {want!r}"
            )
        if normalize_version(fn.version) != normalize_version(exp.version):
            raise TransferRefused(
                "wrong_version",
                f"{exp.filename} is a wheel of version {fn.version!r}, not {exp.version!r}",
            )
        try:
            verify_abi(exp.filename, exp.abi, exp.platform)
        except InvalidWheel as exc:
            raise TransferRefused("wrong_abi", str(exc))

    def do_VERIFY(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        token = data["transfer"]
        exp = self._verified(token, peer)
        if exp is not None and exp.info is not None:
            self._reply(peer, "VERIFIED", {"transfer": token, "file": self._facts(exp)})

    def handle_transfers(self) -> None:
        """Read a burst of requests; the PUBLISH ones are published together.

        Publishing waits for the disk (each file must be durable before it is
        visible); a burst shares one round of fsyncs run side by side.  Other
        requests are handled in order, after the PUBLISH ones before them.
        """
        publish: list[tuple[tuple[bytes, ...], str]] = []
        for _ in range(BURST):
            try:
                received = self.requests.recv_msg()
            except ProtocolError as exc:
                self.log.warning("%s", exc)
                self.on_bad_message(self.requests, exc)
            else:
                if received.msg == "PUBLISH":
                    publish.append((received.peer or (), received.data["transfer"]))
                else:
                    if publish:
                        self._publish(publish)
                        publish = []
                    self.handle_message(self.requests, received)
            if not self.requests.poll(0):
                break
        if publish:
            self._publish(publish)

    def do_PUBLISH(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        self._publish([(peer, data["transfer"])])

    def _publish(self, requests: list[tuple[tuple[bytes, ...], str]]) -> None:
        """Verify, make durable, link each file into the index, make the links durable, answer.

        Three rounds for the whole burst, whatever its size: (1) verify each file,
        create its project folder and stage its ``.metadata``; (2) fsync every wheel,
        every staged ``.metadata`` and, when a project folder was created, the index
        folder, side by side; (3) link each file under its published name, then fsync
        every project folder touched.  Only then is PUBLISHED sent: a file the master
        acknowledges (and then records) is on disk under its name and survives a crash.
        """
        ready: list[tuple[tuple[bytes, ...], _Expected, Path, Path, bool]] = []
        seen: set[str] = set()
        repeats = []
        for peer, token in requests:
            if token in seen:
                # Asked twice in one burst: answered as if asked after the first.
                repeats.append((peer, token))
                continue
            seen.add(token)
            exp = self._verified(token, peer)
            if exp is None or exp.info is None:
                continue
            transfer = self.table.get(token)
            assert transfer is not None
            folder = self.simple_path / exp.info.name
            try:
                created = _mkdir(folder)
                os.chmod(transfer.path, 0o644)
                tmp = self._stage_metadata(folder, token, exp.filename, exp.info.metadata)
            except OSError as exc:
                self._refuse(peer, token, "disk", f"cannot publish {exp.filename}: {exc}")
                continue
            ready.append((peer, exp, transfer.path, tmp, created))
        # Durable before visible: every wheel and .metadata of the burst at once, and the
        # index folder's entries for the project folders made just now.
        new_folders = any(created for *_, created in ready)
        failed = self._fsync_all(
            [p for _, _, path, tmp, _ in ready for p in (path, tmp)]
            + ([self.simple_path] if new_folders else [])
        )
        linked: list[tuple[tuple[bytes, ...], _Expected, Path, bool]] = []
        for peer, exp, path, tmp, created in ready:
            problem = failed.get(path) or failed.get(tmp)
            if problem is None and created:
                problem = failed.get(self.simple_path)
            if problem is None:
                existed = self._link(peer, exp, path, tmp)
                if existed is not None:
                    linked.append((peer, exp, tmp.parent, existed))
                continue
            _unlink(tmp)
            self._refuse(peer, exp.token, "disk", f"cannot publish {exp.filename}: {problem}")
        # The new names themselves: one fsync per project folder of the burst.
        failed = self._fsync_all(sorted({folder for _, _, folder, _ in linked}))
        for peer, exp, folder, existed in linked:
            problem = failed.get(folder)
            if problem is not None:
                if not existed:
                    # Not known to be durable: withdrawn, so nothing unrecorded stays.
                    _unlink(folder / exp.filename)
                    _unlink(folder / f"{exp.filename}.metadata")
                self._refuse(peer, exp.token, "disk", f"cannot publish {exp.filename}: {problem}")
                continue
            self._published(peer, exp, existed)
        if repeats:
            self._publish(repeats)

    def _link(self, peer: tuple[bytes, ...], exp: _Expected, path: Path, tmp: Path) -> bool | None:
        """Put a durable file under its published name; whether it was there already.

        None after refusing it (a different file of that name is published, or the disk).
        """
        info = exp.info
        assert info is not None
        token = exp.token
        folder = tmp.parent
        try:
            existed = False
            try:
                # link() never replaces an existing name: the check and the
                # publication are one atomic step.
                os.link(path, folder / exp.filename)
            except FileExistsError:
                size, digest = sha256_of(folder / exp.filename)
                if digest != info.sha256 or size != info.size:
                    _unlink(tmp)
                    self._refuse(
                        peer,
                        token,
                        "conflict",
                        f"{exp.filename} is already published with different content "
                        f"(sha256 {digest}); a published file is never replaced",
                    )
                    return None
                existed = True
            os.replace(tmp, folder / f"{exp.filename}.metadata")
        except OSError as exc:
            _unlink(tmp)
            self._refuse(peer, token, "disk", f"cannot publish {exp.filename}: {exc}")
            return None
        # The staging name goes (the published link stays); its folder is kept for reuse.
        self.table.discard(token)
        return existed

    def _published(self, peer: tuple[bytes, ...], exp: _Expected, existed: bool) -> None:
        info = exp.info
        assert info is not None
        token = exp.token
        facts = self._facts(exp)
        self.expected.pop(token, None)
        self.tombstones[token] = ("unknown", f"transfer {token} is published", time.monotonic())
        self.log.info(
            "published %s (%d bytes)%s", exp.filename, info.size, " again" if existed else ""
        )
        self._reply(peer, "PUBLISHED", {"transfer": token, "file": facts, "existed": existed})

    def _fsync_all(self, paths: list[Path]) -> dict[Path, OSError]:
        """fsync every path, side by side (the journal commits them together)."""
        failed: dict[Path, OSError] = {}
        if len(paths) <= 1:
            for path in paths:
                try:
                    _fsync(path)
                except OSError as exc:
                    failed[path] = exc
            return failed
        # The others on the pool, the first here: this thread would only wait meanwhile,
        # and each handoff to a pool thread costs CPU of its own.
        futures = {path: self.syncer.submit(_fsync, path) for path in paths[1:]}
        try:
            _fsync(paths[0])
        except OSError as exc:
            failed[paths[0]] = exc
        for path, future in futures.items():
            err = future.exception()
            if err is not None:
                if not isinstance(err, OSError):
                    raise err
                failed[path] = err
        return failed

    def do_CANCEL(self, data: dict[str, Any], peer: tuple[bytes, ...]) -> None:
        token = data["transfer"]
        if token in self.expected or self.table.get(token) is not None:
            self._forget(token, "unknown", f"transfer {token} was cancelled")
            self.log.info("transfer %s cancelled", token)
        self._reply(peer, "CANCELLED", {"transfer": token})

    # -- checks ------------------------------------------------------------------------

    def _verified(self, token: str, peer: tuple[bytes, ...]) -> _Expected | None:
        """The transfer, verified now if it was not yet; None after refusing it."""
        exp = self.expected.get(token)
        transfer = self.table.get(token)
        if exp is None or transfer is None:
            code, reason, _ = self.tombstones.get(
                token, ("unknown", f"unknown transfer {token}", 0.0)
            )
            self._refuse(peer, token, code, reason)
            return None
        if exp.info is not None:
            return exp
        if transfer.state == "failed":
            self._refuse(peer, token, transfer.code or "invalid", transfer.reason or "failed")
            return None
        if transfer.state != "complete":
            missing = transfer.size - transfer.received
            self._refuse(
                peer,
                token,
                "incomplete",
                f"{exp.filename}: {missing} of {transfer.size} bytes have not arrived",
                final=False,
            )
            return None
        if transfer.sha256 != exp.sha256:
            self._refuse(
                peer,
                token,
                "hash_mismatch",
                f"{exp.filename}: sha256 of the received file is {transfer.sha256}, "
                f"the builder claimed {exp.sha256}",
            )
            return None
        try:
            # The ABI check of EXPECT (cached) on the same file name, then the archive.
            verify_abi(transfer.path.name, exp.abi, exp.platform)
            # The size and SHA-256 computed from every byte as it was received (and
            # compared with the builder's claim above) are the file's: not hashed again.
            info = verify_wheel(
                transfer.path,
                package=exp.package,
                version=exp.version,
                digest=(transfer.size, transfer.sha256),
            )
        except (InvalidWheel, InvalidName) as exc:
            self._refuse(peer, token, "invalid_wheel", str(exc))
            return None
        exp.info = info
        return exp

    def _facts(self, exp: _Expected) -> dict[str, Any]:
        info = exp.info
        assert info is not None
        return {
            "filename": info.filename,
            "path": f"simple/{info.name}/{info.filename}",
            "package": info.name,
            "version": info.version,
            "size": info.size,
            "sha256": info.sha256,
            "metadata_sha256": info.metadata_sha256,
            "requires_python": info.requires_python,
            "requires_dist": list(info.requires_dist),
            "tags": sorted(info.tags),
            "python_tag": info.python_tag,
            "abi_tag": info.abi_tag,
            "platform_tag": info.platform_tag,
            "modules": list(info.modules),
        }

    def _stage_metadata(self, folder: Path, token: str, filename: str, metadata: bytes) -> Path:
        """Write a wheel's .metadata under a temporary name (fsynced and renamed later)."""
        tmp = folder / f".{filename}.metadata.tmp-{token}"
        with open(tmp, "wb") as fh:
            fh.write(metadata)
        os.chmod(tmp, 0o644)
        return tmp

    # -- housekeeping ------------------------------------------------------------------

    def expire(self) -> None:
        """Drop transfers idle for longer than the builder timeout, and old tombstones."""
        for token in self.table.expired(self.idle_limit):
            self.log.warning("transfer %s expired after %g s idle", token, self.idle_limit)
            self._forget(token, "unknown", f"transfer {token} expired")
        cutoff = time.monotonic() - TOMBSTONE_SECONDS
        for token in [t for t, (_, _, when) in self.tombstones.items() if when < cutoff]:
            del self.tombstones[token]

    def close(self) -> None:
        for token in list(self.table.transfers):
            self.table.discard(token)
        self.syncer.shutdown(wait=True)
        super().close()


def verify_abi(filename: str, abi: str | None, platform: str | None) -> None:
    """Raise :class:`InvalidWheel` unless the wheel *filename* serves *abi* (on *platform*)."""
    if abi is None:
        return
    fn = parse_wheel_filename(filename)
    build: str | tuple[str, str] = abi if platform is None else (abi, platform)
    try:
        served = _serves(fn.tags, build)
    except InvalidName as exc:
        raise InvalidWheel(f"{filename}: {exc}")
    if not served:
        shown = abi if platform is None else f"{abi} on {platform}"
        raise InvalidWheel(f"{filename} does not serve ABI {shown}")


@functools.lru_cache(maxsize=4096)
def _serves(tags: frozenset[Any], build: str | tuple[str, str]) -> bool:
    # The tag lists of a build ABI take about a millisecond to make, and a farm has a few
    # ABIs and platforms: remembered per (wheel tags, build).
    return bool(abis_served(tags, [build]))


def _mkdir(folder: Path) -> bool:
    """Make a project folder; whether it was made now."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        return False
    except FileNotFoundError:
        # The index folder itself went away (an operator's doing): made again.
        folder.mkdir(parents=True, exist_ok=True)
    return True


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync(path: Path) -> None:
    """Make *path*'s contents (a file's bytes, a folder's names) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
