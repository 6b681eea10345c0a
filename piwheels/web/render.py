"""Render the site's pages as bytes from :mod:`piwheels.web.model` values.

Every function here is pure: same input, same bytes, no I/O beyond loading the Chameleon
templates once (they are compiled on first use and kept in memory).

The four pages of each project (simple HTML and JSON, project page, project JSON API) are
rewritten for every project on a full rewrite, so they are built by hand with string joins:
a template engine spends most of its time per interpolated value, and these pages have
hundreds.  The project page takes its frame (head, navigation, footer) from ``layout.pt``,
rendered once per :class:`SiteConfig` with markers that are then cut out, so the site keeps
one layout.  The rarely written site pages (home, FAQ, statistics, search, 404) use
Chameleon templates.

Escaping is in two layers.  :func:`clean` first replaces characters that have no business in
an HTML page (C0/C1 controls, non-characters, bidirectional overrides that can make one name
look like another) with U+FFFD; :func:`escape` then escapes ``& < > "`` exactly as Chameleon
does in its ``${...}``.  Every value from upstream goes through :func:`escape` on the hand-built
pages; on the templates, nothing from upstream is ever inserted with ``structure:``.  JSON
strings go through the same encoder :mod:`json` uses (``ensure_ascii=False``), so the
hand-built JSON is byte for byte ``json.dumps`` of the documents :func:`simple_project_doc`
and :func:`project_json` return (the tests check this); values there are kept exact.

File names and hashes are checked by the model (:func:`piwheels.web.model.check_filename`,
``check_sha256``) to use only characters that need no escaping or quoting in HTML, JSON or
URLs, so they are inserted as they are.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from json.encoder import encode_basestring as _encode_basestring
from pathlib import Path
from typing import Any
from urllib.parse import quote

from chameleon import PageTemplateLoader

from piwheels.web import layout
from piwheels.web.model import (
    AbiStatus,
    FileData,
    HomeStats,
    ProjectData,
    SearchEntry,
    VersionData,
    canonicalize,
)

#: The PEP 629 API version served.  1.4 is honest: the JSON pages carry ``versions``, ``size``
#: and ``upload-time`` (1.1, PEP 700), project status (1.4, PEP 792); 1.2 (PEP 708 ``tracks``)
#: and 1.3 (PEP 740 provenance) add only optional keys.
API_VERSION = "1.4"
SIMPLE_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
SITEMAP_LIMIT = 50_000

TEMPLATES_DIR = Path(__file__).parent / "templates"

_BAD_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufdd0-\ufdef\ufffe\uffff"
    "\ud800-\udfff]"
)
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?$")
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_ABI_RE = re.compile(r"^([a-z]+)(\d)(\d*)(.*)$")
_URL_RE = re.compile(r"^https?://[^\s<>\"']+$")


@dataclass(frozen=True)
class SiteConfig:
    """What the pages need to know about the site itself.

    ``base_url`` is the public address (no trailing slash), used in install instructions and
    sitemaps; ``preinstalled`` holds the apt packages the target OS already has, left out of
    the ``apt install`` line.
    """

    base_url: str = "http://localhost"
    site_name: str = "piwheels"
    preinstalled: frozenset[str] = field(default_factory=frozenset)

    @property
    def simple_url(self) -> str:
        """The index URL users give pip and uv."""
        return self.base_url.rstrip("/") + "/simple/"


def clean(value: object) -> str:
    """*value* as text with characters unfit for an HTML page replaced by U+FFFD."""
    return _BAD_CHARS.sub("\ufffd", "" if value is None else str(value))


@lru_cache(maxsize=256)
def abi_key(abi: str) -> tuple[int, int, str, str]:
    """Order ABIs by Python version, never as strings: ``cp39`` < ``cp311``."""
    m = _ABI_RE.match(abi)
    if not m:
        return (99, 0, abi, "")
    return (int(m.group(2)), int(m.group(3) or 0), m.group(1), m.group(4))


@lru_cache(maxsize=4096)
def upload_time(when: datetime) -> str:
    """PEP 700 ``upload-time``: ``yyyy-mm-ddThh:mm:ss.ffffffZ`` in UTC."""
    # isoformat is several times faster than strftime and pads the year to four digits; the
    # cache serves the second page of a project that shows the same time.
    return _utc(when).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _utc(when: datetime) -> datetime:
    # A naive datetime is taken to be UTC (see the model's docstring).
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    if when.tzinfo is UTC:
        return when
    return when.astimezone(UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else _utc(when).isoformat().replace("+00:00", "Z")


def _file_href(filename: str) -> str:
    # check_filename allows only characters quote() keeps, so this is the name itself; kept
    # as a function so the URL rule has one home (a test checks it is the identity).
    return quote(filename, safe="+!~")


def _safe_url(url: str | None) -> str | None:
    # Only web addresses become links; "javascript:" and friends are dropped.
    if url and _URL_RE.match(url) and len(url) < 2000:
        return url
    return None


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate cannot be UTF-8; replace it rather than fail the whole page.
    return text.encode("utf-8", "replace")


@lru_cache(maxsize=8192)
def escape(value: str) -> str:
    """*value* cleaned (see :func:`clean`) and escaped for HTML text or a quoted attribute.

    The same four replacements Chameleon makes; values repeat a lot across projects
    (``>=3.9``, ``cp311``), hence the cache.
    """
    return (
        _BAD_CHARS.sub("\ufffd", value)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def _jstr(value: str) -> str:
    """A JSON string literal, exactly as ``json.dumps(..., ensure_ascii=False)`` writes it."""
    return _encode_basestring(value)


def _jopt(value: str | None) -> str:
    return "null" if value is None else _encode_basestring(value)


def _jlist(values: Iterable[str]) -> str:
    return "[" + ",".join(map(_encode_basestring, values)) + "]"


@lru_cache(maxsize=4096)
def _jtuple(values: tuple[str, ...]) -> str:
    # Tags and ABI lists repeat from file to file and project to project.
    return _jlist(values)


@lru_cache(maxsize=1024)
def _jshort(value: str | None) -> str:
    return _jopt(value)


@cache
def _loader() -> PageTemplateLoader:
    return PageTemplateLoader(str(TEMPLATES_DIR), auto_reload=False)


def _template(name: str) -> Any:
    return _loader()[name]


def _page(template: str, config: SiteConfig, **values: Any) -> bytes:
    values.setdefault("canonical_url", None)
    text: str = _template(template)(site=config, **values)
    return text.encode("utf-8")


# --- simple index (PEP 503, 592, 629, 658, 691, 700, 714, 792) -------------------------------


def render_simple_root_html(names: Iterable[str]) -> bytes:
    """``simple/index.html``: one anchor per project (canonical names, as stored)."""
    parts = [
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
    ]
    for name in names:
        n = html.escape(clean(name))
        parts.append(f'<a href="{quote(name)}/">{n}</a><br>\n')
    parts.append("</body>\n</html>\n")
    return "".join(parts).encode("utf-8")


def render_simple_root_json(names: Iterable[str]) -> bytes:
    """``simple/index.json``: the PEP 691 root."""
    return _dumps({"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]})


def _simple_files(project: ProjectData) -> list[tuple[VersionData, FileData]]:
    if not project.offers_files:
        return []
    return [(v, f) for v in project.versions for f in v.files]


def project_tracks(project: ProjectData) -> str | None:
    """The PEP 708 ``tracks`` URL of a project, if the model has one."""
    return project.tracks_url


def render_simple_project_html(project: ProjectData) -> bytes:
    """``simple/<name>/index.html``: one anchor per file, hashes and metadata advertised.

    PEP 503 ``#sha256=`` and ``data-requires-python``, PEP 592 ``data-yanked``, PEP 658/714
    ``data-core-metadata`` and ``data-dist-info-metadata``, PEP 629 and PEP 792 meta tags.
    """
    name = project.name
    reason = project.status_reason
    tracks = _safe_url(project_tracks(project))
    parts = [
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
        f'<meta name="pypi:project-status" content="{project.status}">\n',
        f'<meta name="pypi:project-status-reason" content="{escape(reason)}">\n'
        if reason
        else "\n",
        f'<meta name="pypi:tracks" content="{escape(tracks)}">\n' if tracks else "\n",
        f"<title>Links for {name}</title>\n</head>\n<body>\n<h1>Links for {name}</h1>\n",
    ]
    add = parts.append
    if project.offers_files:
        for v in project.versions:
            if not v.files:
                continue
            yanked = f' data-yanked="{escape(v.yank_reason or "")}"' if v.yanked else ""
            for f in v.files:
                # The file name and hashes need no escaping (see the module docstring).
                rp = f.requires_python
                meta = f.metadata_sha256
                add(
                    f'<a href="{f.filename}#sha256={f.sha256}"'
                    + (f' data-requires-python="{escape(rp)}"' if rp else "")
                    + (
                        f' data-core-metadata="sha256={meta}"'
                        f' data-dist-info-metadata="sha256={meta}"'
                        if meta
                        else ""
                    )
                    + f"{yanked}>{f.filename}</a><br>\n"
                )
    add("</body>\n</html>\n")
    return "".join(parts).encode("utf-8")


def simple_project_doc(project: ProjectData) -> dict[str, Any]:
    """The PEP 691 project document as a dict: what :func:`render_simple_project_json` writes.

    The page itself is built by hand for speed; this is its plain definition, and the tests
    check that the two agree byte for byte.
    """
    files = []
    for v, f in _simple_files(project):
        entry: dict[str, Any] = {
            "filename": f.filename,
            "url": _file_href(f.filename),
            "hashes": {"sha256": f.sha256},
            "size": f.size,
            "upload-time": upload_time(f.upload_time),
        }
        if f.requires_python:
            entry["requires-python"] = f.requires_python
        # PEP 714: only "core-metadata"; the old key crashes pip 23.0.
        entry["core-metadata"] = {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
        if v.yanked:
            entry["yanked"] = v.yank_reason or True
        files.append(entry)
    status: dict[str, Any] = {"status": project.status}
    if project.status_reason:
        status["reason"] = project.status_reason
    meta: dict[str, Any] = {"api-version": API_VERSION}
    tracks = _safe_url(project_tracks(project))
    if tracks:
        meta["tracks"] = [tracks]
    return {
        "meta": meta,
        "name": project.name,
        "files": files,
        "versions": [v.version for v in project.versions] if project.offers_files else [],
        "project-status": status,
    }


def render_simple_project_json(project: ProjectData) -> bytes:
    """``simple/<name>/index.json``: PEP 691 with PEP 700 and PEP 792 keys.

    Byte for byte ``json.dumps(simple_project_doc(project))`` (compact, UTF-8), built from
    string pieces: a dict per file costs more than the text it becomes.
    """
    tracks = _safe_url(project_tracks(project))
    parts = [
        f'{{"meta":{{"api-version":"{API_VERSION}"'
        + (f',"tracks":[{_jstr(tracks)}]' if tracks else "")
        + f'}},"name":"{project.name}","files":['
    ]
    add = parts.append
    first = True
    if project.offers_files:
        for v in project.versions:
            if not v.files:
                continue
            if v.yanked:
                yanked = f',"yanked":{_jstr(v.yank_reason) if v.yank_reason else "true"}}}'
            else:
                yanked = "}"
            for f in v.files:
                rp = f.requires_python
                meta = f.metadata_sha256
                add(
                    ('{"filename":"' if first else ',{"filename":"')
                    + f'{f.filename}","url":"{f.filename}","hashes":{{"sha256":"{f.sha256}"}},'
                    f'"size":{f.size},"upload-time":"{upload_time(f.upload_time)}"'
                    + (f',"requires-python":{_jstr(rp)}' if rp else "")
                    + (
                        f',"core-metadata":{{"sha256":"{meta}"}}'
                        if meta
                        else ',"core-metadata":false'
                    )
                    + yanked
                )
                first = False
        add('],"versions":' + _jlist([v.version for v in project.versions]))
    else:
        add('],"versions":[]')
    reason = project.status_reason
    add(
        f',"project-status":{{"status":{_jstr(project.status)}'
        + (f',"reason":{_jstr(reason)}' if reason else "")
        + "}}"
    )
    # A lone surrogate cannot be UTF-8; replace it rather than fail the whole page.
    return "".join(parts).encode("utf-8", "replace")


# --- project page and project JSON API -----------------------------------------------------


def _size_text(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    # Divide step by step, so rounding at each boundary is the same whatever the size.
    value = size / 1000
    if value < 1000:
        return f"{value:.1f} KB"
    value /= 1000
    if value < 1000:
        return f"{value:.1f} MB"
    return f"{value / 1000:.1f} GB"


@lru_cache(maxsize=4096)
def _log_url(build_id: int) -> str:
    """:func:`layout.log_url` for a build id the model has checked (a test compares the two).

    Both project pages ask for each one, hence the cache; only digits and slashes, so it
    needs no escaping in HTML or JSON.
    """
    digits = f"{build_id:012d}"
    return f"/logs/{digits[:-8]}/{digits[-8:-4]}/{digits[-4:]}.txt"


@lru_cache(maxsize=256)
def _abi_order(abis: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(abis, key=abi_key))


def project_abis(project: ProjectData) -> list[str]:
    """The ABI columns of a project page, in Python-version order unless the model says."""
    if project.abis:
        return list(project.abis)
    seen = {abi for v in project.versions for abi in v.builds}
    return sorted(seen, key=abi_key)


def install_version(project: ProjectData) -> VersionData | None:
    """The version ``pip install <name>`` would pick: newest final, not yanked, with files."""
    for v in project.versions:
        if v.files and not v.yanked and not v.prerelease:
            return v
    for v in project.versions:
        if v.files and not v.yanked:
            return v
    return None


def apt_packages(version: VersionData | None, preinstalled: frozenset[str]) -> list[str]:
    """Debian packages a version's wheels need, minus what the OS has; invalid names dropped."""
    if version is None:
        return []
    wanted = {a for f in version.files for a in f.apt_dependencies}
    return sorted(a for a in wanted if _APT_NAME.match(a) and a not in preinstalled)


