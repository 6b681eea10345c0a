"""Charts of a report, drawn with matplotlib (no pyplot) and saved as PNG and SVG.

Drawing is most of a report's time, so the charts are kept cheap: one
:class:`~matplotlib.figure.Figure` per chart size, cleared and reused; fixed
margins instead of ``tight_layout`` (which lays every label out again);
the bars of a chart are one collection (one artist, not one rectangle
each); text in SVG kept as text (not glyph paths); fast PNG compression; at
most :data:`MAX_TICKS` tick labels on an axis.  Both formats are written
because the HTML report shows the PNG and links to the SVG.  With
``defer=True`` charts are only queued, and :meth:`Charts.finish` draws them
in as many forked processes as there are CPUs (a report's charts are
independent), handing out one chart at a time, the costliest first.

matplotlib is imported on first use (only the figure, the Agg and SVG
backends and the ticker; never pyplot), or in the background with
:func:`preload_charts`.  When ``MPLCONFIGDIR`` is unset it points at a
folder of the user's own under the temporary folder, so that matplotlib
never writes into the home folder and its font cache is built once, not
at every report (building it costs about half a second).
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "Charts", "preload_charts"]

FORMATS = ("png", "svg")
#: Slices smaller than this share are merged into "other" in share charts.
MIN_SHARE = 0.01
#: Most tick labels drawn along an axis (text layout is what costs).
MAX_TICKS = 15
#: Colours of the report's charts.
BAR = "#c51a4a"
SHARE = "#6cc04a"
WIDE = (10.0, 4.5)
#: Margins (fractions of the figure) that fit rotated date labels and a title.
_MARGINS = {"left": 0.11, "right": 0.98, "bottom": 0.22, "top": 0.9}
#: Title height (axes fraction); a fixed one is not moved clear of the axes' artists.
_TITLE_Y = 1.01


def _config_dir() -> str:
    """A matplotlib config/cache folder only this user can write, kept across runs."""
    path = os.path.join(tempfile.gettempdir(), f"piw-mpl-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="piw-mpl-")
    st = os.lstat(path)
    # Someone else's folder (or a link) in a shared /tmp: not ours to trust.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return tempfile.mkdtemp(prefix="piw-mpl-")
    return path


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure class and its ``rcParams``, set for fast output."""
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = _config_dir()
    import matplotlib

    # savefig would import the backends itself, once in each drawing process.
    import matplotlib.backends.backend_agg
    import matplotlib.backends.backend_svg
    import matplotlib.collections
    import matplotlib.ticker
    from matplotlib.figure import Figure

    rc = matplotlib.rcParams
    rc["svg.fonttype"] = "none"  # text as <text>, not one path per glyph
    rc["svg.hashsalt"] = "piwheels"  # the same figures give the same SVG
    rc["path.simplify"] = True
    return Figure, rc


def preload_charts() -> threading.Thread:
    """Import matplotlib in a background thread (join it before drawing).

    A report's queries wait on PostgreSQL with the GIL released, so an
    import started before them costs no wall time.
    """
    thread = threading.Thread(target=_matplotlib, name="import-matplotlib", daemon=True)
    thread.start()
    return thread


def merge_small(values: Mapping[str, int], min_share: float = MIN_SHARE) -> dict[str, int]:
    """*values* largest first, slices under *min_share* merged into "other"."""
    total = sum(values.values())
    out: dict[str, int] = {}
    rest = 0
    for k, v in sorted(values.items(), key=lambda kv: (-kv[1], kv[0])):
        if total and v / total < min_share:
            rest += v
        else:
            out[k or "unknown"] = out.get(k or "unknown", 0) + v
    if rest:
        out["other"] = out.get("other", 0) + rest
    return out


def _thousands(v: float, _pos: int) -> str:
    return f"{v:,.0f}"


