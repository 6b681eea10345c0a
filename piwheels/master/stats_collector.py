"""The stats collector: periodic figures for monitors (and the home page).

Every ``[master] stats_interval`` it reads the host's resources and the
database's figures and reports a STATS message to the status hub.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from .. import protocols
from ..db.figures import master_figures
from ..hoststats import host_stats
from ..tasks import Endpoint, Task
from ..transport import PUSH, Context
from .env import MasterEnv


class StatsCollector(Task):
    """Reports the master's figures periodically."""

    role = "stats_collector"
    connects = (Endpoint("status_feed", "PUSH", "status_feed", "reports figures"),)

    def __init__(
        self,
        context: Context,
        env: MasterEnv,
        *,
        on_fatal: Callable[[Task, BaseException], None] | None = None,
        ingest_rate: Callable[[], float] | None = None,
        upstream_lag: Callable[[], int | None] | None = None,
    ) -> None:
        super().__init__(context, on_fatal=on_fatal)
        self.env = env
        self.ingest_rate = ingest_rate or (lambda: 0.0)
        self.upstream_lag = upstream_lag or (lambda: None)
        self.status = self.socket(PUSH, reversed(protocols.status_feed), name="status_feed")
        self.status.connect(env.addresses["status_feed"])
        self.every(env.settings.master.stats_interval.total_seconds(), self.collect, pausable=False)

    def setup(self) -> None:
        self.collect()

    def collect(self) -> None:
        """Send one STATS message."""
        with self.env.engine.connect() as conn:
            db = master_figures(conn)
        self.status.send_msg(
            "STATS",
            {
                "timestamp": datetime.now(UTC),
                "host": host_stats(self.env.output_path),
                "paused": self.paused,
                "upstream_lag": self.upstream_lag(),
                "ingest_rate": float(self.ingest_rate()),
                **db,
            },
        )
