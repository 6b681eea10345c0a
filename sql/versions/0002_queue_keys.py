"""0002: a leaner build_queue (faster full computation, same rules).

The queue is derived data, rewritten in bulk by a full computation: the two
foreign keys cost a lookup per inserted row and the separate (package,
version) index a third B-tree.  Instead:

* the primary key leads with (package, version), so it serves the
  per-release recomputation and the separate index goes;
* the foreign keys go; deleting a release or a target removes its queue rows
  through statement-level triggers (one set-based DELETE per statement, also
  for deletes cascading from a project).  The incremental path locks the
  releases it recomputes (FOR KEY SHARE), as the foreign key check did.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_build_queue_abi_abis", "build_queue", type_="foreignkey")
    op.drop_constraint("fk_build_queue_package_version_versions", "build_queue", type_="foreignkey")
    op.drop_index("ix_build_queue_package_version", table_name="build_queue")
    op.drop_constraint("pk_build_queue", "build_queue", type_="primary")
    op.create_primary_key("pk_build_queue", "build_queue", ["package", "version", "abi"])
    op.execute(
        """
        CREATE FUNCTION build_queue_forget_versions() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM build_queue q USING gone g
            WHERE q.package = g.package AND q.version = g.version;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER build_queue_forget_versions AFTER DELETE ON versions
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION build_queue_forget_versions()
        """
    )
    op.execute(
        """
        CREATE FUNCTION build_queue_forget_abis() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM build_queue q USING gone g WHERE q.abi = g.abi;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER build_queue_forget_abis AFTER DELETE ON abis
        REFERENCING OLD TABLE AS gone
        FOR EACH STATEMENT EXECUTE FUNCTION build_queue_forget_abis()
        """
    )
    op.execute("UPDATE configuration SET schema_version = '0002'")


def downgrade() -> None:
    op.execute("DROP TRIGGER build_queue_forget_abis ON abis")
    op.execute("DROP FUNCTION build_queue_forget_abis()")
    op.execute("DROP TRIGGER build_queue_forget_versions ON versions")
    op.execute("DROP FUNCTION build_queue_forget_versions()")
    op.drop_constraint("pk_build_queue", "build_queue", type_="primary")
    op.create_primary_key("pk_build_queue", "build_queue", ["abi", "package", "version"])
    op.create_index(
        "ix_build_queue_package_version", "build_queue", ["package", "version"], unique=False
    )
    op.create_foreign_key(
        "fk_build_queue_package_version_versions",
        "build_queue",
        "versions",
        ["package", "version"],
        ["package", "version"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        "fk_build_queue_abi_abis", "build_queue", "abis", ["abi"], ["abi"], ondelete="CASCADE"
    )
    op.execute("UPDATE configuration SET schema_version = '0001'")
