"""Charts of a report, drawn with matplotlib's Agg backend and saved as PNG and SVG.

matplotlib is imported on first use (it takes a few tenths of a second),
with ``MPLCONFIGDIR`` pointed at a temporary folder when unset so that it
never writes into the home folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "Charts"]

FORMATS = ("png", "svg")
#: Slices smaller than this share are merged into "other" in share charts.
MIN_SHARE = 0.01


def _pyplot() -> Any:
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="piw-mpl-")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


class Charts:
    """Writes charts into *folder*; :attr:`written` lists the names (without suffix)."""

    def __init__(self, folder: Path, *, formats: Sequence[str] = FORMATS) -> None:
        self.folder = folder
        self.formats = tuple(formats)
        self.written: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        self.plt = _pyplot()

    def _save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        for fmt in self.formats:
            fig.savefig(self.folder / f"{name}.{fmt}", format=fmt, dpi=100)
        self.plt.close(fig)
        self.written.append(name)
        return name

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
        fig, ax = self.plt.subplots(figsize=(10, 4.5))
        x = range(len(labels))
        ax.bar(x, values, color="#c51a4a", width=0.8)
        step = max(1, len(labels) // 15)
        ax.set_xticks(list(x)[::step])
        ax.set_xticklabels(list(labels)[::step], rotation=45, ha="right", fontsize=8)
        for y in lines:
            ax.axhline(y, color="#555", linewidth=0.8, linestyle="--")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(self._thousands())
        return self._save(fig, name)

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
        fig, ax = self.plt.subplots(figsize=(10, 4.5))
        x = range(len(labels))
        for label, values in lines.items():
            ax.plot(list(x), list(values), label=label, linewidth=1.2)
        step = max(1, len(labels) // 15)
        ax.set_xticks(list(x)[::step])
        ax.set_xticklabels(list(labels)[::step], rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_formatter(self._thousands())
        if len(lines) > 1:
            ax.legend(fontsize=8)
        return self._save(fig, name)

    def shares(self, name: str, values: Mapping[str, int], *, title: str) -> str:
        """Horizontal bars of each value's share (small ones merged)."""
        merged = merge_small(values)
        total = sum(merged.values()) or 1
        labels = list(merged)[::-1]
        pct = [100 * merged[k] / total for k in labels]
        fig, ax = self.plt.subplots(figsize=(8, 0.4 * len(labels) + 1.5))
        ax.barh(labels, pct, color="#6cc04a")
        for i, p in enumerate(pct):
            ax.text(p, i, f" {p:.1f}%", va="center", fontsize=8)
        ax.set_xlabel("share (%)")
        ax.set_xlim(0, max(pct, default=1) * 1.15 + 1)
        ax.set_title(title)
        return self._save(fig, name)

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
        fig, ax = self.plt.subplots(figsize=(10, 4.5))
        bottom = [0.0] * len(labels)
        for key, values in stacks.items():
            ax.bar(labels, values, bottom=bottom, label=key)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        self.plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=8)
        return self._save(fig, name)

    @staticmethod
    def _thousands() -> Any:
        from matplotlib.ticker import FuncFormatter

        return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def day_labels(days: Sequence[date]) -> list[str]:
    return [d.isoformat() for d in days]
