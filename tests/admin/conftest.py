"""A running master for the admin tools: page writer, file receiver and admin gateway
threads over a fresh database, with the admin socket on ipc in a short temp folder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from piwheels.db import abis
from piwheels.master.admin_gateway import AdminGateway
from piwheels.master.env import MasterEnv
from piwheels.master.file_receiver import FileReceiver
from piwheels.master.page_writer import PageWriter
from piwheels.transport import Context

from .harness import fresh_engine, make_env


@dataclass
class Master:
    env: MasterEnv
    engine: Any
    output: Path
    url: str

    def options(self) -> list[str]:
        """Command-line options that point a tool at this master."""
        return [
            "--admin-endpoint",
            self.env.addresses["admin"],
            "--output-path",
            str(self.output),
            "--timeout",
            "10",
        ]

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(query), params))


@pytest.fixture
def database(new_database: Any) -> Iterator[Any]:
    """A fresh migrated database with one build target (the tools commit for real)."""
    engine = fresh_engine(new_database)
    with engine.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
    yield engine
    engine.dispose()


@pytest.fixture
def master(database: Any, tmp_short: Path, tmp_path: Path) -> Iterator[Master]:
    output = tmp_path / "www"
    env = make_env(database, output, tmp_short)
    context = Context()
    tasks = [PageWriter(context, env), FileReceiver(context, env), AdminGateway(context, env)]
    for task in tasks:
        task.start()
    url = database.url.render_as_string(hide_password=False)
    yield Master(env, database, output, url)
    for task in reversed(tasks):
        task.quit()
        task.join(10)
    failures = [t.failure for t in tasks if t.failure is not None]
    context.close()
    assert not failures, failures
