"""The renderer: standards on the simple index, project pages, site pages, and escaping."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import html5lib
import pytest

from piwheels.errors import InvalidName, InvalidWheel
from piwheels.web import render
from piwheels.web.model import (
    AbiStatus,
    FileData,
    HomeStats,
    ProjectData,
    SearchEntry,
    VersionData,
)
from piwheels.web.render import SiteConfig

CONFIG = SiteConfig(base_url="https://piwheels.test", preinstalled=frozenset({"libc6"}))
NOW = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def file_(name: str = "foo-1.0-cp311-cp311-linux_armv7l.whl", **kw: object) -> FileData:
    values: dict[str, object] = dict(
        filename=name,
        size=1234,
        sha256="a" * 64,
        upload_time=NOW,
        abi_tag="cp311",
        platform_tag="linux_armv7l",
        requires_python=">=3.8,<4",
        metadata_sha256="b" * 64,
        builder_abis=("cp311",),
        import_ok=True,
        apt_dependencies=("libc6", "libfoo1"),
        pip_dependencies=('requests>=2; python_version > "3"', "six"),
    )
    values.update(kw)
    return FileData(**values)  # type: ignore[arg-type]


def project(**kw: object) -> ProjectData:
    v2 = VersionData(
        "2.0",
        NOW,
        builds={
            "cp311": AbiStatus("built", 11),
            "cp39": AbiStatus("failed", 12, reason="compiler error"),
            "cp313": AbiStatus("building"),
        },
        files=(file_(),),
    )
    v1 = VersionData(
        "1.0",
        NOW,
        yanked=True,
        yank_reason="bad release",
        builds={"cp39": AbiStatus("skipped", reason="too old")},
        files=(file_("foo-1.0-cp39-cp39-linux_armv7l.whl", metadata_sha256=None),),
    )
    v3 = VersionData("3.0rc1", NOW, prerelease=True)
    values: dict[str, object] = dict(
        name="foo", display_name="Foo", summary="Foo things", versions=(v3, v2, v1)
    )
    values.update(kw)
    return ProjectData(**values)  # type: ignore[arg-type]


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.meta: dict[str, str | None] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        d = dict(attrs)
        self.tags.append((tag, d))
        if tag == "a":
            self.anchors.append(d)
        if tag == "meta" and "name" in d:
            self.meta[str(d["name"])] = d.get("content")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(data: bytes) -> Anchors:
    p = Anchors()
    p.feed(data.decode("utf-8"))
    p.close()
    return p


def strict_html(data: bytes) -> None:
    """html5lib's strict parser raises on any HTML5 parse error."""
    html5lib.HTMLParser(strict=True).parse(data.decode("utf-8"))


def test_simple_project_html_standards() -> None:
    page = render.render_simple_project_html(project())
    strict_html(page)
    p = parse(page)
    assert p.meta["pypi:repository-version"] == "1.4"
    assert p.meta["pypi:project-status"] == "active"
    assert len(p.anchors) == 2  # one anchor per file
    a = p.anchors[0]
    assert a["href"] == "foo-1.0-cp311-cp311-linux_armv7l.whl#sha256=" + "a" * 64
    assert a["data-requires-python"] == ">=3.8,<4"
    assert a["data-core-metadata"] == "sha256=" + "b" * 64
    assert a["data-dist-info-metadata"] == "sha256=" + "b" * 64
    assert "data-yanked" not in a
    b = p.anchors[1]
    assert b["data-yanked"] == "bad release"
    assert "data-core-metadata" not in b
    assert b"&gt;=3.8,&lt;4" in page  # data-requires-python escaped