def pip_requirements(version: VersionData | None) -> list[tuple[str, str | None]]:
    """(requirement text, canonical name or None) for a version's pip dependencies."""
    if version is None:
        return []
    seen: dict[str, str | None] = {}
    for f in version.files:
        for req in f.pip_dependencies:
            m = _REQ_NAME.match(req)
            canon = canonicalize(m.group(1)) if m else None
            # Only names that can be projects here get a link.
            seen.setdefault(req, canon if canon and len(canon) <= 200 else None)
    return sorted(seen.items())


def _cell(project: ProjectData, version: VersionData, abi: str) -> str:
    """One build-status cell of the releases table."""
    st: AbiStatus | None = version.builds.get(abi)
    if st is None:
        if version.skip_reason or project.skip_reason:
            return '<td class="build skipped">skipped</td>\n'
        return '<td class="build pending">pending</td>\n'
    status = st.status
    if st.reason is None and st.log_url is None and st.build_id is not None:
        # The common case (a build with its log at the standard place), spelt out.
        return f'<td class="build {status}"><a href="{_log_url(st.build_id)}">{status}</a></td>\n'
    title = f' title="{escape(st.reason)}"' if st.reason else ""
    if st.log_url:
        href = st.log_url if st.log_url.startswith("/") else _safe_url(st.log_url)
        if href:
            return f'<td class="build {status}"{title}><a href="{escape(href)}">{status}</a></td>\n'
    elif st.build_id is not None:
        return (
            f'<td class="build {status}"{title}><a href="{_log_url(st.build_id)}">{status}</a>'
            "</td>\n"
        )
    return f'<td class="build {status}"{title}>{status}</td>\n'


