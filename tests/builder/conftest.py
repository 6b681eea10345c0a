"""Fixtures for builder tests: a loopback PEP 503 index holding the build requirements.

The index serves wheels of setuptools (and wheel, packaging) repacked from
this Python's installed copies, so pip's build isolation works offline;
tests add their own sdists with ``local_index.add(path)``.
"""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
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
    # Read the version without importing setuptools: importing it after something
    # else loaded the standard library's distutils fails in this process.
    setuptools_version = importlib.metadata.version("setuptools")
    if int(setuptools_version.split(".")[0]) < 70 and "wheel" not in names:
        pytest.fail(
            f"setuptools {setuptools_version} needs the 'wheel' package installed to build "
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


MiB = 1024 * 1024


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where builds of this session run."""
    return tmp_path_factory.mktemp("builds")


@pytest.fixture(scope="session")
def build(local_index: LocalIndex, build_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``build(make_sdist, **build_wheel_options) -> BuildResult``.

    *make_sdist* is one of the ``tests.sdists`` functions (called with a
    folder); its package is added to the index and built with the real pip.
    """
    from piwheels.builder import build_wheel

    sdists = tmp_path_factory.mktemp("sdists")

    def run(make_sdist, *args: object, version: str = "1.0", **options: object):  # type: ignore[no-untyped-def]
        path = make_sdist(sdists, *args)
        local_index.add(path)
        name = path.name.rsplit("-", 1)[0].replace("_", "-")
        settings: dict[str, object] = dict(
            index_url=local_index.url,
            work_dir=build_dir,
            timeout=300.0,
            memory_limit=4096 * MiB,
            min_free_disk=1 * MiB,
        )
        settings.update(options)
        return build_wheel(name, version, **settings)  # type: ignore[arg-type]

    return run


@pytest.fixture(scope="session")
def built(build):  # type: ignore[no-untyped-def]
    """Successful builds shared by several tests: ``built("pure")`` etc., made once."""
    from tests import sdists

    makers = {
        "pure": sdists.pure_sdist,
        "cext": sdists.c_ext_sdist,
        "abi3": sdists.abi3_sdist,
        "zlib": sdists.zlib_sdist,
        "missing-lib": sdists.missing_library_sdist,
        "bad-import": sdists.broken_import_sdist,
    }
    cache: dict[str, object] = {}

    def get(kind: str):  # type: ignore[no-untyped-def]
        if kind not in cache:
            result = build(makers[kind])
            assert result.status == "success", result.log[-4000:]
            cache[kind] = result
        return cache[kind]

    return get
