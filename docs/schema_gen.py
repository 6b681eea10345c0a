"""The database schema page, generated from :mod:`piwheels.db.schema` (its comments)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql


def _cell(text: str) -> str:
    return " ".join(text.split()) or " "


def _table(table: Table) -> list[str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    out = [table.name, "-" * len(table.name), ""]
    if table.comment:
        out += [table.comment.strip(), ""]
    out += [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 20 20 8 52",
        "",
        "   * - column",
        "     - type",
        "     - null",
        "     - meaning",
    ]
    for column in table.columns:
        kind = column.type.compile(dialect=dialect)
        refs = ", ".join(f"{fk.column.table.name}.{fk.column.name}" for fk in column.foreign_keys)
        meaning = column.comment or ""
        if refs:
            meaning += f" (references {refs})"
        key = " (primary key)" if column.primary_key else ""
        out += [
            f"   * - ``{column.name}``{key}",
            f"     - {_cell(kind)}",
            f"     - {'yes' if column.nullable else 'no'}",
            f"     - {_cell(meaning)}",
        ]
    out.append("")
    indexes = sorted(index.name or "" for index in table.indexes)
    if indexes:
        out += ["Indexes: " + ", ".join(f"``{name}``" for name in indexes) + ".", ""]
    return out


def write(dest: Path) -> None:
    """Write ``schema.rst`` (every table, sorted by name) into *dest*."""
    from piwheels.db.schema import metadata

    lines = [
        ".. Generated from piwheels/db/schema.py by docs/schema_gen.py: do not edit.",
        "",
    ]
    for table in sorted(metadata.tables.values(), key=lambda t: t.name):
        lines += _table(table)
    dest.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    target = dest / "schema.rst"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
