"""A synthetic month of logs through piw-logger -> LogIngest -> PostgreSQL -> piw-report.

Every figure the report writes is checked against the generator's ground
truth (or, for time saved, against the definition applied to the log).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import html5lib
import pytest
from sqlalchemy import create_engine, text

from tests.stats.pipeline import (
    add_builds,
    expected_seconds_saved,
    log_records,
    run_logger,
    run_report,
    running_ingest,
)
from tests.synthetic_logs import SPIKE_PACKAGES, SpikeSpec, generate, top

SPIKE_DAYS = [20, 21]
DAYS = 30
LINES = 2000


@pytest.fixture(scope="module")
def farm(
    new_database: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The log, its truth, and a database it was ingested into (once per module)."""
    import tempfile

    tmp = tmp_path_factory.mktemp("pipeline")
    sock_dir = Path(tempfile.mkdtemp(prefix="piw-", dir="/tmp"))
    log = tmp / "access.log.gz"
    truth = generate(
        log,
        gz=True,
        days=DAYS,
        lines_per_day=LINES,
        seed=7,
        fmt="mixed",
        spike=SpikeSpec(days=SPIKE_DAYS, factor=1.0),
    )
    url = new_database(template="piwheels_template")
    engine = create_engine(url)
    records = log_records(log)
    # Builds for every wheel of a few projects: a spiking pure wheel, a popular one, and one
    # file whose build has no duration (it saves nothing).
    chosen = {"flask-login", "requests", "numpy", "markdown"}
    files = {r.filename: r.package for r in records if r.kind == "download" and r.package in chosen}
    durations = {f: 60.0 + 7 * i for i, f in enumerate(sorted(files))}
    durations[sorted(files)[0]] = -1
    add_builds(engine, files, durations)
    address = f"ipc://{sock_dir}/log"
    with running_ingest(engine, address, tmp) as ingest:
        code, err = run_logger([str(log), "--batch-size", "700", "-v"], address, tmp / "secret")
    assert code == 0, err
    out = tmp / "report"
    code, stdout = run_report(["--month", "2021-10", "-o", str(out), "--factor", "1.5"], url)
    assert code == 0, stdout
    yield {
        "truth": truth,
        "url": url,
        "engine": engine,
        "out": out,
        "report": json.loads((out / "report.json").read_text()),
        "records": records,
        "durations": durations,
        "logger_err": err,
        "ingest": ingest,
    }
    engine.dispose()


