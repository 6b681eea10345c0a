"""Statistics from the download rollups: reports (``piw-report``), charts and spikes.

:mod:`.queries` reads the figures, :mod:`.report` writes Markdown, HTML and
JSON, :mod:`.charts` draws PNG and SVG charts, :mod:`.spike` finds the
packages behind a rise in downloads.
"""