def _import_view(f: FileData) -> tuple[str, str]:
    """(CSS class, escaped text) of a file's import test."""
    if f.import_ok is None:
        return "untested", "import not tested"
    if f.import_ok:
        return "ok", "imports"
    text = "import fails"
    if f.import_error:
        text += ": " + f.import_error
    if f.missing_libraries:
        text += " (missing " + ", ".join(f.missing_libraries) + ")"
    return "error", escape(text)


_FRAME_MARKS = ("\x00title\x00", "\x00canonical\x00", "\x00head\x00", "\x00content\x00")


@cache
def _frame(config: SiteConfig) -> tuple[str, ...]:
    """``layout.pt`` for *config* cut at the page title, canonical URL, head and content.

    Rendered once per configuration with markers (NUL characters, which no escaped value
    contains) in place of the four parts, so hand-built pages share the templates' frame.
    """
    text: str = _template("frame.pt")(
        site=config,
        page_title=_FRAME_MARKS[0],
        canonical_url=_FRAME_MARKS[1],
        head=_FRAME_MARKS[2],
        content=_FRAME_MARKS[3],
    )
    pieces = []
    for mark in _FRAME_MARKS:
        if text.count(mark) != 1:
            raise ValueError(f"layout.pt must show {mark.strip(chr(0))} exactly once")
        before, text = text.split(mark)
        pieces.append(before)
    pieces.append(text)
    return tuple(pieces)


