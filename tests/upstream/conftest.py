"""Fixtures for the upstream tests: the stand-in server, a client, a fake clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from piwheels.upstream.client import SimpleClient
from piwheels.upstream.follower import Follower, RunSummary
from piwheels.upstream.memory import MemoryStore
from tests.upstream.server import UpstreamModel, UpstreamServer


class FakeClock:
    """A monotonic clock the test moves by hand (backoff without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def model() -> UpstreamModel:
    return UpstreamModel()


@pytest.fixture
def server(model: UpstreamModel) -> Iterator[UpstreamServer]:
    with UpstreamServer(model) as srv:
        yield srv


@pytest.fixture
def client(server: UpstreamServer) -> Iterator[SimpleClient]:
    c = SimpleClient(server.index_url, json_url=server.json_url, timeout=5.0)
    yield c
    c.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def make_follower(client: SimpleClient, store: MemoryStore, clock: FakeClock) -> Iterator[Any]:
    made: list[Follower] = []

    def make(**kwargs: Any) -> Follower:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("rng", random.Random(6))
        follower = Follower(kwargs.pop("client", client), kwargs.pop("store", store), **kwargs)
        made.append(follower)
        return follower

    yield make
    for follower in made:
        if follower._pool is not None:
            follower._pool.shutdown(wait=True, cancel_futures=True)


def run_until_complete(follower: Follower, clock: FakeClock, limit: int = 100) -> list[RunSummary]:
    """Call run_once, moving the clock past each backoff, until a pass completes."""
    runs = []
    for _ in range(limit):
        summary = follower.run_once()
        runs.append(summary)
        if summary.complete or summary.unchanged:
            return runs
        clock.advance(summary.retry_in or 0.0)
    raise AssertionError(f"no complete pass in {limit} runs: {runs[-1]}")
