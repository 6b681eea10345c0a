"""Fixtures for builder tests: a loopback PEP 503 index holding the build requirements.

The index serves wheels of setuptools (and wheel, packaging) repacked from
this Python's installed copies, so pip's build isolation works offline;
tests add their own sdists with ``local_index.add(path)``.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sdists import build_requirement_wheels, write_simple_index


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class LocalIndex:
    """A static index on 127.0.0.1 (``url`` ends in ``/simple/``)."""

    root: Path
    url: str

    def add(self, *paths: Path) -> None:
        for path in paths:
            shutil.copy2(path, self.root / "files" / path.name)
        write_simple_index(self.root)


@pytest.fixture(scope="session")
def local_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    root = tmp_path_factory.mktemp("index")
    files = root / "files"
    made = build_requirement_wheels(files)
    names = {p.name.split("-")[0] for p in made}
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 70 and "wheel" not in names:
        pytest.fail(
            f"setuptools {setuptools.__version__} needs the 'wheel' package installed to build "
            "wheels offline (pip install wheel, or setuptools>=70.1)"
        )
    write_simple_index(root)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalIndex(root, f"http://127.0.0.1:{server.server_address[1]}/simple/")
    finally:
        server.shutdown()
        server.server_close()