def _file_item(simple: str, f: FileData) -> str:
    cls, text = _import_view(f)
    rp = f.requires_python
    return (
        f'<li><a href="{simple}{f.filename}">{f.filename}</a>\n'
        f'<span class="size" title="{f.size} bytes">{_size_text(f.size)}</span>\n'
        f'<span class="hash">sha256 <code>{f.sha256}</code></span>\n'
        + (f'<span class="requires-python">requires Python {escape(rp)}</span>\n' if rp else "")
        + f'<span class="import {cls}">{text}</span>\n</li>\n'
    )


def _project_content(project: ProjectData, config: SiteConfig, abis: list[str]) -> str:
    """The ``<article>`` of a project page."""
    name = project.name
    status = project.status
    offers = project.offers_files
    summary = escape(project.summary) if project.summary else ""
    out = [f'<article class="project">\n<h1>{escape(project.display_name)}</h1>\n']
    add = out.append
    if summary:
        add(f'<p class="summary">{summary}</p>\n')
    if status != "active":
        reason = f": {escape(project.status_reason)}" if project.status_reason else ""
        extra = " Its files are not offered." if status == "quarantined" else ""
        add(f'<p class="notice status-{status}">This project is {status}{reason}.{extra}</p>\n')
    if project.skip_reason:
        add(f'<p class="notice">This project is not built: {escape(project.skip_reason)}.</p>\n')

    target = install_version(project)
    if offers:
        apt = apt_packages(target, config.preinstalled)
        simple_url = escape(config.simple_url)
        add('\n<section class="install">\n<h2>Install</h2>\n')
        if apt:
            # apt_packages keeps only valid Debian names: nothing to escape.
            add(
                "<p>Shared libraries needed at run time:</p>\n"
                f"<pre><code>sudo apt install {' '.join(apt)}</code></pre>\n"
            )
        add(
            "<p>With pip:</p>\n"
            f"<pre><code>pip install --extra-index-url {simple_url} {name}</code></pre>\n"
            "<p>With uv:</p>\n"
            f"<pre><code>uv pip install --extra-index-url {simple_url} {name}</code></pre>\n"
            "</section>\n"
        )

    upstream = _safe_url(project.upstream_url)
    add(
        '\n<section class="facts">\n<h2>Facts</h2>\n<dl>\n'
        f'<dt>Downloads (last 30 days)</dt><dd class="downloads-30d">{project.downloads_30d:,}'
        "</dd>\n"
        f'<dt>Downloads (all time)</dt><dd class="downloads-all">{project.downloads_all:,}</dd>\n'
        f"<dt>Versions</dt><dd>{len(project.versions)}</dd>\n"
        f"<dt>Files</dt><dd>{sum(len(v.files) for v in project.versions)}</dd>\n"
    )
    if upstream:
        add(
            f'<dt>Upstream</dt><dd><a href="{escape(upstream)}" rel="nofollow">project page</a>'
            "</dd>\n"
        )
    add('<dt>Data</dt><dd><a href="json/">JSON</a></dd>\n')
    if project.aliases:
        add(f"<dt>Also known as</dt><dd>{escape(', '.join(project.aliases))}</dd>\n")
    add("</dl>\n</section>\n")

    deps = pip_requirements(target)
    if deps:
        add('\n<section class="dependencies">\n<h2>Dependencies</h2>\n<ul>\n')
        for text, canon in deps:
            if canon:
                add(f'<li><a href="{layout.project_url(canon)}">{escape(text)}</a></li>\n')
            else:
                add(f"<li>{escape(text)}</li>\n")
        add("</ul>\n</section>\n")

    add('\n<section class="releases">\n<h2>Releases</h2>\n')
    if not project.versions:
        add("<p>No releases.</p>\n")
    else:
        add(
            '<table>\n<thead><tr><th scope="col">Version</th><th scope="col">Released</th>\n'
            + "\n".join(f'<th scope="col">{escape(abi)}</th>' for abi in abis)
            + "</tr></thead>\n<tbody>\n"
        )
        colspan = len(abis) + 2
        simple = f"../../simple/{name}/"
        for v in project.versions:
            yank_reason = escape(v.yank_reason) if v.yanked and v.yank_reason else ""
            skip_reason = escape(v.skip_reason) if v.skip_reason else ""
            row_class = (
                "version"
                + (" yanked" if v.yanked else "")
                + (" prerelease" if v.prerelease else "")
            )
            released = _utc(v.released).date().isoformat() if v.released else ""
            add(
                f'<tr class="{row_class}">\n<th scope="row">{escape(v.version)}'
                + ('<span class="mark prerelease"> pre-release</span>' if v.prerelease else "")
                + (
                    (
                        f'<span class="mark yanked" title="{yank_reason}"> yanked</span>'
                        if yank_reason
                        else '<span class="mark yanked"> yanked</span>'
                    )
                    if v.yanked
                    else ""
                )
                + (
                    f'<span class="mark skipped" title="{skip_reason}"> skipped</span>'
                    if skip_reason
                    else ""
                )
                + f"</th>\n<td>{released}</td>\n"
                + "".join([_cell(project, v, abi) for abi in abis])
                + "</tr>\n"
            )
            files = v.files if offers else ()
            if yank_reason or skip_reason or files:
                add(f'<tr class="details">\n<td colspan="{colspan}">\n')
                if yank_reason:
                    add(f"<p>Yanked: {yank_reason}</p>\n")
                if skip_reason:
                    add(f"<p>Not built: {skip_reason}</p>\n")
                if files:
                    add(
                        f"<details><summary>{len(files)} file(s)</summary>\n"
                        '<ul class="files">\n'
                        + "".join([_file_item(simple, f) for f in files])
                        + "</ul>\n</details>\n"
                    )
                add("</td>\n</tr>\n")
        add("</tbody>\n</table>\n")
    add("</section>\n</article>\n")
    return "".join(out)


