"""Real nginx over a SiteWriter tree: negotiation, headers, and real pip and uv clients."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from piwheels.errors import ConfigError
from piwheels.web.model import ProjectData
from piwheels.web.nginx import LOG_FORMAT, PrivateNginx, render_config, render_site

JSON = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV = Path(sys.executable).with_name("uv")


def get(server: PrivateNginx, path: str, method: str = "GET", **headers: str) -> Any:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, "text/html"),
        ("text/html", "text/html"),
        ("*/*", "text/html"),
        (JSON, JSON),
        (PIP_ACCEPT, JSON),
        ("application/vnd.pypi.simple.latest+json", JSON),
        (f"{JSON};q=0.5, text/html", "text/html"),  # html has the higher q
        (f"{JSON};q=0.5, text/html;q=0.4", JSON),
        (f"text/html;q=0.9, {JSON};q=0.95", JSON),
        (f"{JSON};q=0.2, */*;q=0.1", JSON),
        (f"{JSON};q=0, text/html", "text/html"),
        ("application/vnd.pypi.simple.v1+html", "text/html"),
        ("image/png", 406),
        (f"{JSON};q=0", 406),
        ("text/html;q=0", 406),
    ],
)
def test_negotiation(demo_nginx: PrivateNginx, accept: str | None, expected: str | int) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    for path in ("/simple/", "/simple/alpha/"):
        resp = get(demo_nginx, path, **headers)
        assert "Accept" in (resp.getheader("Vary") or ""), path
        if isinstance(expected, int):
            assert resp.status == expected
            continue
        assert resp.status == 200
        assert resp.getheader("Content-Type").split(";")[0] == expected
        if expected == JSON:
            assert json.loads(resp.body)["meta"]["api-version"] == "1.4"
        else:
            assert b'<meta name="pypi:repository-version" content="1.4">' in resp.body


def test_format_parameter_overrides_accept(demo_nginx: PrivateNginx) -> None:
    resp = get(
        demo_nginx,
        "/simple/alpha/?format=application/vnd.pypi.simple.v1%2Bjson",
        Accept="text/html",
    )
    assert resp.status == 200 and resp.getheader("Content-Type") == JSON
    resp = get(demo_nginx, "/simple/alpha/?format=text/html", Accept=JSON)
    assert resp.getheader("Content-Type").startswith("text/html")
    assert get(demo_nginx, "/simple/alpha/?format=image/png").status == 406


def test_caching_and_revalidation(demo_nginx: PrivateNginx, demo_site: Any) -> None:
    resp = get(demo_nginx, "/simple/alpha/", Accept=JSON)
    assert resp.getheader("Cache-Control") == "public, max-age=600"
    etag = resp.getheader("ETag")
    assert etag
    again = get(demo_nginx, "/simple/alpha/", Accept=JSON, If_None_Match=etag)
    assert again.status == 304 and again.body == b""
    _, projects = demo_site
    wheel = projects["alpha"].versions[1].files[0].filename
    for path in (f"/simple/alpha/{wheel}", f"/simple/alpha/{wheel}.metadata"):
        resp = get(demo_nginx, path)
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/octet-stream"
        assert "immutable" in resp.getheader("Cache-Control")
        assert "max-age=365000000" in resp.getheader("Cache-Control")


def test_range_404_cors_redirects(demo_nginx: PrivateNginx, demo_site: Any) -> None:
    root, projects = demo_site
    wheel = projects["alpha"].versions[1].files[0].filename
    data = (root / "simple/alpha" / wheel).read_bytes()
    resp = get(demo_nginx, f"/simple/alpha/{wheel}", Range="bytes=-100")
    assert resp.status == 206 and resp.body == data[-100:]
    missing = get(demo_nginx, "/no/such/page")
    assert missing.status == 404 and b"Not found" in missing.body
    api = get(demo_nginx, "/project/alpha/json/")
    assert api.status == 200 and api.getheader("Content-Type") == "application/json"
    assert api.getheader("Access-Control-Allow-Origin") == "*"
    assert json.loads(api.body)["package"] == "alpha"
    assert (
        get(demo_nginx, "/simple/alpha/", Accept=JSON).getheader("Access-Control-Allow-Origin")
        == "*"
    )
    slashless = get(demo_nginx, "/simple/alpha")
    assert slashless.status == 301 and slashless.getheader("Location") == "/simple/alpha/"
    alias = get(demo_nginx, "/simple/Alpha/", Accept=JSON)  # another spelling: redirected
    assert alias.status == 301 and alias.getheader("Location") == "/simple/alpha/"
    assert get(demo_nginx, "/p/alpha/").getheader("Location") == "/project/alpha/"
    page = get(demo_nginx, "/project/alpha/")
    assert page.status == 200 and b"Alpha" in page.body


@pytest.mark.parametrize(
    "path, location",
    [
        ("/simple/Foo_Bar/", "/simple/foo-bar/"),
        ("/simple/foo.bar/", "/simple/foo-bar/"),
        ("/project/FOO-bar/", "/project/foo-bar/"),
        ("/simple/Foo_Bar", "/simple/foo-bar/"),
        ("/simple/foo-_.BAR/", "/simple/foo-bar/"),
        ("/simple/foo--bar/", "/simple/foo-bar/"),
        ("/project/Foo.Bar/json/", "/project/foo-bar/json/"),
        ("/simple/ALPHA/", "/simple/alpha/"),
        ("/simple/Foo_Bar/?format=text/html", "/simple/foo-bar/?format=text/html"),
        (
            "/simple/FOO_BAR/foo_bar-1.0-py3-none-any.whl",
            "/simple/foo-bar/foo_bar-1.0-py3-none-any.whl",
        ),
        # Past nginx's nesting limit of 100 variables: the chain's checkpoints carry it.
        ("/simple/" + "X" * 180 + "/", "/simple/" + "x" * 180 + "/"),
        ("/simple/" + "Ab._" * 45 + "c/", "/simple/" + "ab-" * 45 + "c/"),
    ],
)
def test_other_spellings_redirect(demo_nginx: PrivateNginx, path: str, location: str) -> None:
    for method in ("GET", "HEAD"):
        resp = get(demo_nginx, path, method, Accept=JSON)
        assert resp.status == 301, (method, path)
        assert resp.getheader("Location") == location
        assert resp.getheader("Access-Control-Allow-Origin") == "*"


def test_redirect_then_negotiation(demo_nginx: PrivateNginx) -> None:
    # A client following the redirect with its Accept header gets the negotiated page.
    for path in ("/simple/Foo_Bar/", "/simple/foo.bar/"):
        first = get(demo_nginx, path, Accept=PIP_ACCEPT)
        page = get(demo_nginx, first.getheader("Location"), Accept=PIP_ACCEPT)
        assert page.status == 200 and page.getheader("Content-Type") == JSON
        assert json.loads(page.body)["name"] == "foo-bar"
        html = get(demo_nginx, first.getheader("Location"), Accept="text/html")
        assert html.getheader("Content-Type").startswith("text/html")
        assert b"foo_bar-1.0-py3-none-any.whl" in html.body
    api = get(demo_nginx, get(demo_nginx, "/project/FOO-bar/json/").getheader("Location"))
    assert api.status == 200 and json.loads(api.body)["display_name"] == "Foo_Bar"


def test_redirects_agree_with_pep_503(demo_nginx: PrivateNginx) -> None:
    import random

    from piwheels.web.model import canonicalize

    rng = random.Random(503)
    alnum = "abcXYZ019"
    conn = http.client.HTTPConnection(demo_nginx.host, demo_nginx.port, timeout=10)
    try:
        for _ in range(200):
            name = rng.choice(alnum) + "".join(
                rng.choice(alnum + "-_.") for _ in range(rng.randrange(0, 30))
            )
            name += rng.choice(alnum)
            conn.request("GET", f"/simple/{name}/")
            resp = conn.getresponse()
            resp.read()
            canon = canonicalize(name)
            if canon == name:
                assert resp.status == 404, name  # canonical, and no such project
            else:
                assert resp.status == 301, name
                assert resp.getheader("Location") == f"/simple/{canon}/", name
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/simple/-foo/",  # no canonical form: not a project name
        "/simple/foo@bar/",
        "/simple/Foo_Bar/a%0d%0aSet-Cookie:%20x=1",  # never copied into the Location header
        "/project/b%C3%A9ta/",
    ],
)
def test_unusable_spellings_are_not_found(demo_nginx: PrivateNginx, path: str) -> None:
    resp = get(demo_nginx, path)
    assert resp.status == 404 and resp.getheader("Location") is None
    assert resp.getheader("Set-Cookie") is None


def test_root_index_files_are_not_names(demo_nginx: PrivateNginx) -> None:
    for path in ("/simple/index.html", "/simple/index.json"):
        resp = get(demo_nginx, path)
        assert resp.status == 200, path
    assert b"foo-bar" in get(demo_nginx, "/simple/index.html").body


def test_logs_served_gzipped(demo_nginx: PrivateNginx, demo_site: Any) -> None:
    from piwheels.web.writer import SiteWriter

    root, _ = demo_site
    SiteWriter(root).write_log(777, "a build log\n" * 100)
    zipped = get(demo_nginx, "/logs/0000/0000/0777.txt", Accept_Encoding="gzip")
    assert zipped.status == 200 and zipped.getheader("Content-Encoding") == "gzip"
    assert zipped.getheader("Content-Type").startswith("text/plain")
    assert gzip.decompress(zipped.body) == b"a build log\n" * 100
    plain = get(demo_nginx, "/logs/0000/0000/0777.txt")
    assert plain.getheader("Content-Encoding") is None and plain.body == b"a build log\n" * 100


def test_big_index_served_precompressed(demo_nginx: PrivateNginx, demo_site: Any) -> None:
    root, _ = demo_site
    for accept, name in (("text/html", "index.html"), (JSON, "index.json")):
        twin = root / "simple/alpha" / f"{name}.gz"
        assert twin.exists(), twin
        resp = get(demo_nginx, "/simple/alpha/", Accept=accept, Accept_Encoding="gzip")
        assert resp.getheader("Content-Encoding") == "gzip"
        assert resp.body == twin.read_bytes()  # the .gz file itself, not compressed on the fly
        assert gzip.decompress(resp.body) == (root / "simple/alpha" / name).read_bytes()


def test_project_pages_compressed_on_the_fly(demo_nginx: PrivateNginx, demo_site: Any) -> None:
    """The project page and JSON API have no twins: nginx compresses them as it sends them,
    and sends them plain to a client that does not take gzip."""
    root, _ = demo_site
    for url, rel in (
        ("/project/alpha/", "project/alpha/index.html"),
        ("/project/alpha/json/", "project/alpha/json/index.json"),
    ):
        page = root / rel
        assert not Path(f"{page}.gz").exists()
        assert len(page.read_bytes()) > 1024  # above nginx's gzip_min_length
        resp = get(demo_nginx, url, Accept_Encoding="gzip")
        assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip", url
        assert gzip.decompress(resp.body) == page.read_bytes()
        plain = get(demo_nginx, url)
        assert plain.getheader("Content-Encoding") is None and plain.body == page.read_bytes()


def test_access_log_format(demo_nginx: PrivateNginx) -> None:
    get(demo_nginx, '/simple/?x="quoted"', User_Agent='pip/26 {"a":"b"}', Accept=JSON)
    record = demo_nginx.records()[-1]
    assert set(record) == {
        "time",
        "addr",
        "method",
        "uri",
        "proto",
        "status",
        "bytes",
        "body_bytes",
        "referer",
        "ua",
        "accept",
        "rt",
        "host",
    }
    assert record["ua"] == 'pip/26 {"a":"b"}' and record["accept"] == JSON
    assert record["status"] == 200 and isinstance(record["rt"], float)
    assert "log_format piwheels escape=json" in LOG_FORMAT


def test_bad_configuration_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        render_site("relative/path")
    with pytest.raises(ConfigError, match="unusable"):
        render_site("/srv/www; evil", access_log="/var/log/a.log")
    conf = render_config(tmp_path / "www", tmp_path, listen="127.0.0.1:8080")
    assert ("user " in conf) == (os.geteuid() == 0)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIP_CONFIG_FILE="/dev/null",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        UV_CACHE_DIR=str(tmp / "uv-cache"),
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
    )
    for var in (
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "UV_INDEX_URL",
        "UV_EXTRA_INDEX_URL",
        "UV_INDEX",
        "UV_DEFAULT_INDEX",
    ):
        env.pop(var, None)
    return env


def run(cmd: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def requests_since(server: PrivateNginx, start: int, agent: str) -> list[dict[str, Any]]:
    return [r for r in server.records()[start:] if r["ua"].startswith(agent)]


def check_used_json_and_metadata(recs: list[dict[str, Any]]) -> None:
    pages = [r for r in recs if r["uri"].startswith("/simple/alpha/") and r["uri"].endswith("/")]
    assert pages and all(r["status"] == 200 and JSON in r["accept"] for r in pages)
    meta = [r["uri"] for r in recs if r["uri"].endswith(".whl.metadata") and r["status"] == 200]
    assert "/simple/alpha/alpha-2.0-py3-none-any.whl.metadata" in meta
    assert "/simple/beta/beta-1.0-py3-none-any.whl.metadata" in meta
    assert not any("gamma" in r["uri"] and r["uri"].endswith(".whl") for r in recs)


@pytest.mark.slow
def test_pip_download_and_install(
    demo_nginx: PrivateNginx, empty_nginx: PrivateNginx, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    index = f"{demo_nginx.url}/simple/"
    start = len(demo_nginx.records())
    out = run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-d",
            str(tmp_path / "dl"),
            "--index-url",
            index,
            "alpha",
        ],
        env,
    )
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [
        "alpha-2.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
    ], out  # 3.0 is yanked
    check_used_json_and_metadata(requests_since(demo_nginx, start, "pip/"))
    # --extra-index-url: the main index (another nginx) has nothing; ours supplies it.
    start_extra = len(empty_nginx.records())
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--target",
            str(tmp_path / "t"),
            "--index-url",
            f"{empty_nginx.url}/simple/",
            "--extra-index-url",
            index,
            "alpha",
        ],
        env,
    )
    assert (tmp_path / "t/alpha/__init__.py").read_text() == "VERSION = '2.0'\n"
    assert (tmp_path / "t/beta/__init__.py").exists()
    # A page under another spelling: pip follows the redirect and resolves the wheel's
    # relative link against the canonical page.
    start_alias = len(demo_nginx.records())
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--target",
            str(tmp_path / "fb"),
            "--no-index",
            "--find-links",
            f"{demo_nginx.url}/simple/Foo_Bar/",
            "Foo.Bar",
        ],
        env,
    )
    assert (tmp_path / "fb/foo_bar/__init__.py").read_text() == "VERSION = '1.0'\n"
    hits = [(r["uri"], r["status"]) for r in requests_since(demo_nginx, start_alias, "pip/")]
    assert ("/simple/Foo_Bar/", 301) in hits and ("/simple/foo-bar/", 200) in hits
    main_hits = requests_since(empty_nginx, start_extra, "pip/")
    assert any(r["uri"] == "/simple/alpha/" and r["status"] == 404 for r in main_hits)
    # A quarantined project offers nothing to install.
    fail = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-d",
            str(tmp_path / "g"),
            "--index-url",
            index,
            "gamma",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fail.returncode != 0 and "gamma" in fail.stderr


@pytest.mark.slow
def test_uv_install_and_compile(
    demo_nginx: PrivateNginx, empty_nginx: PrivateNginx, tmp_path: Path
) -> None:
    if not UV.exists():
        pytest.fail(f"uv is a test requirement and is missing next to {sys.executable}")
    env = _env(tmp_path)
    index = f"{demo_nginx.url}/simple/"
    python = shutil.which("python3", path="/usr/bin") or sys.executable
    run([str(UV), "venv", "--python", python, str(tmp_path / "v")], env)
    vpy = str(tmp_path / "v/bin/python")
    start = len(demo_nginx.records())
    run([str(UV), "pip", "install", "--python", vpy, "--index-url", index, "alpha"], env)
    check_used_json_and_metadata(requests_since(demo_nginx, start, "uv/"))
    check = subprocess.run(
        [vpy, "-c", "import alpha, beta; print(alpha.VERSION)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout.strip() == "2.0"
    (tmp_path / "req.in").write_text("alpha\n")
    out = run(
        [
            str(UV),
            "pip",
            "compile",
            "--python",
            vpy,
            "--no-header",
            "--index-url",
            f"{empty_nginx.url}/simple/",
            "--extra-index-url",
            index,
            str(tmp_path / "req.in"),
        ],
        env,
    )
    pins = [line.split()[0] for line in out.splitlines() if "==" in line]
    assert "alpha==2.0" in pins and "beta==1.0" in pins, out


def test_demo_projects_fixture_is_consistent(demo_site: Any) -> None:
    root, projects = demo_site
    alpha: ProjectData = projects["alpha"]
    for f in alpha.files:
        assert (root / "simple/alpha" / f.filename).stat().st_size == f.size


def test_spare_files_are_never_served() -> None:
    """The writer's spares hold old page bytes: 404 even where the folder is readable."""
    from piwheels.web.writer import SiteWriter

    from .conftest import readable_tempdir

    top = readable_tempdir("piwtest-spare-")
    try:
        site = SiteWriter(top / "www")
        for k in range(3):
            site.write_project(ProjectData("foo", "Foo", summary=f"generation {k}"))
        spares = [p for p in (top / "www/.spare").rglob("*") if p.is_file()]
        assert spares  # the rewrites left old inodes to reuse
        for p in [top / "www/.spare", *(top / "www/.spare").iterdir()]:
            os.chmod(p, 0o755)
        for p in spares:
            os.chmod(p, 0o644)
        with PrivateNginx(top / "www", top / "nginx") as server:
            rel = spares[0].relative_to(top / "www").as_posix()
            assert get(server, f"/{rel}").status == 404
            assert get(server, "/project/foo/").status == 200
    finally:
        shutil.rmtree(top, ignore_errors=True)