class Charts:
    """Writes charts into *folder*; :attr:`written` lists the names (without suffix)."""

    def __init__(
        self, folder: Path, *, formats: Sequence[str] = FORMATS, defer: bool = False
    ) -> None:
        self.folder = folder
        self.formats = tuple(formats)
        self.written: list[str] = []
        self.defer = defer
        self._queue: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        folder.mkdir(parents=True, exist_ok=True)
        # Imported here even when deferring: forked workers then inherit it.
        self._Figure, _rc = _matplotlib()
        from matplotlib.collections import PolyCollection
        from matplotlib.ticker import FuncFormatter

        self._PolyCollection = PolyCollection
        self._formatter = FuncFormatter(_thousands)
        self._figures: dict[tuple[float, float], Any] = {}

    def _chart(self, kind: str, name: str, *args: Any, **kwargs: Any) -> str:
        if self.defer:
            self._queue.append((kind, (name, *args), kwargs))
            self.written.append(name)
            return name
        getattr(self, f"_{kind}")(name, *args, **kwargs)
        self.written.append(name)
        return name

    def finish(self, workers: int | None = None) -> None:
        """Draw the queued charts, in *workers* processes (default: one per CPU)."""
        queue, self._queue = self._queue, []
        workers = min(workers or os.cpu_count() or 1, len(queue))
        if workers <= 1:
            for kind, args, kwargs in queue:
                getattr(self, f"_{kind}")(*args, **kwargs)
            return
        ctx = multiprocessing.get_context("fork")
        # One chart per task, costliest first, so neither process idles at the end.
        queue.sort(key=_cost, reverse=True)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_draw, [(self.folder, self.formats, job) for job in queue]))

    def _axes(self, size: tuple[float, float], margins: Mapping[str, float] = _MARGINS) -> Any:
        """Fresh axes on the (reused) figure of *size*."""
        fig = self._figures.get(size)
        if fig is None:
            fig = self._figures[size] = self._Figure(figsize=size, dpi=100)
        fig.clear()
        fig.subplots_adjust(**margins)
        ax = fig.add_subplot()
        # Fixed axis label places: placing them by the tick labels' extents
        # costs a layout pass of every tick label at each save.
        ax.yaxis.set_label_coords(-0.08, 0.5)
        if size == WIDE:
            ax.xaxis.set_label_coords(0.5, -0.2)
        return ax

    def _save(self, ax: Any, name: str) -> None:
        fig = ax.figure
        for fmt in self.formats:
            kwargs: dict[str, Any] = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
            fig.savefig(self.folder / f"{name}.{fmt}", format=fmt, dpi=100, **kwargs)

    def _bar_collection(
        self,
        ax: Any,
        values: Sequence[float],
        bottom: Sequence[float],
        color: str,
        label: str | None = None,
    ) -> None:
        """Vertical bars 0.8 wide at x = 0, 1, ..., drawn as one artist."""
        verts = [
            ((i - 0.4, b), (i - 0.4, b + v), (i + 0.4, b + v), (i + 0.4, b))
            for i, (v, b) in enumerate(zip(values, bottom, strict=True))
        ]
        coll = self._PolyCollection(verts, facecolors=color, edgecolors="none", label=label)
        ax.add_collection(coll, autolim=False)

    def _xlabels(self, ax: Any, labels: Sequence[str]) -> None:
        step = max(1, -(-len(labels) // MAX_TICKS))
        ticks = list(range(0, len(labels), step))
        ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right", fontsize=8)
        ax.set_xlim(-0.6, max(len(labels), 1) - 0.4)

    def bars(
        self,
        name: str,
        labels: Sequence[str],
        values: Sequence[float],
        *,
        title: str,
        ylabel: str,
        lines: Sequence[float] = (),
    ) -> str:
        """A bar chart (one bar per label), with optional horizontal threshold lines."""
        return self._chart(
            "bars", name, list(labels), list(values), title=title, ylabel=ylabel, lines=list(lines)
        )

    def series(
        self,
        name: str,
        labels: Sequence[str],
        lines: Mapping[str, Sequence[float]],
        *,
        title: str,
        ylabel: str,
    ) -> str:
        """One line per entry of *lines*."""
        return self._chart("series", name, list(labels), dict(lines), title=title, ylabel=ylabel)

    def shares(self, name: str, values: Mapping[str, int], *, title: str) -> str:
        """Horizontal bars of each value's share (small ones merged)."""
        return self._chart("shares", name, dict(values), title=title)

    def stacked(
        self,
        name: str,
        labels: Sequence[str],
        stacks: Mapping[str, Sequence[float]],
        *,
        title: str,
        ylabel: str,
    ) -> str:
        """Stacked bars: one stack per label, one colour per entry of *stacks*."""
        return self._chart("stacked", name, list(labels), dict(stacks), title=title, ylabel=ylabel)

    # -- drawing -------------------------------------------------------------------

    def _bars(
        self,
        name: str,
        labels: Sequence[str],
        values: Sequence[float],
        *,
        title: str,
        ylabel: str,
        lines: Sequence[float] = (),
    ) -> None:
        ax = self._axes(WIDE)
        self._bar_collection(ax, values, [0.0] * len(values), BAR)
        top = max([*values, *lines, 0])
        ax.set_ylim(0, top * 1.05 or 1)
        self._xlabels(ax, labels)
        for y in lines:
            ax.axhline(y, color="#555", linewidth=0.8, linestyle="--")
        ax.set_title(title, y=_TITLE_Y)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(self._formatter)
        self._save(ax, name)

    def _series(
        self,
        name: str,
        labels: Sequence[str],
        lines: Mapping[str, Sequence[float]],
        *,
        title: str,
        ylabel: str,
    ) -> None:
        ax = self._axes(WIDE)
        x = range(len(labels))
        for label, values in lines.items():
            ax.plot(x, values, label=label, linewidth=1.2)
        self._xlabels(ax, labels)
        ax.set_title(title, y=_TITLE_Y)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(self._formatter)
        if len(lines) > 1:
            ax.legend(fontsize=8)
        self._save(ax, name)

    def _shares(self, name: str, values: Mapping[str, int], *, title: str) -> None:
        merged = merge_small(values)
        total = sum(merged.values()) or 1
        labels = list(merged)[::-1]
        pct = [100 * merged[k] / total for k in labels]
        height = round(0.4 * len(labels) + 1.5, 1)
        # Room for labels on the left; the title and the axis label in fixed inches.
        margins = {
            "left": 0.25,
            "right": 0.97,
            "bottom": 0.55 / height,
            "top": 1 - 0.4 / height,
        }
        ax = self._axes((8.0, height), margins)
        y = range(len(labels))
        ax.barh(y, pct, color=SHARE)
        ax.set_yticks(y, labels, fontsize=8)
        for i, p in enumerate(pct):
            ax.text(p, i, f" {p:.1f}%", va="center", fontsize=8)
        ax.set_xlabel("share (%)")
        ax.set_xlim(0, max(pct, default=1) * 1.15 + 1)
        ax.set_title(title, y=_TITLE_Y)
        self._save(ax, name)

    def _stacked(
        self,
        name: str,
        labels: Sequence[str],
        stacks: Mapping[str, Sequence[float]],
        *,
        title: str,
        ylabel: str,
    ) -> None:
        ax = self._axes(WIDE)
        bottom = [0.0] * len(labels)
        for i, (key, values) in enumerate(stacks.items()):
            self._bar_collection(ax, values, bottom, f"C{i % 10}", label=key)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylim(0, max(bottom, default=0) * 1.05 or 1)
        self._xlabels(ax, labels)
        ax.set_title(title, y=_TITLE_Y)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        self._save(ax, name)


_Job = tuple[str, tuple[Any, ...], dict[str, Any]]
#: A worker's Charts (its figures are reused from one chart to the next).
_worker: Charts | None = None


def _cost(job: _Job) -> int:
    """A rough cost of drawing *job*: its points and labels (for ordering only)."""
    kind, args, _kwargs = job
    if kind == "shares":
        return 2 * len(args[1])
    data = args[2]
    if isinstance(data, Mapping):
        return sum(len(v) for v in data.values())
    return len(data)


def _draw(task: tuple[Path, Sequence[str], _Job]) -> None:
    """Worker: draw one job (queued by a deferring :class:`Charts`) into its folder."""
    global _worker
    folder, formats, (kind, args, kwargs) = task
    if _worker is None or _worker.folder != folder or _worker.formats != tuple(formats):
        _worker = Charts(folder, formats=formats)
    getattr(_worker, f"_{kind}")(*args, **kwargs)


def day_labels(days: Sequence[date]) -> list[str]:
    return [d.isoformat() for d in days]