def render_project_html(project: ProjectData, config: SiteConfig) -> bytes:
    """``project/<name>/index.html``: the human page for one project.

    Built by hand inside the ``layout.pt`` frame (see the module docstring): per version
    and ABI the build status linking to its log, the files with size, hash and import test,
    the install lines, dependencies and downloads.
    """
    frame = _frame(config)
    head = (
        f'\n<meta name="description" content="{escape(project.summary)}">\n'
        '<link rel="alternate" type="application/json" href="json/">\n'
    )
    canonical = escape(config.base_url.rstrip("/") + layout.project_url(project.name))
    content = _project_content(project, config, project_abis(project))
    return "".join(
        (
            frame[0],
            escape(project.display_name),
            frame[1],
            canonical,
            frame[2],
            head,
            frame[3],
            content,
            frame[4],
        )
    ).encode("utf-8")


def project_json(project: ProjectData, config: SiteConfig) -> dict[str, Any]:
    """The project JSON API document as a dict (see docs/json-api.rst)."""
    name = project.name
    base = config.base_url.rstrip("/")
    releases = []
    for v in project.versions:
        builds = {}
        for abi, st in sorted(v.builds.items(), key=lambda kv: abi_key(kv[0])):
            log = st.log_url or (layout.log_url(st.build_id) if st.build_id is not None else None)
            builds[abi] = {
                "status": st.status,
                "build_id": st.build_id,
                "log_url": log,
                "reason": st.reason,
                "duration": st.duration.total_seconds() if st.duration is not None else None,
            }
        files = []
        if project.offers_files:
            for f in v.files:
                files.append(
                    {
                        "filename": f.filename,
                        "url": f"/simple/{name}/{_file_href(f.filename)}",
                        "sha256": f.sha256,
                        "size": f.size,
                        "upload_time": upload_time(f.upload_time),
                        "requires_python": f.requires_python,
                        "metadata_sha256": f.metadata_sha256,
                        "abi_tag": f.abi_tag,
                        "platform_tag": f.platform_tag,
                        "builder_abis": list(f.builder_abis),
                        "import_test": {
                            "ok": f.import_ok,
                            "error": f.import_error,
                            "missing_libraries": list(f.missing_libraries),
                        },
                        "apt_dependencies": sorted(f.apt_dependencies),
                        "pip_dependencies": sorted(f.pip_dependencies),
                    }
                )
        releases.append(
            {
                "version": v.version,
                "released": _iso(v.released),
                "prerelease": v.prerelease,
                "yanked": v.yanked,
                "yank_reason": v.yank_reason if v.yanked else None,
                "skip_reason": v.skip_reason,
                "builds": builds,
                "files": files,
            }
        )
    target = install_version(project) if project.offers_files else None
    return {
        "api_version": 1,
        "package": name,
        "display_name": project.display_name,
        "summary": project.summary,
        "status": {"status": project.status, "reason": project.status_reason},
        "skip_reason": project.skip_reason,
        "aliases": list(project.aliases),
        "project_url": base + layout.project_url(name),
        "simple_url": base + layout.simple_url(name),
        "upstream_url": project.upstream_url,
        "downloads": {"last_30_days": project.downloads_30d, "all_time": project.downloads_all},
        "abis": project_abis(project),
        "install": {
            "version": target.version if target else None,
            "apt_dependencies": apt_packages(target, config.preinstalled),
            "pip_dependencies": [t for t, _ in pip_requirements(target)],
        },
        "releases": releases,
    }


