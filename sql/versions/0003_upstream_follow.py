"""0003: what the upstream watcher keeps: its todo, each release's upstream files,
and upstream deletions still to be carried out.

* ``upstream_state.todo_serial`` and ``upstream_todo``: the projects an
  unfinished pass has still to look at, so a restart resumes it;
* ``upstream_files``: the file names each release has upstream, so a page can
  be diffed against what is known (a late sdist, a file removed);
* ``upstream_removals``: releases and projects upstream deleted whose builds,
  pages and files are still to go (it waits for builds in flight to end).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "upstream_state",
        sa.Column(
            "todo_serial",
            sa.BigInteger(),
            nullable=True,
            comment="Serial the unfinished pass reaches once upstream_todo is empty; NULL if none",
        ),
    )
    op.create_table(
        "upstream_todo",
        sa.Column(
            "package", sa.Text(), nullable=False, comment="Canonical project name to look at"
        ),
        sa.Column(
            "serial",
            sa.BigInteger(),
            nullable=False,
            comment="Serial the root listing promised for it; -1 when it left the root",
        ),
        sa.PrimaryKeyConstraint("package", name=op.f("pk_upstream_todo")),
        comment="Projects the unfinished upstream pass still has to look at (resumed on restart)",
    )
    op.create_table(
        "upstream_removals",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column(
            "version",
            sa.Text(),
            nullable=False,
            comment="Version upstream deleted; empty when the whole project was deleted",
        ),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
            comment="When upstream's deletion was seen",
        ),
        sa.PrimaryKeyConstraint("package", "version", name=op.f("pk_upstream_removals")),
        comment="Upstream deletions whose builds, pages and files are still to be removed",
    )
    op.create_table(
        "upstream_files",
        sa.Column("package", sa.Text(), nullable=False, comment="Canonical project name"),
        sa.Column("version", sa.Text(), nullable=False, comment="Version string"),
        sa.Column("filename", sa.Text(), nullable=False, comment="Distribution file name upstream"),
        sa.Column(
            "sha256", sa.Text(), nullable=True, comment="SHA-256 upstream gives; NULL if none"
        ),
        sa.Column(
            "size",
            sa.BigInteger(),
            nullable=True,
            comment="Size in bytes upstream gives; NULL if none",
        ),
        sa.ForeignKeyConstraint(
            ["package", "version"],
            ["versions.package", "versions.version"],
            name=op.f("fk_upstream_files_package_version_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("package", "version", "filename", name=op.f("pk_upstream_files")),
        comment="Files each release has upstream (what the upstream watcher diffs pages against)",
    )
    op.execute("UPDATE configuration SET schema_version = '0003'")


def downgrade() -> None:
    op.drop_table("upstream_files")
    op.drop_table("upstream_removals")
    op.drop_table("upstream_todo")
    op.drop_column("upstream_state", "todo_serial")
    op.execute("UPDATE configuration SET schema_version = '0002'")
