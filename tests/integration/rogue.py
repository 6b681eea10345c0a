"""A builder played by the test: the builder protocol spoken directly on a CurveZMQ DEALER.

Used to send what a real builder never would (bad files, malformed messages)
and to vanish at exact moments (mid-transfer).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from piwheels import protocols
from piwheels.builder.daemon import host_stats
from piwheels.errors import TransportTimeout
from piwheels.filetransfer import FileSender, SendResult
from piwheels.transport import DEALER, Context, Received, load_keys

from .conftest import Farm

ROGUE_ABI = "cp311"
ROGUE_PLATFORM = "linux_armv7l"
ROGUE_TARGET = f"{ROGUE_ABI}-{ROGUE_PLATFORM}"
ROGUE_TAG = f"{ROGUE_ABI}-{ROGUE_ABI}-{ROGUE_PLATFORM}"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_bytes(
    name: str,
    version: str = "1.0",
    tag: str = ROGUE_TAG,
    *,
    payload: int = 0,
    tamper: bool = False,
) -> tuple[str, bytes]:
    """(filename, bytes) of a wheel; *payload* random bytes stored uncompressed in it;
    *tamper* changes a file after RECORD was written (RECORD hash no longer matches)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    members = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nA rogue test package.\n"
        ).encode(),
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: piwheels-tests\nRoot-Is-Purelib: false\nTag: {tag}\n"
        ).encode(),
    }
    if payload:
        members[f"{dist}/blob.bin"] = os.urandom(payload)
    record = "".join(f"{p},{record_hash(d)},{len(d)}\n" for p, d in members.items())
    record += f"{info}/RECORD,,\n"
    if tamper:
        members[f"{dist}/__init__.py"] = b"VERSION = 'tampered'\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path, data in members.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", record)
    return f"{dist}-{version}-{tag}.whl", buf.getvalue()


def file_record(filename: str, data: bytes, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "filename": filename,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "requires_python": None,
        "requires_dist": [],
        "metadata_sha256": None,
        "apt_dependencies": [],
        "missing_libraries": [],
        "import_ok": True,
        "import_error": None,
    }
    rec.update(over)
    return rec


class Rogue:
    """One builder connection driven by the test, with an admitted (or given) key."""

    def __init__(self, farm: Farm, label: str, *, secret: Path | None = None) -> None:
        self.farm = farm
        self.label = label
        self.context = Context()
        self.keys = load_keys(secret or farm.admit(label))
        self.server_public = load_keys(farm.keys.server_public).public
        self.sock = self.context.socket(DEALER, reversed(protocols.builder))
        self.sock.curve_client(self.keys, self.server_public)
        self.sock.connect(farm.settings.master.builder_endpoint)
        self.folder = farm.root / "rogue" / label
        self.folder.mkdir(parents=True, exist_ok=True)

    def hello_data(self) -> dict[str, Any]:
        return {
            "protocol": protocols.PROTOCOL_VERSION,
            "label": self.label,
            "python_version": "3.11.2",
            "abi": ROGUE_ABI,
            "platform": ROGUE_PLATFORM,
            "os_name": "Debian GNU/Linux",
            "os_version": "12",
            "machine": "armv7l",
            "cpu_count": 4,
            "board": None,
            "build_timeout": timedelta(minutes=5),
            "sandbox": "none",
            "stats": host_stats(self.folder),
        }

    def request(self, msg: str, data: Any = None, timeout: float = 30.0) -> Received:
        self.sock.send_msg(msg, data)
        return self.sock.recv_msg(timeout=timeout)

    def raw(self, payload: bytes, timeout: float = 10.0) -> Received:
        self.sock.send_raw([payload])
        return self.sock.recv_msg(timeout=timeout)

    def silent(self, timeout: float) -> bool:
        """True if nothing arrives within *timeout* seconds."""
        try:
            got = self.sock.recv_msg(timeout=timeout)
        except TransportTimeout:
            return True
        raise AssertionError(f"unexpected {got.msg} {got.data!r}")

    def hello(self) -> dict[str, Any]:
        reply = self.request("HELLO", self.hello_data())
        assert reply.msg == "ACK", reply
        return dict(reply.data)

    def idle(self) -> Received:
        return self.request("IDLE", {"stats": host_stats(self.folder)})

    def take_build(self, package: str, timeout: float = 60.0) -> dict[str, Any]:
        """Ask until the master hands out a build of *package* (SLEEP in between)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.idle()
            if reply.msg == "BUILD":
                assert reply.data["package"] == package, reply.data
                return dict(reply.data)
            assert reply.msg == "SLEEP", reply
            time.sleep(0.2)
        raise AssertionError(f"no build of {package} handed out within {timeout}s")

    def built(self, build: dict[str, Any], files: list[dict[str, Any]]) -> Received:
        return self.request(
            "BUILT",
            {
                "build_id": build["build_id"],
                "status": True,
                "duration": timedelta(seconds=1),
                "failure_class": None,
                "log": f"rogue build of {build['package']}\n",
                "files": files,
                "environment": {"builder": self.label},
            },
        )

    def send_file(self, token: str, data: bytes, *, max_chunks: int | None = None) -> SendResult:
        path = self.folder / f"upload-{token[:8]}"
        path.write_bytes(data)
        return FileSender(
            self.context,
            self.farm.settings.master.file_endpoint,
            path,
            token,
            keys=self.keys,
            server_public=self.server_public,
            give_up=20,
            max_chunks=max_chunks,
        ).run()

    def deliver(self, build: dict[str, Any], filename: str, data: bytes, **over: Any) -> Received:
        """BUILT with one file, then answer every SEND; returns the final reply (DONE or DIE)."""
        reply = self.built(build, [file_record(filename, data, **over)])
        while reply.msg == "SEND":
            self.send_file(reply.data["transfer"], data)
            reply = self.request("SENT", {"build_id": build["build_id"], "filename": filename})
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.close()
