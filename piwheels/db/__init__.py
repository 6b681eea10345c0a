"""The database: schema, migrations, least-privilege role and the data-access layer.

Nothing outside this package writes SQL.  Query modules are per aggregate
(:mod:`.packages`, :mod:`.versions`, :mod:`.builds`, :mod:`.files`,
:mod:`.downloads`, :mod:`.queue`, :mod:`.upstream`); each function takes a
SQLAlchemy :class:`~sqlalchemy.engine.Connection` first and returns frozen
dataclasses.
"""