@lru_cache(maxsize=4096)
def _jsorted(values: tuple[str, ...]) -> str:
    # Dependency lists repeat from file to file and project to project.
    return _jlist(sorted(values))


def _jbool(value: bool | None) -> str:
    return "null" if value is None else ("true" if value else "false")


@lru_cache(maxsize=4096)
def _file_tail_json(
    abi_tag: str,
    platform_tag: str,
    builder_abis: tuple[str, ...],
    import_ok: bool | None,
    import_error: str | None,
    missing_libraries: tuple[str, ...],
    apt: tuple[str, ...],
    pip: tuple[str, ...],
) -> str:
    # Everything after a file's hashes: the same for most files of a project (one per
    # target) and for many projects, so made once.
    return (
        f'"abi_tag":{_jstr(abi_tag)},"platform_tag":{_jstr(platform_tag)},'
        f'"builder_abis":{_jlist(builder_abis)},'
        f'"import_test":{{"ok":{_jbool(import_ok)},"error":{_jopt(import_error)},'
        f'"missing_libraries":{_jlist(missing_libraries)}}},'
        f'"apt_dependencies":{_jlist(sorted(apt))},'
        f'"pip_dependencies":{_jlist(sorted(pip))}}}'
    )


@lru_cache(maxsize=256)
def _build_head_json(abi: str, status: str) -> str:
    return f'{_jstr(abi)}:{{"status":"{status}","build_id":'


