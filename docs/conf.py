"""Sphinx configuration; some pages are generated from the code before the build."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from piwheels import __version__  # noqa: E402

project = "piwheels"
author = "The piwheels developers"
copyright = "2026, the piwheels developers"
version = release = __version__
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False


def _generate(app: object) -> None:
    """Write the pages generated from the code into _generated/."""
    from piwheels.docgen import write_generated

    write_generated(HERE / "_generated")
    from schema_gen import write as write_schema

    write_schema(HERE / "_generated")


def setup(app: object) -> None:
    app.connect("builder-inited", _generate)  # type: ignore[attr-defined]