def test_simple_project_json_standards() -> None:
    doc = json.loads(render.render_simple_project_json(project()))
    assert doc["meta"] == {"api-version": "1.4"}
    assert doc["name"] == "foo"
    assert doc["versions"] == ["3.0rc1", "2.0", "1.0"]  # PEP 700: versions without files too
    assert doc["project-status"] == {"status": "active"}
    f, g = doc["files"]
    assert f["hashes"] == {"sha256": "a" * 64}
    assert f["size"] == 1234
    assert f["upload-time"] == "2026-05-06T07:08:09.123456Z"
    assert f["core-metadata"] == {"sha256": "b" * 64}
    assert f["requires-python"] == ">=3.8,<4"
    assert "yanked" not in f
    assert g["yanked"] == "bad release"
    assert g["core-metadata"] is False
    for entry in doc["files"]:
        assert "dist-info-metadata" not in entry  # PEP 714: it crashes old pip


def test_yanked_without_reason_and_upload_time_format() -> None:
    naive = file_(upload_time=datetime(2026, 1, 1, 0, 0, 0))
    p = ProjectData("foo", "Foo", versions=(VersionData("1.0", yanked=True, files=(naive,)),))
    doc = json.loads(render.render_simple_project_json(p))
    assert doc["files"][0]["yanked"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["files"][0]["upload-time"])
    anchors = parse(render.render_simple_project_html(p)).anchors
    assert anchors[0]["data-yanked"] == ""


def test_quarantined_project_offers_no_files() -> None:
    p = project(status="quarantined", status_reason="malware")
    html_page = render.render_simple_project_html(p)
    parsed = parse(html_page)
    assert parsed.anchors == []
    assert parsed.meta["pypi:project-status"] == "quarantined"
    assert parsed.meta["pypi:project-status-reason"] == "malware"
    doc = json.loads(render.render_simple_project_json(p))
    assert doc["files"] == [] and doc["versions"] == []
    assert doc["project-status"] == {"status": "quarantined", "reason": "malware"}
    page = render.render_project_html(p, CONFIG)
    assert b".whl" not in page
    api = json.loads(render.render_project_json(p, CONFIG))
    assert all(r["files"] == [] for r in api["releases"])


def test_other_statuses_and_tracks() -> None:
    p = project(status="archived", tracks_url="https://upstream.test/simple/foo/")
    parsed = parse(render.render_simple_project_html(p))
    assert parsed.meta["pypi:project-status"] == "archived"
    assert parsed.meta["pypi:tracks"] == "https://upstream.test/simple/foo/"
    doc = json.loads(render.render_simple_project_json(p))
    assert doc["meta"]["tracks"] == ["https://upstream.test/simple/foo/"]
    assert len(doc["files"]) == 2  # archived projects keep their files


def test_root_pages() -> None:
    page = render.render_simple_root_html(["a-b", "foo"])
    strict_html(page)
    p = parse(page)
    assert [a["href"] for a in p.anchors] == ["a-b/", "foo/"]
    assert p.meta["pypi:repository-version"] == "1.4"
    doc = json.loads(render.render_simple_root_json(["a-b", "foo"]))
    assert doc == {"meta": {"api-version": "1.4"}, "projects": [{"name": "a-b"}, {"name": "foo"}]}


def test_project_page_content() -> None:
    page = render.render_project_html(project(downloads_30d=1234, downloads_all=56789), CONFIG)
    strict_html(page)
    p = parse(page)
    text = "".join(p.text)
    assert "sudo apt install libfoo1" in text  # libc6 is preinstalled
    assert "libc6" not in text.split("sudo apt install", 1)[1].split("\n")[0]
    assert "pip install --extra-index-url https://piwheels.test/simple/ foo" in text
    assert "uv pip install --extra-index-url https://piwheels.test/simple/ foo" in text
    assert "1,234" in text and "56,789" in text
    hrefs = [a.get("href") for a in p.anchors]
    assert "/project/requests/" in hrefs and "/project/six/" in hrefs
    assert "/logs/0000/0000/0011.txt" in hrefs and "/logs/0000/0000/0012.txt" in hrefs
    assert "../../simple/foo/foo-1.0-cp311-cp311-linux_armv7l.whl" in hrefs
    # ABI columns in Python-version order, not string order
    heads = [t for t in re.findall(r'<th scope="col">([^<]*)</th>', page.decode())]
    assert heads == ["Version", "Released", "cp39", "cp311", "cp313"]
    classes = [
        d.get("class") for tag, d in p.tags if tag == "td" and "build" in (d.get("class") or "")
    ]
    assert "build failed" in classes and "build built" in classes and "build building" in classes
    assert "build skipped" in classes and "build pending" in classes
    assert "pre-release" in text and "yanked" in text and "too old" in page.decode()
    assert "imports" in text
    assert "a" * 64 in text and "1.2 KB" in text