def _release_json(project: ProjectData, v: VersionData) -> str:
    name = project.name
    builds = []
    by_abi = v.builds
    for abi in _abi_order(tuple(by_abi)):
        st = by_abi[abi]
        build_id = st.build_id
        if st.log_url:
            log = _jstr(st.log_url)
        elif build_id is not None:
            if st.reason is None and st.duration is None:
                # The common case (a build with its log at the standard place), spelt out.
                builds.append(
                    f'{_build_head_json(abi, st.status)}{build_id},"log_url":'
                    f'"{_log_url(build_id)}","reason":null,"duration":null}}'
                )
                continue
            log = f'"{_log_url(build_id)}"'
        else:
            log = "null"
        builds.append(
            f"{_build_head_json(abi, st.status)}"
            f"{'null' if build_id is None else build_id},"
            f'"log_url":{log},"reason":{_jopt(st.reason)},'
            f'"duration":{"null" if st.duration is None else repr(st.duration.total_seconds())}}}'
        )
    files = []
    if project.offers_files:
        for f in v.files:
            # Checked hex: nothing to escape.
            meta = "null" if f.metadata_sha256 is None else '"' + f.metadata_sha256 + '"'
            files.append(
                f'{{"filename":"{f.filename}","url":"/simple/{name}/{f.filename}",'
                f'"sha256":"{f.sha256}","size":{f.size},'
                f'"upload_time":"{upload_time(f.upload_time)}",'
                f'"requires_python":{_jshort(f.requires_python)},"metadata_sha256":{meta},'
                + _file_tail_json(
                    f.abi_tag,
                    f.platform_tag,
                    tuple(f.builder_abis),
                    f.import_ok,
                    f.import_error,
                    tuple(f.missing_libraries),
                    tuple(f.apt_dependencies),
                    tuple(f.pip_dependencies),
                )
            )
    return (
        f'{{"version":{_jstr(v.version)},"released":{_jopt(_iso(v.released))},'
        f'"prerelease":{_jbool(v.prerelease)},"yanked":{_jbool(v.yanked)},'
        f'"yank_reason":{_jopt(v.yank_reason if v.yanked else None)},'
        f'"skip_reason":{_jopt(v.skip_reason)},'
        f'"builds":{{{",".join(builds)}}},"files":[{",".join(files)}]}}'
    )


def render_project_json(project: ProjectData, config: SiteConfig) -> bytes:
    """``project/<name>/json/index.json``: the project JSON API.

    Byte for byte ``json.dumps(project_json(project, config))`` (compact, UTF-8), built from
    string pieces for speed; the tests check the two agree.
    """
    name = project.name
    base = config.base_url.rstrip("/")
    target = install_version(project) if project.offers_files else None
    text = (
        f'{{"api_version":1,"package":"{name}",'
        f'"display_name":{_jstr(project.display_name)},"summary":{_jstr(project.summary)},'
        f'"status":{{"status":{_jstr(project.status)},"reason":{_jopt(project.status_reason)}}},'
        f'"skip_reason":{_jopt(project.skip_reason)},"aliases":{_jlist(project.aliases)},'
        f'"project_url":{_jstr(base + layout.project_url(name))},'
        f'"simple_url":{_jstr(base + layout.simple_url(name))},'
        f'"upstream_url":{_jopt(project.upstream_url)},'
        f'"downloads":{{"last_30_days":{project.downloads_30d},'
        f'"all_time":{project.downloads_all}}},'
        f'"abis":{_jlist(project_abis(project))},'
        f'"install":{{"version":{_jopt(target.version if target else None)},'
        f'"apt_dependencies":{_jlist(apt_packages(target, config.preinstalled))},'
        f'"pip_dependencies":{_jlist([t for t, _ in pip_requirements(target)])}}},'
        f'"releases":[{",".join([_release_json(project, v) for v in project.versions])}]}}'
    )
    # A lone surrogate cannot be UTF-8; replace it rather than fail the whole page.
    return text.encode("utf-8", "replace")


