"""An in-memory :class:`~piwheels.upstream.follower.UpstreamStore` for tests,
benchmarks and dry runs.  It keeps every applied event in order, so a test can
check that nothing was skipped or recorded twice."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

from piwheels.upstream.events import Event, KnownProject, apply_events


class MemoryStore:
    """Keeps the follower's place and the known projects in dictionaries."""

    def __init__(self) -> None:
        self.last_serial: int | None = None
        self.serials: dict[str, int] = {}
        self.known: dict[str, KnownProject] = {}
        self.todo: tuple[int, dict[str, int]] | None = None
        self.log: list[tuple[str, Event]] = []  # (project, event) in applied order
        self.applied: list[tuple[str, int | None]] = []  # (project, serial) per apply
        self._lock = threading.Lock()

    def get_last_serial(self) -> int | None:
        return self.last_serial

    def get_project_serials(self) -> Mapping[str, int]:
        return self.serials

    def get_known(self, name: str) -> KnownProject | None:
        return self.known.get(name)

    def apply(self, events: Sequence[Event], name: str, serial: int | None) -> None:
        with self._lock:
            # Compute first, then commit: a failure leaves nothing half-done.
            state = apply_events(self.known.get(name), list(events))
            if state is None:
                self.known.pop(name, None)
                self.serials.pop(name, None)
            else:
                if serial is not None:
                    state = replace(state, serial=serial)
                    self.serials[name] = serial
                self.known[name] = state
            self.log.extend((name, e) for e in events)
            self.applied.append((name, serial))
            if self.todo is not None:
                self.todo[1].pop(name, None)

    def save_todo(self, target_serial: int, names: Mapping[str, int]) -> None:
        with self._lock:
            self.todo = (target_serial, dict(names))

    def load_todo(self) -> tuple[int, dict[str, int]] | None:
        with self._lock:
            if self.todo is None:
                return None
            return self.todo[0], dict(self.todo[1])

    def set_last_serial(self, serial: int) -> None:
        with self._lock:
            self.last_serial = serial
            self.todo = None
