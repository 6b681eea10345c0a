"""Upstream faults, classified by kind so the follower can back off per kind.

Every fault is an :class:`~piwheels.errors.UpstreamError`.  ``kind`` names the
class of trouble (one log line per kind) and ``scope`` says whether it is the
upstream as a whole that is unwell (stop the pass and back off) or just one
project's page (retry that project later, carry on with the others).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from piwheels.errors import UpstreamError

Scope = Literal["global", "project"]


class UpstreamFault(UpstreamError):
    """Base of the classified upstream faults."""

    kind: ClassVar[str] = "fault"
    scope: ClassVar[Scope] = "global"

    def __init__(self, message: str, *, url: str | None = None) -> None:
        self.url = url
        super().__init__(f"{message} ({url})" if url else message)


class RateLimited(UpstreamFault):
    """HTTP 429: the upstream asks us to slow down."""

    kind = "rate-limited"

    def __init__(
        self, message: str, *, url: str | None = None, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, url=url)


class ServerError(UpstreamFault):
    """HTTP 5xx."""

    kind = "server-error"

    def __init__(self, message: str, *, url: str | None = None, status: int = 500) -> None:
        self.status = status
        super().__init__(message, url=url)


class UpstreamTimeout(UpstreamFault):
    """No answer (or no more of one) within the timeout."""

    kind = "timeout"


class ConnectionFailed(UpstreamFault):
    """The connection could not be made or was dropped."""

    kind = "connection"


class FolderUnavailable(UpstreamFault):
    """A local upstream folder is missing or unreadable (perhaps not mounted)."""

    kind = "unavailable"


class TruncatedBody(UpstreamFault):
    """The body ended before its Content-Length (or its compression stream)."""

    kind = "truncated"
    scope = "project"


class InvalidResponse(UpstreamFault):
    """The body is not valid JSON, or not the structure the API promises."""

    kind = "invalid"
    scope = "project"


class StalePage(UpstreamFault):
    """The page's serial is older than the one the root promised (a lagging cache)."""

    kind = "stale"
    scope: ClassVar[Scope] = "project"

    def __init__(
        self, message: str, *, url: str | None = None, serial: int = 0, expected: int = 0
    ) -> None:
        self.serial = serial
        self.expected = expected
        super().__init__(message, url=url)


class StaleRoot(StalePage):
    """The root's serial is older than the last complete pass (a lagging cache)."""

    kind = "stale-root"
    scope = "global"


class HTTPFault(UpstreamFault):
    """Another unexpected HTTP status (403, 400...) for one page."""

    kind = "http-error"
    scope = "project"

    def __init__(self, message: str, *, url: str | None = None, status: int = 400) -> None:
        self.status = status
        super().__init__(message, url=url)