# --- site pages --------------------------------------------------------------------------


def _duration_text(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days >= 365:
        return f"{days / 365.25:,.1f} years"
    if days >= 1:
        return f"{days:,.1f} days"
    return f"{delta.total_seconds() / 3600:,.1f} hours"


def render_home(stats: HomeStats, config: SiteConfig) -> bytes:
    """``index.html`` with the live figures."""
    s = {
        "packages_built": f"{stats.packages_built:,}",
        "wheels": f"{stats.wheels:,}",
        "downloads_all": f"{stats.downloads_all:,}",
        "downloads_30d": f"{stats.downloads_30d:,}",
        "time_saved": _duration_text(stats.time_saved),
        "builds_last_hour": f"{stats.builds_last_hour:,}",
        "updated": _utc(stats.updated).strftime("%Y-%m-%d %H:%M UTC") if stats.updated else None,
    }
    return _page(
        "home.pt",
        config,
        page_title="Python wheels",
        s=s,
        install_line=f"pip install --extra-index-url {config.simple_url} <package>",
        canonical_url=config.base_url.rstrip("/") + "/",
    )


def render_search(config: SiteConfig) -> bytes:
    """``packages.html``: the search page (reads ``packages.json`` with search.js)."""
    return _page("search.pt", config, page_title="Packages")


def render_search_index(entries: Iterable[SearchEntry]) -> bytes:
    """``packages.json``: ``[[name, downloads_30d, downloads_all], ...]``."""
    return _dumps([[e.name, e.downloads_30d, e.downloads_all] for e in entries])


def render_stats(charts: Sequence[tuple[str, str]], config: SiteConfig) -> bytes:
    """``stats.html``: the charts the statistics part produced, as (title, image path) pairs."""
    view = [{"title": clean(title), "src": quote(src, safe="/:._-")} for title, src in charts]
    return _page("stats.pt", config, page_title="Statistics", charts=view)


def render_faq(config: SiteConfig) -> bytes:
    """``faq.html``."""
    return _page(
        "faq.pt",
        config,
        page_title="FAQ",
        simple_url=config.simple_url,
        pip_line=f"pip install --extra-index-url {config.simple_url} <package>",
        uv_line=f"uv pip install --extra-index-url {config.simple_url} <package>",
    )


def render_404(config: SiteConfig) -> bytes:
    """``404.html``."""
    return _page("not_found.pt", config, page_title="Not found")


#: Site pages listed in the first sitemap.
STATIC_PAGES = ("", "packages.html", "stats.html", "faq.html")


def render_sitemaps(
    names: Iterable[str], config: SiteConfig, *, limit: int = SITEMAP_LIMIT
) -> list[tuple[str, bytes]]:
    """``sitemap.xml`` (an index) and ``sitemap0.xml``.. (at most *limit* URLs each).

    Returns (path, content) pairs; ``sitemap0.xml`` holds the site pages and the rest the
    project pages.
    """
    base = config.base_url.rstrip("/")

    def urlset(urls: list[str]) -> bytes:
        body = "".join(f"<url><loc>{html.escape(u)}</loc></url>\n" for u in urls)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
            f"{body}</urlset>\n"
        ).encode()

    files = [("sitemap0.xml", urlset([f"{base}/{p}" for p in STATIC_PAGES]))]
    chunk: list[str] = []
    for name in names:
        chunk.append(base + layout.project_url(name))
        if len(chunk) == limit:
            files.append((f"sitemap{len(files)}.xml", urlset(chunk)))
            chunk = []
    if chunk:
        files.append((f"sitemap{len(files)}.xml", urlset(chunk)))
    index = "".join(
        f"<sitemap><loc>{html.escape(base)}/{path}</loc></sitemap>\n" for path, _ in files
    )
    files.insert(
        0,
        (
            "sitemap.xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
                f"{index}</sitemapindex>\n"
            ).encode(),
        ),
    )
    return files