def test_project_json_api() -> None:
    doc = json.loads(render.render_project_json(project(), CONFIG))
    assert doc["package"] == "foo"
    assert [r["version"] for r in doc["releases"]] == ["3.0rc1", "2.0", "1.0"]
    assert doc["abis"] == ["cp39", "cp311", "cp313"]
    v2 = doc["releases"][1]
    assert v2["builds"]["cp39"] == {
        "status": "failed",
        "build_id": 12,
        "log_url": "/logs/0000/0000/0012.txt",
        "reason": "compiler error",
        "duration": None,
    }
    f = v2["files"][0]
    assert f["url"] == "/simple/foo/foo-1.0-cp311-cp311-linux_armv7l.whl"
    assert f["import_test"] == {"ok": True, "error": None, "missing_libraries": []}
    assert doc["install"] == {
        "version": "2.0",
        "apt_dependencies": ["libfoo1"],
        "pip_dependencies": ['requests>=2; python_version > "3"', "six"],
    }
    assert doc["releases"][2]["yanked"] is True
    assert doc["releases"][2]["yank_reason"] == "bad release"
    assert doc["releases"][0]["prerelease"] is True


def test_import_failure_shown() -> None:
    f = file_(import_ok=False, import_error="ImportError", missing_libraries=("libbar.so.1",))
    p = ProjectData("foo", "Foo", versions=(VersionData("1.0", files=(f,)),))
    text = "".join(parse(render.render_project_html(p, CONFIG)).text)
    assert "import fails: ImportError (missing libbar.so.1)" in text


def test_site_pages() -> None:
    stats = HomeStats(10, 20, 3000, 400, timedelta(days=800), 5, updated=NOW)
    home = render.render_home(stats, CONFIG)
    text = "".join(parse(home).text)
    assert "3,000" in text and "2.2 years" in text
    charts = render.render_stats([("Downloads per day", "/stats/downloads.png")], CONFIG)
    imgs = [d for t, d in parse(charts).tags if t == "img"]
    assert imgs == [{"src": "/stats/downloads.png", "alt": "Downloads per day"}]
    empty = "".join(parse(render.render_stats([], CONFIG)).text)
    assert "No charts" in empty
    for page in (
        home,
        charts,
        render.render_faq(CONFIG),
        render.render_404(CONFIG),
        render.render_search(CONFIG),
    ):
        strict_html(page)
    assert json.loads(render.render_search_index([SearchEntry("foo", 3, 9)])) == [["foo", 3, 9]]


def test_sitemaps_split() -> None:
    names = [f"p{i}" for i in range(5)]
    files = dict(render.render_sitemaps(names, CONFIG, limit=2))
    assert list(files) == [
        "sitemap.xml",
        "sitemap0.xml",
        "sitemap1.xml",
        "sitemap2.xml",
        "sitemap3.xml",
    ]
    locs = re.findall(rb"<loc>([^<]*)</loc>", files["sitemap.xml"])
    assert locs == [f"https://piwheels.test/sitemap{i}.xml".encode() for i in range(4)]
    all_urls = b"".join(files[f"sitemap{i}.xml"] for i in range(1, 4))
    assert re.findall(rb"<loc>([^<]*)</loc>", all_urls) == [
        f"https://piwheels.test/project/p{i}/".encode() for i in range(5)
    ]
    assert len(re.findall(rb"<url>", files["sitemap1.xml"])) == 2
    assert render.SITEMAP_LIMIT == 50_000


HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)",
    "../../../etc/passwd",
    "ctl\x00\x01\x08\x1b[31m\x7f\x85end",
    "bidi \u202eevil\u202c \u2066x\u2069",
    "x" * 10_000,
    "</title></textarea>]]>&amp;&",
]


def hostile_project(h: str) -> ProjectData:
    f = file_(
        requires_python=h,
        import_ok=False,
        import_error=h,
        missing_libraries=(h,),
        apt_dependencies=(h, "libok1"),
        pip_dependencies=(h, f"ok; extra == '{h}'"),
    )
    v = VersionData(
        h,
        NOW,
        skip_reason=h,
        builds={h: AbiStatus("failed", 1, reason=h, log_url="javascript:alert(1)")},
        files=(f,),
    )
    yanked = VersionData(
        h + "2", NOW, yanked=True, yank_reason=h, files=(file_("foo-2-py3-none-any.whl"),)
    )
    return ProjectData(
        name="foo",
        display_name=h,
        summary=h,
        status="deprecated",
        status_reason=h,
        skip_reason=h,
        versions=(v, yanked),
        upstream_url="javascript:alert(1)",
        tracks_url=h,
    )


BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("h", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_stay_in_their_context(h: str) -> None:
    p = hostile_project(h)
    pages = {
        "simple.html": render.render_simple_project_html(p),
        "project.html": render.render_project_html(p, CONFIG),
        "stats.html": render.render_stats([(h, h)], CONFIG),
        "home.html": render.render_home(HomeStats(), CONFIG),
        "faq.html": render.render_faq(CONFIG),
        "404.html": render.render_404(CONFIG),
        "packages.html": render.render_search(CONFIG),
    }
    for name, page in pages.items():
        strict_html(page)
        text = page.decode("utf-8")
        assert not BAD.search(text), name
        parsed = parse(page)
        for tag, attrs in parsed.tags:
            assert not any(a.startswith("on") for a in attrs), (name, tag, attrs)
            assert tag != "img" or name == "stats.html", name
            if tag == "script":
                assert attrs.get("src") == "/search.js", name
            for key in ("href", "src"):
                value = attrs.get(key) or ""
                assert not value.lower().startswith("javascript:"), (name, tag, value)
    # The hostile text is still there, as text or attribute value (escaped, not interpreted).
    shown = render.clean(h)
    assert shown[:100] in "".join(parse(pages["project.html"]).text)
    anchors = parse(pages["simple.html"]).anchors
    assert anchors[0]["data-requires-python"] == shown
    assert anchors[1]["data-yanked"] == shown
    # The apt line keeps only valid Debian package names.
    proj = "".join(parse(pages["project.html"]).text)
    assert "sudo apt install libok1" in proj
    # JSON keeps values exact and parses.
    for data in (render.render_simple_project_json(p), render.render_project_json(p, CONFIG)):
        doc = json.loads(data)
        assert json.dumps(doc)  # round trip
    api = json.loads(render.render_project_json(p, CONFIG))
    assert api["display_name"] == h and api["summary"] == h
    assert api["releases"][0]["version"] == h
    assert api["releases"][0]["builds"][h]["reason"] == h
    simple = json.loads(render.render_simple_project_json(p))
    assert simple["versions"][0] == h and simple["files"][1]["yanked"] == h
    assert "tracks" not in simple["meta"]  # not a URL, so not published


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: ProjectData("../etc", "x"), InvalidName),
        (lambda: ProjectData("Foo", "Foo"), InvalidName),
        (lambda: ProjectData("foo", "foo", aliases=("bar",)), InvalidName),
        (lambda: ProjectData("foo", "foo", aliases=("../foo",)), InvalidName),
        (lambda: ProjectData("foo", "foo", status="gone"), ValueError),  # type: ignore[arg-type]
        (lambda: file_("../evil.whl"), InvalidWheel),
        (lambda: file_("foo/bar-1.0-py3-none-any.whl"), InvalidWheel),
        (lambda: file_("foo-1.0.tar.gz"), InvalidWheel),
        (lambda: file_(sha256="XYZ"), InvalidWheel),
        (lambda: file_(metadata_sha256="a" * 63), InvalidWheel),
        (lambda: file_(size=-1), InvalidWheel),
        (lambda: VersionData(""), InvalidName),
        (lambda: AbiStatus("exploded"), ValueError),  # type: ignore[arg-type]
        (lambda: AbiStatus("built", -3), ValueError),
        (
            lambda: ProjectData(
                "foo",
                "foo",
                versions=(VersionData("1", files=(file_(),)), VersionData("2", files=(file_(),))),
            ),
            InvalidWheel,
        ),
    ],
)
def test_bad_model_values_rejected(make: object, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        make()  # type: ignore[operator]
    assert "\n" not in str(info.value) and str(info.value)


# --- the hand-built pages agree with their plain definitions ---------------------------------

ALL_PROJECTS = [
    project(),
    project(status="quarantined", status_reason="malware"),
    project(status="archived", tracks_url="https://upstream.test/simple/foo/"),
    project(aliases=("Foo", "FOO"), upstream_url="https://up.test/foo", skip_reason="binary"),
    ProjectData("foo", "foo"),
    ProjectData(
        "foo",
        "foo",
        versions=(
            VersionData("1", yanked=True, files=(file_(import_ok=None, requires_python=None),)),
            VersionData("0.1", builds={"cp311": AbiStatus("built", 3, duration=timedelta(0, 12))}),
        ),
    ),
] + [hostile_project(h) for h in HOSTILE]


@pytest.mark.parametrize("p", ALL_PROJECTS, ids=range(len(ALL_PROJECTS)))
def test_hand_built_json_is_json_dumps_of_the_documents(p: ProjectData) -> None:
    def dumps(doc: object) -> bytes:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "replace")

    assert render.render_simple_project_json(p) == dumps(render.simple_project_doc(p))
    assert render.render_project_json(p, CONFIG) == dumps(render.project_json(p, CONFIG))


