"""0004: rollups that keep a report's reads independent of the number of hits,
and the record of stored log batches.

* ``daily_totals``: per day, ``daily_package_stats`` summed over projects
  (daily series, all-time totals, spike baselines read days, not projects);
* ``monthly_package_stats``: per month and project (a period's top projects
  read months, plus the days of partial months);
* ``log_batches``: each stored log batch (logger identity, batch id), written
  in the batch's transaction, so a batch resent after a lost ACK is skipped.

The two rollups are filled from ``daily_package_stats``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daily_totals",
        sa.Column("day", sa.Date(), nullable=False, comment="UTC day"),
        sa.Column("downloads", sa.BigInteger(), nullable=False, comment="Downloads (no bots)"),
        sa.Column(
            "bytes_sent", sa.BigInteger(), nullable=False, comment="Download bytes (no bots)"
        ),
        sa.Column(
            "seconds_saved",
            sa.Double(),
            nullable=False,
            comment="Time saved by the day's downloads",
        ),
        sa.Column("searches", sa.BigInteger(), nullable=False, comment="Index hits (no bots)"),
        sa.Column(
            "project_hits", sa.BigInteger(), nullable=False, comment="Project page hits (no bots)"
        ),
        sa.Column("json_hits", sa.BigInteger(), nullable=False, comment="JSON hits (no bots)"),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_daily_totals")),
        comment="Per day: daily_package_stats summed over projects (daily and all-time figures)",
    )
    op.create_table(
        "monthly_package_stats",
        sa.Column("month", sa.Date(), nullable=False, comment="First UTC day of the month"),
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("downloads", sa.BigInteger(), nullable=False, comment="Downloads (no bots)"),
        sa.Column("searches", sa.BigInteger(), nullable=False, comment="Index hits (no bots)"),
        sa.Column(
            "project_hits", sa.BigInteger(), nullable=False, comment="Project page hits (no bots)"
        ),
        sa.Column("json_hits", sa.BigInteger(), nullable=False, comment="JSON hits (no bots)"),
        sa.PrimaryKeyConstraint("month", "package", name=op.f("pk_monthly_package_stats")),
        comment="Per month, per project: daily_package_stats summed (top projects of a period)",
    )
    op.create_table(
        "log_batches",
        sa.Column(
            "source",
            sa.LargeBinary(),
            nullable=False,
            comment="Identity of the piw-logger that sent the batch (unique per logger process)",
        ),
        sa.Column(
            "batch_id", sa.BigInteger(), nullable=False, comment="Batch number given by that logger"
        ),
        sa.Column(
            "stored", sa.BigInteger(), nullable=False, comment="Records stored from the batch"
        ),
        sa.Column(
            "stored_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When the batch was committed (kept a few days, then pruned)",
        ),
        sa.PrimaryKeyConstraint("source", "batch_id", name=op.f("pk_log_batches")),
        comment="Log batches stored, recorded with their rows: a resent batch is not stored twice",
    )
    op.create_index(op.f("ix_log_batches_stored_at"), "log_batches", ["stored_at"])
    op.execute(
        """
        INSERT INTO daily_totals
            (day, downloads, bytes_sent, seconds_saved, searches, project_hits, json_hits)
        SELECT day, sum(downloads), sum(bytes_sent), sum(seconds_saved), sum(searches),
               sum(project_hits), sum(json_hits)
        FROM daily_package_stats GROUP BY day
        """
    )
    op.execute(
        """
        INSERT INTO monthly_package_stats
            (month, package, downloads, searches, project_hits, json_hits)
        SELECT date_trunc('month', day)::date, package, sum(downloads), sum(searches),
               sum(project_hits), sum(json_hits)
        FROM daily_package_stats GROUP BY 1, 2
        """
    )
    op.execute("UPDATE configuration SET schema_version = '0004'")


def downgrade() -> None:
    op.drop_index(op.f("ix_log_batches_stored_at"), table_name="log_batches")
    op.drop_table("log_batches")
    op.drop_table("monthly_package_stats")
    op.drop_table("daily_totals")
    op.execute("UPDATE configuration SET schema_version = '0003'")
