"""Real nginx (the project's configuration and log format), real pip and uv, then the logger.

The requests are made by the real clients, logged by the real web server, and
read back by the logger: the classification must match what each client did.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.classify import AccessRecord, agent_of
from piwheels.logger.reader import LogReader
from piwheels.web.nginx import PrivateNginx
from tests.logger.lines import BOT_UA, BROWSER_UA, SECRET

pytestmark = pytest.mark.slow

NAME = "demo-pkg"
WHEEL = "demo_pkg-1.0-py3-none-any.whl"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel() -> tuple[bytes, bytes]:
    """A tiny valid pure wheel and its METADATA."""
    info = "demo_pkg-1.0.dist-info"
    metadata = b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n"
    files = {
        "demo_pkg/__init__.py": b"",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{p},sha256={_b64(d)},{len(d)}\n" for p, d in files.items())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return buf.getvalue(), metadata


@pytest.fixture
def served() -> Iterator[PrivateNginx]:
    # nginx workers run as an unprivileged user: the tree must be world-readable,
    # so it lives in a fresh directory of its own rather than pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="piwlog-"))
    try:
        root.chmod(0o755)
        site = root / "www"
        pkg = site / "simple" / NAME
        pkg.mkdir(parents=True)
        wheel, metadata = make_wheel()
        (pkg / WHEEL).write_bytes(wheel)
        (pkg / f"{WHEEL}.metadata").write_bytes(metadata)
        sha = hashlib.sha256(wheel).hexdigest()
        meta_sha = hashlib.sha256(metadata).hexdigest()
        (pkg / "index.html").write_text(
            "<!DOCTYPE html><html><body>"
            f'<a href="{WHEEL}#sha256={sha}" data-core-metadata="sha256={meta_sha}">{WHEEL}</a>'
            "</body></html>\n"
        )
        # pip and uv ask for PEP 691 JSON first; nginx negotiates which file to send.
        (pkg / "index.json").write_text(
            json.dumps(
                {
                    "meta": {"api-version": "1.0"},
                    "name": NAME,
                    "files": [
                        {
                            "filename": WHEEL,
                            "url": WHEEL,
                            "hashes": {"sha256": sha},
                            "core-metadata": {"sha256": meta_sha},
                        }
                    ],
                }
            )
        )
        (site / "simple" / "index.json").write_text(
            json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": NAME}]})
        )
        (site / "simple" / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="{NAME}/">{NAME}</a></body></html>\n'
        )
        (site / "index.html").write_text("<!DOCTYPE html><html><body>home</body></html>\n")
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        with PrivateNginx(site, root / "nginx") as nginx:
            yield nginx
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def fetch(url: str, ua: str, method: str = "GET") -> None:
    req = urllib.request.Request(url, method=method, headers={"User-Agent": ua})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def records(nginx: PrivateNginx) -> tuple[list[AccessRecord], LogReader]:
    reader = LogReader(Anonymiser("hash", SECRET))
    return list(reader.read_files([nginx.access_log])), reader


def test_pip_uv_and_others_through_nginx(served: PrivateNginx, tmp_path: Path) -> None:
    index = f"{served.url}/simple/"
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    env.pop("PIP_INDEX_URL", None)
    env.pop("PIP_EXTRA_INDEX_URL", None)
    env.pop("PIP_FIND_LINKS", None)
    run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "--index-url", index, "-d", str(tmp_path / "pip"), NAME],
        env,
    )  # fmt: skip
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is a test requirement"
    uv_env = dict(
        env,
        UV_CACHE_DIR=str(tmp_path / "uvcache"),
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
    )
    run(
        [uv, "pip", "install", "--python", sys.executable, "--target", str(tmp_path / "uv"),
         "--index-url", index, NAME],
        uv_env,
    )  # fmt: skip
    fetch(f"{served.url}/simple/{NAME}/{WHEEL}", "Python-urllib/3")  # direct download
    fetch(f"{served.url}/simple/{NAME}/{WHEEL}", "curl/7.88.1", method="HEAD")
    fetch(f"{served.url}/simple/{NAME}/", BROWSER_UA)  # a person reading the index
    fetch(f"{served.url}/simple/{NAME}/{WHEEL}", BOT_UA)
    fetch(f"{served.url}/", BROWSER_UA)
    served.stop()

    recs, reader = records(served)
    assert reader.stats.malformed_total == 0, reader.stats.samples
    assert reader.stats.parsed == reader.stats.lines > 0
    downloads = [r for r in recs if r.kind == "download"]
    assert sorted(agent_of(r) for r in downloads) == ["direct", "pip", "uv"]
    assert all(r.package == NAME and r.filename == WHEEL for r in downloads)
    assert all(r.bytes_sent > len(make_wheel()[0]) for r in downloads)  # body + headers

    pip_dl = next(r for r in downloads if r.installer_name == "pip")
    uv_dl = next(r for r in downloads if r.installer_name == "uv")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    for r in (pip_dl, uv_dl):
        assert r.py_version is not None and r.py_version.startswith(py)
        assert r.os_name == "Linux"
        assert r.arch == os.uname().machine
        assert r.installer_version
    assert pip_dl.installer_version == __import__("pip").__version__

    index_hits = [r for r in recs if r.kind == "index"]
    assert {r.installer_name for r in index_hits} == {"pip", "uv"}
    assert all(r.package == NAME for r in index_hits)
    # Both installers fetch the core metadata first (PEP 658): never a download.
    assert any(r.kind == "metadata" and r.installer_name == "uv" for r in recs)
    kinds = [r.kind for r in recs]
    assert kinds.count("bot") == 1
    assert kinds.count("page") == 1
    # The HEAD and the browser's look at the simple page count as neither.
    assert kinds.count("other") >= 2
    # The same client, the same day: one anonymised value, never the address.
    assert {r.client for r in recs} == {recs[0].client}
    assert "127.0.0.1" not in recs[0].client
