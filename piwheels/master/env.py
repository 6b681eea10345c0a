"""What every master task is given when it is made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..transport import CurveKeys


@dataclass(frozen=True)
class MasterEnv:
    """The collaborators a master task needs; tasks share nothing else.

    *addresses* maps each logical endpoint (``builder``, ``pages``, ...) to its
    ZeroMQ address: the external ones come from the settings, the internal ones
    are ``inproc://`` names unique to this master.  *engine* is the SQLAlchemy
    engine of the master's least-privilege role; its pool is the database
    service every task draws connections from.
    """

    settings: Settings
    addresses: Mapping[str, str]
    output_path: Path
    engine: Any = None
    server_keys: CurveKeys | None = None
