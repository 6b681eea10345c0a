"""Run a log through the real pipeline: piw-logger -> LogIngest (ZeroMQ) -> PostgreSQL."""

from __future__ import annotations

import io
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from piwheels.db import abis, builds, versions
from piwheels.db.files import FileRecord
from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.main import COMMAND as LOGGER
from piwheels.logger.reader import LogReader
from piwheels.master.env import MasterEnv
from piwheels.master.log_ingest import LogIngest
from piwheels.settings import Settings
from piwheels.stats.report_cli import COMMAND as REPORT
from piwheels.transport import Context
from tests.logger.lines import SECRET


def make_env(engine: Engine, address: str, output: Path) -> MasterEnv:
    return MasterEnv(
        settings=Settings(), addresses={"logger": address}, output_path=output, engine=engine
    )


@contextmanager
def running_ingest(engine: Engine, address: str, output: Path, **kw: Any) -> Iterator[LogIngest]:
    """A LogIngest task running in its thread; stopped (and rolled up) on exit."""
    context = Context()
    task = LogIngest(context, make_env(engine, address, output), **kw)
    task.start()
    try:
        yield task
    finally:
        task.quit()
        task.join(30)
        context.close()
    assert not task.is_alive()
    assert task.failure is None, task.failure


def run_logger(args: Sequence[str], address: str, secret: Path) -> tuple[int, str]:
    """Run piw-logger in this process; returns (exit code, stderr)."""
    err = io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        code = LOGGER.run(
            [*args, "--log-endpoint", address, "--secret-file", str(secret)],
            system_config=None,
            user_config=None,
            environ={},
        )
    finally:
        sys.stderr = old
    return code, err.getvalue()


def run_report(args: Sequence[str], url: str) -> tuple[int, str]:
    """Run piw-report in this process; returns (exit code, stdout)."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = REPORT.run(
            [*args, "--dsn", url.replace("postgresql+psycopg2://", "postgresql://")],
            system_config=None,
            user_config=None,
            environ={},
        )
    return code, out.getvalue()


def log_records(path: Path) -> list[Any]:
    reader = LogReader(Anonymiser("hash", SECRET))
    return list(reader.read_files([path]))


def add_builds(engine: Engine, filenames: dict[str, str], durations: dict[str, float]) -> None:
    """Record a successful build of each wheel (filename -> package) with its duration.

    A duration of -1 leaves the build without one (as an import may be).
    """
    with engine.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
        for i, (fname, package) in enumerate(sorted(filenames.items())):
            ver = fname.split("-")[1]
            if not conn.execute(
                text("SELECT 1 FROM versions WHERE package = :p AND version = :v"),
                {"p": package, "v": ver},
            ).first():
                versions.add_version(
                    conn, package, ver, released_at=datetime(2021, 1, 1, tzinfo=UTC)
                )
            build_id = builds.start_build(conn, package, ver, "cp311-linux_armv7l", f"b{i}")
            dur = durations[fname]
            builds.finish_build(
                conn,
                build_id,
                "success",
                timedelta(seconds=max(dur, 0)),
                files=[FileRecord(filename=fname, size=1000, sha256=f"{i:064x}")],
            )
            if dur < 0:
                conn.execute(
                    text("UPDATE builds SET duration = NULL WHERE build_id = :b"), {"b": build_id}
                )


def expected_seconds_saved(records: Sequence[Any], durations: dict[str, float]) -> float:
    """Time saved by the non-bot downloads of *records* (the definition in the docs)."""
    counts = Counter(r.filename for r in records if r.kind == "download")
    return sum(max(durations.get(f, 0.0), 0.0) * n for f, n in counts.items())
