"""The stand-in upstream itself: the HTML forms, redirects and file downloads
that other tests (and pip) rely on."""

from __future__ import annotations

import hashlib
import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.upstream.server import FakeFile, UpstreamModel, UpstreamServer


def get(server: UpstreamServer, path: str, accept: str = "text/html") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=5)
    conn.request("GET", path, headers={"Accept": accept})
    return conn.getresponse()


@pytest.fixture
def filled(model: UpstreamModel) -> UpstreamModel:
    model.add_project("Foo")
    model.add_release(
        "foo", "1.0", [FakeFile("foo-1.0.tar.gz", b"sdist bytes")], requires_python=">=3.8"
    )
    model.yank("foo", "1.0", "broken <build>")
    return model


def test_html_pages(filled: UpstreamModel, server: UpstreamServer) -> None:
    root = get(server, "/simple/")
    assert root.status == 200 and root.getheader("Content-Type") == "text/html"
    assert '<a href="/simple/foo/">Foo</a>' in root.read().decode()
    page = get(server, "/simple/foo/")
    text = page.read().decode()
    assert page.getheader("X-PyPI-Last-Serial") == str(filled.serial)
    digest = hashlib.sha256(b"sdist bytes").hexdigest()
    assert f'href="/files/foo/foo-1.0.tar.gz#sha256={digest}"' in text
    assert 'data-yanked="broken &lt;build&gt;"' in text
    assert f"<!--SERIAL {filled.serial}-->" in text


def test_json_pages(filled: UpstreamModel, server: UpstreamServer) -> None:
    resp = get(server, "/simple/foo/", "application/vnd.pypi.simple.v1+json")
    assert resp.getheader("Content-Type") == "application/vnd.pypi.simple.v1+json"
    doc = json.loads(resp.read())
    (entry,) = doc["files"]
    assert entry["yanked"] == "broken <build>" and entry["requires-python"] == ">=3.8"
    assert entry["size"] == len(b"sdist bytes") and doc["meta"]["_last-serial"] == filled.serial


def test_redirect_and_not_found(filled: UpstreamModel, server: UpstreamServer) -> None:
    resp = get(server, "/simple/FOO/")
    assert resp.status == 301 and resp.getheader("Location") == "/simple/foo/"
    resp.read()
    assert get(server, "/simple/nope/").status == 404
    assert get(server, "/pypi/nope/json").status == 404
    assert get(server, "/files/foo/other-1.0.tar.gz").status == 404


def test_file_download(filled: UpstreamModel, server: UpstreamServer) -> None:
    resp = get(server, "/files/foo/foo-1.0.tar.gz", "*/*")
    assert resp.status == 200 and resp.read() == b"sdist bytes"
    assert server.paths("/files/*") == ["/files/foo/foo-1.0.tar.gz"]


def test_quarantine_hides_files(filled: UpstreamModel, server: UpstreamServer) -> None:
    filled.set_status("foo", "quarantined", "checking")
    doc = json.loads(get(server, "/simple/foo/", "application/vnd.pypi.simple.v1+json").read())
    assert doc["files"] == [] and doc["project-status"] == {
        "status": "quarantined",
        "reason": "checking",
    }


def test_generated_projects_materialise_on_change(model: UpstreamModel) -> None:
    names = model.generate(3, prefix="g", extra_release=1)
    project = model.project(names[0])
    assert project is not None and list(project.releases) == ["1.0", "1.1"]
    before = model.serial
    model.add_release(names[2], "2.0")
    assert model.serial == before + 1
    assert names[2] in model.projects and names[2] not in model.generated
    project = model.project(names[2])
    assert project is not None and list(project.releases) == ["1.0", "2.0"]


def test_unknown_fault_kind(server: UpstreamServer) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.add_fault("/simple/", "explode")
