"""Wall-clock and CPU time of each step of a build, for the log and the benchmark.

A :class:`Timings` collects named steps::

    timings = Timings()
    with timings.step("pip wheel"):
        ...
    timings.summary()   # "pip wheel 3.21 s (cpu 2.05 s); ..."

CPU time is the calling thread's own (:func:`time.thread_time`) plus that of
child processes reaped during the step (``RUSAGE_CHILDREN``).  The latter is
counted per process, so it is exact only while one thread at a time runs
children, which holds for the builder (one build at a time).  CPU time is
the figure to compare on a shared, loaded machine, where wall time swings.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["StepTime", "Timings"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class StepTime:
    """One timed step."""

    name: str
    wall: float  # seconds
    cpu: float  # seconds: own thread + children reaped during the step


@dataclass
class Timings:
    """The timed steps of one build, in the order they ended."""

    steps: list[StepTime] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the ``with`` body as step *name* (recorded even when it raises)."""
        wall0, own0, kids0 = time.perf_counter(), time.thread_time(), _children_cpu()
        try:
            yield
        finally:
            cpu = time.thread_time() - own0 + _children_cpu() - kids0
            self.steps.append(StepTime(name, time.perf_counter() - wall0, cpu))

    def add(self, name: str, wall: float, cpu: float) -> None:
        """Record a step timed elsewhere."""
        self.steps.append(StepTime(name, wall, cpu))

    def totals(self) -> dict[str, StepTime]:
        """Per step name, the sum over its occurrences (e.g. one per wheel), in first order."""
        out: dict[str, StepTime] = {}
        for s in self.steps:
            old = out.get(s.name)
            out[s.name] = s if old is None else StepTime(s.name, old.wall + s.wall, old.cpu + s.cpu)
        return out

    def summary(self) -> str:
        """One line: each step's wall and CPU seconds."""
        return "; ".join(
            f"{s.name} {s.wall:.2f} s (cpu {s.cpu:.2f} s)" for s in self.totals().values()
        )
