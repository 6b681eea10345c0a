"""Render the site's pages as bytes from :mod:`piwheels.web.model` values.

Every function here is pure: same input, same bytes, no I/O beyond loading the Chameleon
templates once (they are compiled on first use and kept in memory).

Escaping is in two layers.  Chameleon escapes ``& < > "`` in every ``${...}``; before that,
:func:`clean` replaces characters that have no business in an HTML page (C0/C1 controls,
non-characters, bidirectional overrides that can make one name look like another) with
U+FFFD.  JSON output is produced by :mod:`json`, which escapes everything it must; values there
are kept exact.  Nothing from upstream is ever inserted with ``structure:``.

The simple index root is built by string joins, not a template: it has one line per known
project (600,000 and more), and a template loop would take seconds.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
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


def abi_key(abi: str) -> tuple[int, int, str, str]:
    """Order ABIs by Python version, never as strings: ``cp39`` < ``cp311``."""
    m = _ABI_RE.match(abi)
    if not m:
        return (99, 0, abi, "")
    return (int(m.group(2)), int(m.group(3) or 0), m.group(1), m.group(4))


def upload_time(when: datetime) -> str:
    """PEP 700 ``upload-time``: ``yyyy-mm-ddThh:mm:ss.ffffffZ`` in UTC."""
    return _utc(when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc(when: datetime) -> datetime:
    # A naive datetime is taken to be UTC (see the model's docstring).
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else _utc(when).isoformat().replace("+00:00", "Z")


def _file_href(filename: str) -> str:
    return quote(filename, safe="+!~")


def _safe_url(url: str | None) -> str | None:
    # Only web addresses become links; "javascript:" and friends are dropped.
    if url and re.match(r"^https?://[^\s<>\"']+$", url) and len(url) < 2000:
        return url
    return None


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate cannot be UTF-8; replace it rather than fail the whole page.
    return text.encode("utf-8", "replace")


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


def render_simple_project_html(project: ProjectData) -> bytes:
    """``simple/<name>/index.html``: one anchor per file, hashes and metadata advertised."""
    files = [
        {
            "href": f"{_file_href(f.filename)}#sha256={f.sha256}",
            "filename": f.filename,
            "requires_python": clean(f.requires_python) if f.requires_python else None,
            "core_metadata": f"sha256={f.metadata_sha256}" if f.metadata_sha256 else None,
            "yanked": clean(v.yank_reason or "") if v.yanked else None,
        }
        for v, f in _simple_files(project)
    ]
    text: str = _template("simple_project.pt")(
        api_version=API_VERSION,
        name=project.name,
        status=project.status,
        status_reason=clean(project.status_reason) if project.status_reason else None,
        tracks=_safe_url(project_tracks(project)),
        files=files,
    )
    return text.encode("utf-8")


def project_tracks(project: ProjectData) -> str | None:
    """The PEP 708 ``tracks`` URL of a project, if the model has one."""
    return project.tracks_url


def render_simple_project_json(project: ProjectData) -> bytes:
    """``simple/<name>/index.json``: PEP 691 with PEP 700 and PEP 792 keys."""
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
    doc = {
        "meta": meta,
        "name": project.name,
        "files": files,
        "versions": [v.version for v in project.versions] if project.offers_files else [],
        "project-status": status,
    }
    return _dumps(doc)


# --- project page and project JSON API -----------------------------------------------------


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - the loop always returns


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


def _cell(project: ProjectData, version: VersionData, abi: str) -> dict[str, Any]:
    st: AbiStatus | None = version.builds.get(abi)
    if st is None:
        status = "skipped" if (version.skip_reason or project.skip_reason) else "pending"
        return {"status": status, "label": status, "title": None, "href": None}
    href = (
        st.log_url
        if st.log_url
        else (layout.log_url(st.build_id) if st.build_id is not None else None)
    )
    if href and not href.startswith("/"):
        href = _safe_url(href)
    title = clean(st.reason) if st.reason else None
    return {"status": st.status, "label": st.status, "title": title, "href": href}


def _import_view(f: FileData) -> tuple[str, str]:
    if f.import_ok is None:
        return "untested", "import not tested"
    if f.import_ok:
        return "ok", "imports"
    text = "import fails"
    if f.import_error:
        text += ": " + clean(f.import_error)
    if f.missing_libraries:
        text += " (missing " + ", ".join(clean(x) for x in f.missing_libraries) + ")"
    return "error", text


def render_project_html(project: ProjectData, config: SiteConfig) -> bytes:
    """``project/<name>/index.html``: the human page for one project."""
    abis = project_abis(project)
    name = project.name
    simple = f"../../simple/{name}/"
    versions = []
    for v in project.versions:
        files = []
        if project.offers_files:
            for f in v.files:
                cls, text = _import_view(f)
                files.append(
                    {
                        "href": simple + _file_href(f.filename),
                        "filename": f.filename,
                        "size": f.size,
                        "size_text": _size_text(f.size),
                        "sha256": f.sha256,
                        "requires_python": clean(f.requires_python) or None,
                        "import_class": cls,
                        "import_text": text,
                    }
                )
        row = (
            ["version"]
            + (["yanked"] if v.yanked else [])
            + (["prerelease"] if v.prerelease else [])
        )
        versions.append(
            {
                "version": clean(v.version),
                "prerelease": v.prerelease,
                "yanked": v.yanked,
                "yank_reason": clean(v.yank_reason) if v.yanked and v.yank_reason else None,
                "skip_reason": clean(v.skip_reason) if v.skip_reason else None,
                "released": _utc(v.released).strftime("%Y-%m-%d") if v.released else "",
                "cells": [_cell(project, v, abi) for abi in abis],
                "files": files,
                "row_class": " ".join(row),
            }
        )
    target = install_version(project)
    apt = apt_packages(target, config.preinstalled)
    deps = [
        {"text": clean(text), "href": layout.project_url(canon) if canon else None}
        for text, canon in pip_requirements(target)
    ]
    view = {
        "display_name": clean(project.display_name),
        "summary": clean(project.summary),
        "status": project.status,
        "status_reason": clean(project.status_reason) if project.status_reason else None,
        "skip_reason": clean(project.skip_reason) if project.skip_reason else None,
        "offers_files": project.offers_files,
        "apt_line": ("sudo apt install " + " ".join(apt)) if apt else None,
        "pip_line": f"pip install --extra-index-url {config.simple_url} {name}",
        "uv_line": f"uv pip install --extra-index-url {config.simple_url} {name}",
        "downloads_30d": f"{project.downloads_30d:,}",
        "downloads_all": f"{project.downloads_all:,}",
        "version_count": len(project.versions),
        "file_count": sum(len(v.files) for v in project.versions),
        "upstream_url": _safe_url(project.upstream_url),
        "json_url": "json/",
        "aliases": ", ".join(clean(a) for a in project.aliases),
        "pip_deps": deps,
        "abis": [clean(a) for a in abis],
        "colspan": len(abis) + 2,
        "versions": versions,
    }
    return _page(
        "project.pt",
        config,
        page_title=view["display_name"],
        canonical_url=config.base_url.rstrip("/") + layout.project_url(name),
        p=view,
    )


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


def render_project_json(project: ProjectData, config: SiteConfig) -> bytes:
    """``project/<name>/json/index.json``: the project JSON API."""
    return _dumps(project_json(project, config))


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
