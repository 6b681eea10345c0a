"""A statistics report for one period: Markdown, HTML, charts and the figures as JSON.

:func:`build` turns :class:`~piwheels.stats.queries.Figures` into a list of
blocks (headings, paragraphs, lists, tables, images); the Markdown and HTML
writers render the same blocks, so the two always say the same thing.
``report.json`` holds every figure, for whoever wants to check or reuse them.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from . import queries, spike
from .charts import Charts, preload_charts
from .queries import SECONDS_PER_YEAR, Figures, Period

__all__ = ["Block", "build", "figures_json", "human_bytes", "write_report"]

SHARE_TITLES = {
    "distro": "Distributions",
    "os_release": "OS releases",
    "arch": "Architectures",
    "python": "Python versions",
    "pip_version": "pip versions",
    "setuptools_version": "setuptools versions",
}
SHARE_CHARTS = {
    "distro": "distro-usage",
    "os_release": "os-release-usage",
    "arch": "arch",
    "python": "py-vers",
    "pip_version": "pip-vers",
    "setuptools_version": "setuptools-vers",
}
TOP_TITLES = {
    "downloads": "downloads",
    "searches": "pip searches",
    "project_hits": "project page hits",
    "json_hits": "project JSON downloads",
    "pages": "web pages",
}


@dataclass
class Block:
    """One piece of a report: kind is h1, h2, p, ol, table or img."""

    kind: str
    text: str = ""
    items: Sequence[Any] = ()
    header: Sequence[str] = ()


def n(v: float) -> str:
    return f"{v:,.0f}"


def years(seconds: float) -> str:
    y = seconds / SECONDS_PER_YEAR
    return f"{y:,.1f}" if y < 10 else f"{y:,.0f}"


def human_bytes(v: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(v) < 1000 or unit == "PB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.2f} {unit}"
        v /= 1000
    return f"{v:,.2f} PB"


def short(v: int) -> str:
    """100000 -> 100k, 2500000 -> 2.5M."""
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if v >= div:
            x = v / div
            return f"{x:g}{suffix}"
    return str(v)


def pct(part: float, whole: float) -> str:
    if not whole:
        return "0%"
    p = 100 * part / whole
    return f"{p:.1f}%" if p >= 0.1 or p == 0 else f"{p:.2f}%"


def _share_rows(values: dict[str, int]) -> list[list[str]]:
    total = sum(values.values())
    rows = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    return [[k or "unknown", n(v), pct(v, total)] for k, v in rows]


def build(f: Figures, *, charts: Charts | None = None, spikes: Sequence[Any] = ()) -> list[Block]:
    """The report's blocks; draws the charts into *charts* when given."""
    t = f.totals
    p = f.period
    last = date.fromordinal(p.end.toordinal() - 1)
    b: list[Block] = [Block("h1", f"piwheels statistics: {p.label}")]

    def img(name: str, alt: str) -> None:
        if charts is not None:
            b.append(Block("img", alt, items=(f"images/{name}.png", f"images/{name}.svg")))

    b.append(
        Block(
            "p",
            f"In the period of {p.start:%d %B %Y} to {last:%d %B %Y}, **{n(t.downloads)}** "
            f"packages were downloaded, bringing the total to **{n(t.downloads_all)}**. "
            f"This has saved **{years(t.seconds_saved)} years** in the period, and "
            f"**{years(t.seconds_saved_all)} years** in total. There were **{n(t.searches)}** "
            f"pip searches, **{n(t.project_hits)}** project page hits, **{n(t.web_hits)}** web "
            f"page hits and **{n(t.json_hits)}** project JSON downloads in the period. "
            f"Bots made **{n(f.bots)}** requests, counted apart from all of these.",
        )
    )
    months = list(f.months)
    b.append(Block("h2", "Downloads by month"))
    if charts is not None:
        charts.bars(
            "downloads-by-month", months, [m.downloads for m in f.months.values()],
            title="Downloads by month", ylabel="downloads",
        )  # fmt: skip
    img("downloads-by-month", "Downloads by month")
    b.append(
        Block(
            "table",
            header=("month", "downloads", "time saved (years)", "pip searches"),
            items=[
                [m, n(v.downloads), years(v.seconds_saved), n(v.searches)]
                for m, v in f.months.items()
            ],
        )
    )
    if f.best_day is not None:
        best_month = max(f.months.items(), key=lambda kv: kv[1].downloads)
        b.append(
            Block(
                "p",
                f"**{best_month[0]}** had the most downloads with **{n(best_month[1].downloads)}**"
                f". The highest day was **{f.best_day[0]:%d %B %Y}** with "
                f"**{n(f.best_day[1])}**.",
            )
        )
    b.append(Block("h2", "Downloads by day"))
    if f.thresholds:
        parts = []
        for th in f.thresholds:
            parts.append(
                f"**{f.days_over[th]}** days surpassed **{short(th)}** downloads "
                f"(previous period: {f.previous_days_over[th]})"
            )
        b.append(Block("p", "In this period, " + "; ".join(parts) + "."))
    days = sorted(f.days)
    labels = [d.isoformat() for d in days]
    if charts is not None:
        charts.bars(
            "downloads-by-day", labels, [f.days[d].downloads for d in days],
            title="Downloads by day", ylabel="downloads", lines=f.thresholds,
        )  # fmt: skip
        charts.bars(
            "searches-by-day", labels, [f.days[d].searches for d in days],
            title="pip searches by day", ylabel="searches",
        )  # fmt: skip
        hours = sorted(f.hours)
        charts.series(
            "downloads-by-hour", hours, {"downloads": [f.hours[h] for h in hours]},
            title="Downloads by hour (UTC)", ylabel="downloads per hour",
        )  # fmt: skip
    img("downloads-by-day", "Downloads by day")
    img("searches-by-day", "pip searches by day")
    img("downloads-by-hour", "Downloads by hour")
    b.append(Block("h2", "Time saved"))
    saved = [v.seconds_saved for v in f.months.values()]
    if saved:
        b.append(
            Block(
                "p",
                f"Downloads saved between **{years(min(saved))}** and **{years(max(saved))}** "
                "years of build time per month.",
            )
        )
    if charts is not None:
        charts.bars(
            "time-saved-by-month", months, [s / SECONDS_PER_YEAR for s in saved],
            title="Time saved by month", ylabel="years",
        )  # fmt: skip
    img("time-saved-by-month", "Time saved by month")
    for key, title in TOP_TITLES.items():
        rows = f.top[key]
        b.append(Block("h2", f"Top {len(rows)} {title}"))
        b.append(Block("ol", items=[f"**{name}** ({n(c)})" for name, c in rows]))
    if len(f.top_by_month) > 1:
        b.append(Block("h2", "Top downloads by month"))
        for m, rows in f.top_by_month.items():
            b.append(Block("p", f"In **{m}**:"))
            b.append(Block("ol", items=[f"**{name}** ({n(c)})" for name, c in rows]))
    b.append(Block("h2", "Platforms"))
    b.append(
        Block(
            "p",
            "Shares of downloads by pip and uv, from what their user agents say "
            "(other clients do not say).",
        )
    )
    for dim, title in SHARE_TITLES.items():
        values = f.shares[dim]
        b.append(Block("h3", title))
        b.append(Block("table", header=(title, "downloads", "share"), items=_share_rows(values)))
        if charts is not None:
            charts.shares(SHARE_CHARTS[dim], values, title=title)
        img(SHARE_CHARTS[dim], title)
    if f.python_by_month:
        pms = list(f.python_by_month)
        versions = sorted({v for m in f.python_by_month.values() for v in m})
        if charts is not None:
            charts.stacked(
                "py-vers-over-time", pms,
                {v or "unknown": [f.python_by_month[m].get(v, 0) for m in pms] for v in versions},
                title="Python versions by month", ylabel="downloads",
            )  # fmt: skip
        img("py-vers-over-time", "Python versions by month")
    b.append(Block("h2", "Bandwidth"))
    per_month = {m: sum(v.values()) for m, v in f.bandwidth.items()}
    groups = f.bandwidth_by_group
    total_bw = sum(groups.values())
    if per_month:
        peak = max(per_month.items(), key=lambda kv: kv[1])
        b.append(
            Block(
                "p",
                f"**{human_bytes(total_bw)}** were sent in the period, peaking at "
                f"**{human_bytes(peak[1])}** in **{peak[0]}**. The breakdown: "
                + ", ".join(f"{pct(v, total_bw)} {g}" for g, v in groups.items() if v)
                + ".",
            )
        )
    b.append(
        Block(
            "table",
            header=("kind", "bytes", "share"),
            items=[[k, human_bytes(v), pct(v, total_bw)] for k, v in groups.items()],
        )
    )
    if charts is not None:
        charts.shares("bandwidth", {g: v for g, v in groups.items() if v}, title="Bandwidth")
        bm = list(f.bandwidth)
        charts.stacked(
            "bandwidth-by-month", bm,
            {g: [sum(f.bandwidth[m].get(k, 0) for k in ks) / 1e9 for m in bm]
             for g, ks in queries.BANDWIDTH_GROUPS.items()},
            title="Bandwidth by month", ylabel="GB",
        )  # fmt: skip
    img("bandwidth", "Bandwidth by kind")
    img("bandwidth-by-month", "Bandwidth by month")
    b.append(Block("h2", "Milestones"))
    if f.milestones:
        b.append(
            Block(
                "ul",
                items=[f"Passed **{n(m)}** downloads on {d:%d %B %Y}" for m, d in f.milestones],
            )
        )
    else:
        b.append(Block("p", "No milestone of total downloads was passed in the period."))
    if f.yearly:
        ys = [str(y) for y in f.yearly]
        b.append(
            Block(
                "table",
                header=("year", "downloads", "top day", "downloads that day"),
                items=[
                    [str(y), n(v[0]), "" if v[2] is None else v[2].isoformat(), n(v[1])]
                    for y, v in f.yearly.items()
                ],
            )
        )
        if charts is not None:
            charts.bars(
                "downloads-per-year", ys, [v[0] for v in f.yearly.values()],
                title="Downloads per year", ylabel="downloads",
            )  # fmt: skip
            charts.bars(
                "top-daily-downloads-per-year", ys, [v[1] for v in f.yearly.values()],
                title="Top daily downloads per year", ylabel="downloads",
            )  # fmt: skip
        img("downloads-per-year", "Downloads per year")
        img("top-daily-downloads-per-year", "Top daily downloads per year")
    b.append(Block("h2", "Spikes"))
    if spikes:
        b.append(Block("ul", items=[s.summary() for s in spikes]))
    else:
        b.append(Block("p", "No day in the period rose above its spike threshold."))
    return b


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for bl in blocks:
        if bl.kind in ("h1", "h2", "h3"):
            out.append("#" * int(bl.kind[1]) + " " + bl.text)
        elif bl.kind == "p":
            out.append(bl.text)
        elif bl.kind == "ol":
            out.append("\n".join(f"{i}. {item}" for i, item in enumerate(bl.items, 1)))
        elif bl.kind == "ul":
            out.append("\n".join(f"- {item}" for item in bl.items))
        elif bl.kind == "table":
            rows = [list(bl.header), ["---"] * len(bl.header), *bl.items]
            out.append("\n".join("| " + " | ".join(r) + " |" for r in rows))
        elif bl.kind == "img":
            out.append(f"![{bl.text}]({bl.items[0]})")
    return "\n\n".join(out) + "\n"


