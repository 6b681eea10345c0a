"""Every classification rule, with real pip and uv agents, and hostile paths."""

from __future__ import annotations

import pytest

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.classify import (
    ROW_FIELDS,
    AccessRecord,
    Classifier,
    agent_of,
    canonicalize_name,
    record_from_dict,
    record_from_row,
    records_to_dicts,
    records_to_rows,
    route,
)
from piwheels.logger.parse import LogParser
from tests.logger.lines import BOT_UA, BROWSER_UA, PIP_UA, UV_UA, WHEN, json_line

WHL = "numpy-1.21.4-cp39-cp39-linux_armv7l.whl"


def classify(anonymiser: Anonymiser, uri: str, **kwargs: object) -> AccessRecord:
    return Classifier(anonymiser).classify(LogParser().parse(json_line(uri, **kwargs)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ua", "installer"),
    [
        (PIP_UA, "pip"),
        (UV_UA, "uv"),
        ("poetry/1.8.3", "poetry"),
        (BROWSER_UA, None),
        ("curl/7.88.1", None),
        ("Wget/1.21.3", None),
    ],
)
def test_download_by_each_agent(anonymiser: Anonymiser, ua: str, installer: str | None) -> None:
    r = classify(anonymiser, f"/simple/numpy/{WHL}", ua=ua, nbytes=5_000_000)
    assert r.kind == "download"
    assert (r.package, r.filename, r.page) == ("numpy", WHL, None)
    assert r.installer_name == installer
    assert r.bytes_sent == 5_000_000
    assert agent_of(r) == {"pip": "pip", "uv": "uv", "poetry": "other-installer"}.get(
        installer or "", "direct"
    )


def test_download_record_carries_the_agent_facts(anonymiser: Anonymiser) -> None:
    r = classify(anonymiser, f"/simple/numpy/{WHL}")
    assert r.time == WHEN
    assert (r.distro_name, r.distro_version, r.os_name, r.os_version) == (
        "Raspbian GNU/Linux",
        "11",
        "Linux",
        "6.1.21-v7l+",
    )
    assert (r.arch, r.py_impl, r.py_version) == ("armv7l", "CPython", "3.9.2")
    assert (r.installer_name, r.installer_version, r.setuptools_version, r.ci) == (
        "pip",
        "23.2.1",
        "52.0.0",
        False,
    )
    assert r.client != "192.0.2.10"
    assert "192.0.2" not in r.client


@pytest.mark.parametrize(
    ("method", "status"),
    [("HEAD", 200), ("GET", 206), ("GET", 304), ("GET", 404), ("POST", 200), ("GET", 500)],
)
def test_only_get_200_counts(anonymiser: Anonymiser, method: str, status: int) -> None:
    for uri in (f"/simple/numpy/{WHL}", "/simple/numpy/", "/project/numpy/", "/"):
        r = classify(anonymiser, uri, ua=UV_UA, method=method, status=status, nbytes=77)
        assert r.kind == "other"
        assert (r.package, r.filename, r.page) == (None, None, None)
        assert (r.status, r.bytes_sent) == (status, 77)


def test_metadata_is_its_own_kind(anonymiser: Anonymiser) -> None:
    r = classify(anonymiser, f"/simple/numpy/{WHL}.metadata", ua=UV_UA)
    assert (r.kind, r.package, r.filename) == ("metadata", "numpy", f"{WHL}.metadata")


@pytest.mark.parametrize(
    "uri", ["/simple/numpy/", "/simple/numpy", "/simple/numpy/index.html", "/simple/NumPy/"]
)
@pytest.mark.parametrize("ua", [PIP_UA, UV_UA, "poetry/1.8.3"])
def test_index_by_installer(anonymiser: Anonymiser, uri: str, ua: str) -> None:
    r = classify(anonymiser, uri, ua=ua)
    assert (r.kind, r.package) == ("index", "numpy")


def test_index_by_browser_is_other(anonymiser: Anonymiser) -> None:
    assert classify(anonymiser, "/simple/numpy/", ua=BROWSER_UA).kind == "other"


@pytest.mark.parametrize("uri", ["/simple/", "/simple", "/simple/index.html", "/simple/?x=1"])
@pytest.mark.parametrize("ua", [PIP_UA, BROWSER_UA])
def test_index_root_counted_apart(anonymiser: Anonymiser, uri: str, ua: str) -> None:
    r = classify(anonymiser, uri, ua=ua)
    assert (r.kind, r.package) == ("index_root", None)


@pytest.mark.parametrize(
    "uri",
    [
        "/project/Flask_Login/",
        "/project/flask-login",
        "/project/Flask.Login/index.html",
        "/project/flask--login/?utm=x",
    ],
)
def test_project_page(anonymiser: Anonymiser, uri: str) -> None:
    r = classify(anonymiser, uri, ua=BROWSER_UA)
    assert (r.kind, r.package) == ("project", "flask-login")
    assert r.installer_name is None


@pytest.mark.parametrize(
    "uri", ["/project/awscrt/json/", "/project/awscrt/json", "/project/AWSCRT/json/index.json"]
)
def test_json_api(anonymiser: Anonymiser, uri: str) -> None:
    r = classify(anonymiser, uri, ua="python-requests/2.31.0")
    assert (r.kind, r.package) == ("json", "awscrt")


@pytest.mark.parametrize(
    ("uri", "page"),
    [("/", "home"), ("/packages.html", "packages"), ("/faq.html", "faq"), ("/?ref=x", "home")],
)
def test_web_pages(anonymiser: Anonymiser, uri: str, page: str) -> None:
    r = classify(anonymiser, uri, ua=BROWSER_UA)
    assert (r.kind, r.page, r.package) == ("page", page, None)


@pytest.mark.parametrize(
    "uri", [f"/simple/numpy/{WHL}", "/project/numpy/", "/", "/robots.txt", "/simple/numpy/"]
)
def test_bots_counted_apart(anonymiser: Anonymiser, uri: str) -> None:
    r = classify(anonymiser, uri, ua=BOT_UA, nbytes=999)
    assert r.kind == "bot"
    assert r.bytes_sent == 999
    assert agent_of(r) == "bot"


@pytest.mark.parametrize(
    ("uri", "target", "package", "filename"),
    [
        (f"/simple/numpy/{WHL}", "download", "numpy", WHL),
        ("/simple/NumPy/", "index", "numpy", None),
        ("/project/numpy/json/", "json", "numpy", None),
        ("/robots.txt", "other", None, None),
    ],
)
def test_bot_target_kept(
    anonymiser: Anonymiser, uri: str, target: str, package: str | None, filename: str | None
) -> None:
    # Which hit table a bot's request belongs to, with its (validated) package.
    r = classify(anonymiser, uri, ua=BOT_UA)
    assert (r.kind, r.target, r.package, r.filename) == ("bot", target, package, filename)


def test_target_of_excluded_requests(anonymiser: Anonymiser) -> None:
    r = classify(anonymiser, f"/simple/numpy/{WHL}", ua=UV_UA, status=206)
    assert (r.kind, r.target, r.package) == ("other", "download", None)
    r = classify(anonymiser, f"/simple/numpy/{WHL}", ua=PIP_UA)
    assert (r.kind, r.target) == ("download", "download")


def test_bot_with_error_status_still_bot(anonymiser: Anonymiser) -> None:
    assert classify(anonymiser, "/nope", ua=BOT_UA, status=404).kind == "bot"


@pytest.mark.parametrize(
    "uri",
    [
        "/simple/../etc/passwd",
        "/simple/numpy/../../etc/passwd",
        "/simple/numpy/..%2f..%2fetc%2fpasswd",
        "/simple/foo%2fbar/foo-1.0-py3-none-any.whl",
        "/simple/numpy/numpy-1.0-py3-none-any.whl%00.txt",
        "/simple/numpy/numpy\x00.whl",
        "/simple/num\\py/",
        "/project/..%5c..%5cwindows/",
        "/simple//numpy/",
        "/simple/./numpy/",
        "/simple/numpy/./x.whl",
        "/simple/" + "a" * 3000 + "/",
        "/simple/" + "a" * 201 + "/",
        "/simple/numpy/" + "n" * 300 + ".whl",
        "/project/-bad-/",
        "/project/.hidden/",
        "/simple/numpy/sub/x.whl",
        "/simple/numpy/.whl",
        "/simple/numpy/x.whl;rm -rf",
        "/project/numpy/json/extra/",
        "/project/",
        "/static/site.css",
        "/favicon.ico",
        "/a/b.html",
        "/.html",
        "/x y.html",
        "http://evil.example/simple/numpy/",
        "*",
        "",
    ],
)
def test_hostile_and_unknown_paths_are_other(anonymiser: Anonymiser, uri: str) -> None:
    r = classify(anonymiser, uri, ua=PIP_UA)
    assert r.kind == "other"
    assert (r.package, r.filename, r.page) == (None, None, None)


def test_route_is_pure() -> None:
    assert route(f"/simple/numpy/{WHL}?x=1#frag").kind == "download"
    assert route("/simple/Foo.Bar_baz/").package == "foo-bar-baz"


@pytest.mark.parametrize(
    ("name", "canon"),
    [("Flask_Login", "flask-login"), ("zope.component", "zope-component"), ("A-_.b", "a-b")],
)
def test_canonicalize_name(name: str, canon: str) -> None:
    assert canonicalize_name(name) == canon


def test_rows_and_dicts_round_trip(anonymiser: Anonymiser) -> None:
    recs = [
        classify(anonymiser, f"/simple/numpy/{WHL}"),
        classify(anonymiser, "/", ua=BROWSER_UA),
    ]
    rows = records_to_rows(recs)
    assert all(type(row) is tuple and len(row) == len(ROW_FIELDS) for row in rows)
    assert [record_from_row(row) for row in rows] == recs
    dicts = records_to_dicts(recs)
    assert all(type(d) is dict and list(d) == list(ROW_FIELDS) for d in dicts)
    assert [record_from_dict(d) for d in dicts] == recs


def test_records_are_immutable(anonymiser: Anonymiser) -> None:
    r = classify(anonymiser, "/")
    with pytest.raises(AttributeError):
        r.kind = "download"  # type: ignore[misc]


def test_caches_do_not_mix_requests(anonymiser: Anonymiser) -> None:
    c = Classifier(anonymiser)
    p = LogParser()
    a = c.classify(p.parse(json_line(f"/simple/numpy/{WHL}", ua=PIP_UA)))
    b = c.classify(p.parse(json_line(f"/simple/numpy/{WHL}", ua=UV_UA, status=206)))
    d = c.classify(p.parse(json_line(f"/simple/numpy/{WHL}", ua=BOT_UA)))
    assert [a.kind, b.kind, d.kind] == ["download", "other", "bot"]
    assert [a.installer_name, b.installer_name] == ["pip", "uv"]
