"""The build dispatcher's (and admin gateway's) client of the file receiver.

A small wrapper over the internal ``transfers`` protocol: tell the receiver
what to expect under a fresh token, then ask it to verify and publish what
arrived.  :meth:`TransferClient.request` sends without waiting (the build
dispatcher polls :attr:`TransferClient.socket` and routes the answers by
token, so one builder's file never holds up the others); the other methods
wait for their answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import protocols
from ..errors import PiwheelsError, TransportTimeout
from ..filetransfer import new_token
from ..tasks import Task
from ..transport import DEALER

#: How long to wait for the file receiver (verifying a large wheel takes a moment).
REPLY_TIMEOUT = 120.0


class TransferFailed(PiwheelsError):
    """The file receiver refused a transfer; the message says why."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        super().__init__(reason)


@dataclass(frozen=True)
class VerifiedFile:
    """What the master itself established about a received wheel."""

    filename: str
    path: str
    size: int
    sha256: str
    metadata_sha256: str
    requires_python: str | None
    requires_dist: tuple[str, ...]
    abi_tag: str
    platform_tag: str
    modules: tuple[str, ...]

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> VerifiedFile:
        return cls(
            filename=facts["filename"],
            path=facts["path"],
            size=facts["size"],
            sha256=facts["sha256"],
            metadata_sha256=facts["metadata_sha256"],
            requires_python=facts["requires_python"],
            requires_dist=tuple(facts["requires_dist"]),
            abi_tag=facts["abi_tag"],
            platform_tag=facts["platform_tag"],
            modules=tuple(facts["modules"]),
        )


class TransferClient:
    """Requests to the file receiver over a DEALER owned by *task*."""

    def __init__(self, task: Task, address: str) -> None:
        self.socket = task.socket(DEALER, reversed(protocols.transfers), name="transfers")
        self.socket.connect(address)

    def request(self, msg: str, data: dict[str, Any]) -> None:
        """Send a request without waiting; its answer arrives on :attr:`socket`."""
        self.socket.send_msg(msg, data)

    def _ask(self, msg: str, data: dict[str, Any], want: str) -> dict[str, Any]:
        self.socket.send_msg(msg, data)
        token = data["transfer"]
        while True:
            try:
                reply = self.socket.recv_msg(timeout=REPLY_TIMEOUT)
            except TransportTimeout as exc:
                raise TransferFailed("timeout", "the file receiver did not answer") from exc
            if reply.data["transfer"] != token:
                # A late answer to an earlier request that timed out: not ours.
                continue
            if reply.msg == "REFUSED":
                raise TransferFailed(reply.data["code"], reply.data["reason"])
            if reply.msg != want:
                raise TransferFailed("invalid", f"unexpected {reply.msg} from the file receiver")
            return dict(reply.data)

    def expect(
        self,
        *,
        filename: str,
        package: str,
        version: str,
        abi: str | None,
        size: int,
        sha256: str,
        platform: str | None = None,
    ) -> str:
        """Announce a file; returns the token the sender must use."""
        token = new_token()
        self._ask(
            "EXPECT",
            {
                "transfer": token,
                "filename": filename,
                "package": package,
                "version": version,
                "abi": abi,
                "platform": platform,
                "size": size,
                "sha256": sha256,
            },
            "EXPECTING",
        )
        return token

    def verify(self, token: str) -> VerifiedFile:
        """Check what arrived under *token*."""
        reply = self._ask("VERIFY", {"transfer": token}, "VERIFIED")
        return VerifiedFile.from_facts(reply["file"])

    def publish(self, token: str) -> VerifiedFile:
        """Put the file into the index (idempotent for identical content)."""
        reply = self._ask("PUBLISH", {"transfer": token}, "PUBLISHED")
        return VerifiedFile.from_facts(reply["file"])

    def cancel(self, token: str) -> None:
        """Forget a transfer and its file."""
        try:
            self._ask("CANCEL", {"transfer": token}, "CANCELLED")
        except TransferFailed:
            pass