def test_totals(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    kinds = truth["kinds"]
    t = rep["totals"]
    assert t["downloads"] == kinds["download"] == t["downloads_all"]
    assert t["searches"] == kinds["index"]
    assert t["project_hits"] == kinds["project"]
    assert t["json_hits"] == kinds["json"]
    assert t["web_hits"] == kinds["page"]
    assert t["bot_requests"] == kinds["bot"]
    # Everything the logger sent was stored once (no double counting of resends).
    assert farm["ingest"].stored == len(farm["records"])
    assert f"{truth['malformed']} malformed" in farm["logger_err"]


def test_time_saved(farm: dict[str, Any]) -> None:
    expected = expected_seconds_saved(farm["records"], farm["durations"])
    assert expected > 0
    t = farm["report"]["totals"]
    assert math.isclose(t["seconds_saved"], expected)
    assert math.isclose(t["seconds_saved_all"], expected)
    assert math.isclose(t["years_saved"], expected / (365.25 * 86400))


def test_by_day_month_hour(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    for day, counts in truth["per_day"].items():
        got = rep["days"][day]
        assert got["downloads"] == counts.get("download", 0), day
        assert got["searches"] == counts.get("index", 0), day
        assert got["project_hits"] == counts.get("project", 0), day
        assert got["json_hits"] == counts.get("json", 0), day
    # October has 31 days; the log covers 30: the last is present and empty.
    assert rep["days"]["2021-10-31"]["downloads"] == 0
    assert rep["months"]["2021-10"]["downloads"] == truth["kinds"]["download"]
    assert rep["hours"] == truth["downloads_per_hour"]


def test_top_lists(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    for key, kind in (
        ("downloads", "download"),
        ("searches", "index"),
        ("project_hits", "project"),
        ("json_hits", "json"),
    ):
        assert [tuple(x) for x in rep["top"][key]] == top(truth["packages"][kind]), key
    assert [tuple(x) for x in rep["top"]["pages"]] == top(truth["pages"])


def test_shares(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    platforms = truth["platforms"]["download"]
    for dim, key in (
        ("distro", "distro_name"),
        ("arch", "arch"),
        ("python", "py_version"),
        ("pip_version", "pip_version"),
        ("setuptools_version", "setuptools_version"),
    ):
        assert rep["shares"][dim] == platforms[key], dim
    releases = rep["shares"]["os_release"]
    assert sum(releases.values()) == sum(platforms["distro_name"].values())
    assert releases["Raspbian GNU/Linux 10"] > 0


def test_bandwidth(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    assert rep["bandwidth_by_month"] == truth["bandwidth_by_month"]
    assert rep["bandwidth_by_kind"] == truth["bandwidth"]
    groups = rep["bandwidth_by_group"]
    bw = truth["bandwidth"]
    assert groups["direct downloads"] == bw["download-direct"]
    assert groups["index pages"] == bw["index"] + bw["index_root"]
    assert groups["web site"] == bw["project"] + bw["json"] + bw["page"]


def test_thresholds_and_milestones(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    daily = [c.get("download", 0) for c in truth["per_day"].values()]
    assert rep["thresholds"]
    for th, n in rep["thresholds"].items():
        assert n == sum(1 for v in daily if v >= int(th))
    # The busiest day is one of the spike days, and it passes the top threshold.
    assert rep["best_day"][0] in truth["spike"]["days"]
    total = truth["kinds"]["download"]
    passed = [m for m, _d in rep["milestones"]]
    expected = [m for m in (1000, 2000, 5000, 10_000, 20_000, 50_000) if m <= total]
    assert passed == expected
    running = 0
    for day, counts in sorted(truth["per_day"].items()):
        before, running = running, running + counts.get("download", 0)
        for m, d in rep["milestones"]:
            if d == day:
                assert before < m <= running


def test_spike_found_by_report(farm: dict[str, Any]) -> None:
    truth, rep = farm["truth"], farm["report"]
    assert [s["day"] for s in rep["spikes"]] == truth["spike"]["days"]
    for s in rep["spikes"]:
        names = {p for p, _share in s["packages"]}
        assert names == set(SPIKE_PACKAGES)


def test_report_reads_only_rollups(farm: dict[str, Any], tmp_path: Path) -> None:
    """With every raw hit row gone (in a rolled-back transaction) the report is the same,
    and none of its statements names a raw hit table (spike days included)."""
    import re

    from sqlalchemy import event

    from piwheels.protocols import LOG_TABLES
    from piwheels.stats import queries, report

    statements: list[str] = []

    def record(_conn: Any, _cur: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    with farm["engine"].connect() as conn:
        tx = conn.begin()
        try:
            for table in LOG_TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
            event.listen(conn, "before_cursor_execute", record)
            report.write_report(
                conn, queries.month(2021, 10), tmp_path, charts=False, spike_factor=1.5
            )
        finally:
            tx.rollback()
    again = json.loads((tmp_path / "report.json").read_text())
    assert again == farm["report"]
    assert again["spikes"] and again["totals"]["downloads"] > 0
    raw = re.compile(r"\b(?:FROM|JOIN)\s+(?:" + "|".join(LOG_TABLES) + r")\b", re.I)
    assert statements
    assert [s for s in statements if raw.search(s)] == []


def test_spike_command(farm: dict[str, Any]) -> None:
    day = farm["truth"]["spike"]["days"][0]
    code, out = run_report(["spike", "--date", day, "-o", str(farm["out"] / "spike")], farm["url"])
    assert code == 0, out
    for pkg in SPIKE_PACKAGES:
        assert f"  {pkg}:" in out
    # The injected downloads are all pip on Python 2.7.16: those lead the lists.
    python_line = next(line for line in out.splitlines() if line.startswith("  Python:"))
    assert python_line.startswith("  Python: 2.7.16 ")
    installers = next(line for line in out.splitlines() if line.startswith("  installers:"))
    assert installers.startswith("  installers: pip ")
    assert (farm["out"] / "spike" / f"spike-{day}.png").stat().st_size > 1000
    assert (farm["out"] / "spike" / f"spike-{day}.svg").stat().st_size > 1000
    code, out = run_report(
        ["spike", "--scan", "--from", "2021-10-01", "--to", "2021-10-30", "--factor", "1.5"],
        farm["url"],
    )
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == farm["truth"]["spike"]["days"]


def test_daily_summary(farm: dict[str, Any]) -> None:
    truth = farm["truth"]
    day = "2021-10-05"
    code, out = run_report(["daily", "--date", day], farm["url"])
    assert code == 0
    n = truth["per_day"][day]["download"]
    with farm["engine"].connect() as conn:
        saved = conn.execute(
            text("SELECT sum(seconds_saved) FROM daily_package_stats WHERE day = :d"), {"d": day}
        ).scalar_one()
    assert out.strip() == (
        f"On 5 October 2021, {n:,} packages were downloaded, saving users over "
        f"{math.floor(saved / 86400):,} days of build time"
    )


def test_report_documents(farm: dict[str, Any]) -> None:
    out, rep = farm["out"], farm["report"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    t = rep["totals"]
    for doc in (md, page):
        assert f"{t['downloads']:,}" in doc
        assert f"{t['searches']:,}" in doc
        assert f"{t['json_hits']:,}" in doc
        name, count = rep["top"]["downloads"][0]
        assert name in doc and f"{count:,}" in doc
    parser = html5lib.HTMLParser(strict=True)
    tree = parser.parse(page)
    assert tree is not None
    imgs = [line for line in md.splitlines() if line.startswith("![")]
    assert len(imgs) >= 15
    for line in imgs:
        png = out / line.split("(")[1].rstrip(")")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        svg = png.with_suffix(".svg")
        assert ET.parse(svg).getroot().tag.endswith("svg")
        assert f'src="{png.relative_to(out)}"' in page