def test_escape_matches_chameleon() -> None:
    import html as html_module

    from chameleon import PageTemplate

    attribute = PageTemplate('<p title="${x}"></p>')
    text = PageTemplate("<p>${x}</p>")
    for h in [*HOSTILE, "plain", "", "a'b", "&amp;"]:
        shown = render.clean(h)
        # In attributes, the very same bytes as the templates.
        assert attribute(x=shown) == f'<p title="{render.escape(h)}"></p>'
        # In text, Chameleon leaves '"' alone; escaping it too reads the same.
        ours = render.escape(h)
        assert html_module.unescape(ours) == html_module.unescape(text(x=shown)[3:-4]) == shown
        assert "<" not in ours and ">" not in ours


def test_file_names_need_no_quoting() -> None:
    # check_filename's alphabet: what _file_href may insert as it is
    name = "Ab9._+!~-x.whl"
    file_(name)  # accepted by the model
    assert render._file_href(name) == name


def test_project_page_frame_is_the_layout() -> None:
    page = render.render_project_html(project(), CONFIG).decode()
    other = render.render_404(CONFIG).decode()
    # Same header and footer as the template pages, and no marker left behind.
    assert "\x00" not in page
    assert page.split("<main>")[0].split("<title>")[0] == other.split("<title>")[0]
    assert page.split("</main>")[1] == other.split("</main>")[1]
    assert "<title>Foo - piwheels</title>" in page
    assert '<link rel="canonical" href="https://piwheels.test/project/foo/">' in page


def test_yanked_without_reason_on_project_page() -> None:
    p = ProjectData("foo", "Foo", versions=(VersionData("1.0", yanked=True, files=(file_(),)),))
    page = render.render_project_html(p, CONFIG)
    strict_html(page)
    spans = [d for t, d in parse(page).tags if t == "span" and "yanked" in (d.get("class") or "")]
    assert spans == [{"class": "mark yanked"}]  # no empty title
