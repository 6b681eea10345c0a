"""Pages of the documentation that are generated from the code.

``docs/conf.py`` calls :func:`write_generated` before every build, so the
protocol reference, the configuration reference and the socket map can never
drift from the code.
"""

from __future__ import annotations

from pathlib import Path

from . import protocols


def sockets_rst() -> str:
    """The master's socket map, from what each task declares it binds and connects."""
    from .tasks import socket_map

    try:
        from .master.main import TASKS
    except ImportError:  # the master package is optional in a builder-only install
        TASKS = ()
    lines = ["Socket map", "==========", ""]
    if not TASKS:
        return "\n".join([*lines, "(No master tasks are installed.)", ""])
    lines += [
        "Generated from the endpoints each master task declares.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - Endpoint",
        "     - Kind",
        "     - Protocol",
        "     - Bound by",
        "     - Connected by",
    ]
    for name, kind, proto, binder, connectors in socket_map(TASKS):
        lines += [
            f"   * - ``{name}``",
            f"     - {kind}",
            f"     - {proto}",
            f"     - {binder}",
            f"     - {', '.join(connectors) or '(outside the master)'}",
        ]
    return "\n".join(lines) + "\n"


def configuration_rst() -> str:
    """The configuration reference, from the settings declarations."""
    from .settings import settings_reference_rst

    return settings_reference_rst()


def write_generated(folder: Path) -> None:
    """Write every generated page into *folder* (only when the text changed)."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = {
        "protocol.rst": protocols.describe(),
        "configuration.rst": configuration_rst(),
        "sockets.rst": sockets_rst(),
    }
    for name, text in pages.items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