def _inline(textv: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", html.escape(textv))


def to_html(blocks: Sequence[Block], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "td:not(:first-child){text-align:right}img{max-width:100%}</style>",
        "</head>",
        "<body>",
    ]
    for bl in blocks:
        if bl.kind in ("h1", "h2", "h3"):
            out.append(f"<{bl.kind}>{_inline(bl.text)}</{bl.kind}>")
        elif bl.kind == "p":
            out.append(f"<p>{_inline(bl.text)}</p>")
        elif bl.kind in ("ol", "ul"):
            items = "".join(f"<li>{_inline(i)}</li>" for i in bl.items)
            out.append(f"<{bl.kind}>{items}</{bl.kind}>")
        elif bl.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in bl.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                for r in bl.items
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif bl.kind == "img":
            png, svg = bl.items
            out.append(
                f'<figure><a href="{html.escape(svg)}"><img src="{html.escape(png)}" '
                f'alt="{html.escape(bl.text)}"></a><figcaption>{html.escape(bl.text)}'
                "</figcaption></figure>"
            )
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def figures_json(f: Figures) -> dict[str, Any]:
    """Every figure as plain JSON-ready data."""
    t = f.totals
    return {
        "period": {"label": f.period.label, "start": f.period.start.isoformat(),
                   "end": f.period.end.isoformat()},
        "totals": {
            "downloads": t.downloads, "downloads_all": t.downloads_all,
            "seconds_saved": t.seconds_saved, "seconds_saved_all": t.seconds_saved_all,
            "years_saved": t.seconds_saved / SECONDS_PER_YEAR,
            "years_saved_all": t.seconds_saved_all / SECONDS_PER_YEAR,
            "searches": t.searches, "project_hits": t.project_hits, "json_hits": t.json_hits,
            "web_hits": t.web_hits, "bot_requests": f.bots,
        },
        "days": {d.isoformat(): {"downloads": v.downloads, "searches": v.searches,
                                 "project_hits": v.project_hits, "json_hits": v.json_hits,
                                 "seconds_saved": v.seconds_saved}
                 for d, v in sorted(f.days.items())},
        "months": {m: {"downloads": v.downloads, "seconds_saved": v.seconds_saved,
                       "searches": v.searches} for m, v in f.months.items()},
        "hours": f.hours,
        "thresholds": {str(k): v for k, v in f.days_over.items()},
        "previous_thresholds": {str(k): v for k, v in f.previous_days_over.items()},
        "top": {k: [list(x) for x in v] for k, v in f.top.items()},
        "top_by_month": {k: [list(x) for x in v] for k, v in f.top_by_month.items()},
        "shares": f.shares,
        "python_by_month": f.python_by_month,
        "bandwidth_by_month": f.bandwidth,
        "bandwidth_by_kind": f.bandwidth_by_kind,
        "bandwidth_by_group": f.bandwidth_by_group,
        "milestones": [[m, d.isoformat()] for m, d in f.milestones],
        "yearly": {str(y): {"downloads": v[0], "top_day": v[1],
                            "top_day_date": None if v[2] is None else v[2].isoformat()}
                   for y, v in f.yearly.items()},
        "best_day": None if f.best_day is None else [f.best_day[0].isoformat(), f.best_day[1]],
    }  # fmt: skip


def write_report(
    conn: Connection,
    period: Period,
    out: Path,
    *,
    formats: Sequence[str] = ("markdown", "html"),
    thresholds: Sequence[int] | None = None,
    charts: bool = True,
    spike_factor: float = 2.0,
    timings: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Write the report of *period* into *out*; returns what was written by kind.

    With *timings*, the wall seconds of each phase are added to its keys:
    ``queries`` (every figure), ``spikes`` (spike scan and analysis),
    ``import`` (waiting for matplotlib after the queries), ``draw`` (every
    chart, PNG and SVG) and ``write`` (Markdown, HTML, JSON).
    """
    clock = _Clock(timings)
    out.mkdir(parents=True, exist_ok=True)
    # matplotlib is imported in a thread while the queries run: they wait on
    # PostgreSQL (the GIL is free meanwhile), so the import costs no wall time.
    loader = preload_charts() if charts else None
    f = queries.collect(conn, period, thresholds=thresholds)
    clock.lap("queries")
    spikes = spike.scan(conn, period.start, period.end, factor=spike_factor)
    clock.lap("spikes")
    ch = None
    if loader is not None:
        loader.join()
        clock.lap("import")
        # Charts are queued while the blocks are built, then drawn in parallel.
        ch = Charts(out / "images", defer=True)
    blocks = build(f, charts=ch, spikes=spikes)
    if ch is not None:
        ch.finish()
        clock.lap("draw")
    written: dict[str, Path] = {}
    if "markdown" in formats:
        written["markdown"] = out / "report.md"
        written["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    if "html" in formats:
        written["html"] = out / "report.html"
        written["html"].write_text(
            to_html(blocks, f"piwheels statistics: {period.label}"), encoding="utf-8"
        )
    data = figures_json(f)
    data["spikes"] = [
        {"day": s.day.isoformat(), "downloads": s.downloads, "baseline": s.baseline,
         "packages": [[d.package, d.share] for d in s.drivers]}
        for s in spikes
    ]  # fmt: skip
    written["json"] = out / "report.json"
    written["json"].write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    clock.lap("write")
    return written


class _Clock:
    """Adds the wall seconds since the last lap to a phase of *timings* (if given)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self.last
        self.last = now
