"""The HTTP client against the stand-in server: pages, and each fault classified."""

from __future__ import annotations

import pytest

from piwheels.upstream.client import SimpleClient
from piwheels.upstream.faults import (
    ConnectionFailed,
    HTTPFault,
    InvalidResponse,
    RateLimited,
    ServerError,
    StalePage,
    TruncatedBody,
    UpstreamFault,
    UpstreamTimeout,
)
from tests.upstream.server import FakeFile, UpstreamModel, UpstreamServer


@pytest.fixture
def foo(model: UpstreamModel) -> None:
    model.add_project("Foo", summary="The foo")
    model.add_release("foo", "1.0", ["foo-1.0.tar.gz", FakeFile("foo-1.0-py3-none-any.whl", b"x")])


def test_root_and_project(foo: None, client: SimpleClient, server: UpstreamServer) -> None:
    root = client.get_root()
    assert root is not None
    assert root.projects == {"foo": server.model.serial}
    assert root.spellings == {"foo": "Foo"}
    assert root.serial == server.model.serial
    page = client.get_project("foo")
    assert page is not None
    assert page.serial == server.model.serial
    assert [f.filename for f in page.files] == ["foo-1.0.tar.gz", "foo-1.0-py3-none-any.whl"]
    assert page.files[1].size == 1 and page.files[1].sha256
    assert page.versions == ("1.0",)
    info = client.get_info("foo")
    assert info is not None and (info.name, info.summary) == ("Foo", "The foo")
    # The JSON form was asked for, by the content type PEP 691 names.
    assert all("application/vnd.pypi.simple.v1+json" in r.accept for r in server.requests[:2])


def test_root_etag(foo: None, client: SimpleClient, model: UpstreamModel) -> None:
    root = client.get_root()
    assert root is not None and root.etag
    assert client.get_root(etag=root.etag) is None
    model.bump("foo")
    assert client.get_root(etag=root.etag) is not None


def test_missing_project_is_none(client: SimpleClient) -> None:
    assert client.get_project("nope") is None
    assert client.get_info("nope") is None


def test_no_json_url_means_no_info(foo: None, server: UpstreamServer) -> None:
    c = SimpleClient(server.index_url)
    assert c.get_info("foo") is None
    assert server.paths("/pypi/*") == []


@pytest.mark.parametrize("url", ["ftp://x/simple/", "simple/", "http:///simple/"])
def test_bad_index_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        SimpleClient(url)


@pytest.mark.parametrize(
    ("kind", "options", "error", "fault_kind"),
    [
        ("429", {"retry_after": 7}, RateLimited, "rate-limited"),
        ("500", {}, ServerError, "server-error"),
        ("truncate", {}, TruncatedBody, "truncated"),
        ("invalid-json", {}, InvalidResponse, "invalid"),
        ("slow", {"delay": 1.0}, UpstreamTimeout, "timeout"),
    ],
)
def test_faults_are_classified(
    foo: None,
    server: UpstreamServer,
    kind: str,
    options: dict[str, float],
    error: type[UpstreamFault],
    fault_kind: str,
) -> None:
    c = SimpleClient(server.index_url, timeout=0.3)
    server.add_fault("/simple/foo/", kind, **options)
    with pytest.raises(error) as info:
        c.get_project("foo")
    assert info.value.kind == fault_kind
    assert "/simple/foo/" in str(info.value)
    if kind == "429":
        assert isinstance(info.value, RateLimited) and info.value.retry_after == 7
    # The fault was one request: the next one works (on a fresh connection if needed).
    page = c.get_project("foo")
    assert page is not None and page.files
    c.close()


def test_root_faults(foo: None, client: SimpleClient, server: UpstreamServer) -> None:
    server.add_fault("/simple/", "truncate")
    with pytest.raises(TruncatedBody):
        client.get_root()
    server.add_fault("/simple/", "invalid-json")
    with pytest.raises(InvalidResponse, match="root listing"):
        client.get_root()
    assert client.get_root() is not None


def test_connection_refused() -> None:
    with UpstreamServer() as srv:
        url = srv.index_url
    c = SimpleClient(url, timeout=1.0)
    with pytest.raises(ConnectionFailed):
        c.get_root()


def test_dropped_keepalive_is_retried_once(
    foo: None, client: SimpleClient, server: UpstreamServer
) -> None:
    assert client.get_project("foo") is not None
    server.add_fault("/simple/foo/", "reset")
    assert client.get_project("foo") is not None
    server.add_fault("/simple/foo/", "reset", times=2)
    with pytest.raises(ConnectionFailed):
        client.get_project("foo")


def test_stale_page_retried_with_cache_busting(
    foo: None, client: SimpleClient, server: UpstreamServer, model: UpstreamModel
) -> None:
    serial = model.serial
    server.add_fault("/simple/foo/", "stale", times=1)
    page = client.get_project("foo", min_serial=serial)
    assert page is not None and page.serial == serial
    queries = [r.query for r in server.requests if r.path == "/simple/foo/"]
    assert queries == ["", f"serial={serial}"]
    # Still stale after every retry: a StalePage fault.
    server.add_fault("/simple/foo/", "stale", times=None, lag=1)
    with pytest.raises(StalePage) as info:
        client.get_project("foo", min_serial=serial)
    assert (info.value.serial, info.value.expected) == (serial - 1, serial)


def test_html_only_upstream_is_refused(foo: None, server: UpstreamServer) -> None:
    # The stand-in answers JSON only when asked; a client asking for JSON and
    # getting HTML (an index without PEP 691) must say so, not misparse it.
    class HtmlClient(SimpleClient):
        def _get(self, url, accept, etag=None):  # type: ignore[no-untyped-def]
            return super()._get(url, "text/html", etag)

    with pytest.raises(InvalidResponse, match="text/html"):
        HtmlClient(server.index_url).get_project("foo")


def test_other_http_status(foo: None, server: UpstreamServer) -> None:
    c = SimpleClient(server.url + "/nothing-here/")
    with pytest.raises(HTTPFault) as info:
        c.get_root()
    assert info.value.status == 404


def test_gzip_bodies(model: UpstreamModel) -> None:
    model.add_project("foo")
    model.add_release("foo", "1.0")
    with UpstreamServer(model, gzip=True) as srv:
        c = SimpleClient(srv.index_url)
        root = c.get_root()
        assert root is not None and root.projects == {"foo": model.serial}
        page = c.get_project("foo")
        assert page is not None and [f.filename for f in page.files] == ["foo-1.0.tar.gz"]
        # Cut short, the compressed body is caught as truncated, not misread.
        srv.add_fault("/simple/foo/", "truncate")
        with pytest.raises(TruncatedBody):
            c.get_project("foo")
        c.close()
