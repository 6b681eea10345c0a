"""Alembic environment for piwheels (driven from code, no ini file).

:mod:`piwheels.db.initdb` builds the :class:`alembic.config.Config`; it passes
either a live connection (``config.attributes["connection"]``) or a URL.
Offline mode (``--sql``) prints the SQL instead of running it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from piwheels.db.schema import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=metadata, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, target_metadata=metadata, transactional_ddl=True
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
