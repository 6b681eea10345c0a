"""The synthetic log's ground truth equals what the logger counts from the log itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.reader import LogReader
from tests.logger.lines import SECRET
from tests.synthetic_logs import SPIKE_PACKAGES, SpikeSpec, generate, tally_records, top


def counted(path: Path) -> dict[str, Any]:
    reader = LogReader(Anonymiser("hash", SECRET))
    records = list(reader.read_files([path]))
    return tally_records(records, lines=reader.stats.lines, malformed=reader.stats.malformed_total)


def assert_same(truth: dict[str, Any], got: dict[str, Any]) -> None:
    # Key by key, so a failure names the figure that differs.
    for key, value in got.items():
        assert value == truth[key], key


@pytest.mark.parametrize(
    ("fmt", "offset", "gz"), [("json", 0, False), ("combined", -5, False), ("mixed", 2, True)]
)
def test_truth_equals_counts(tmp_path: Path, fmt: str, offset: int, gz: bool) -> None:
    path = tmp_path / "access.log"
    spike = SpikeSpec(days=[2])
    truth = generate(
        path,
        gz=gz,
        days=4,
        lines_per_day=1200,
        seed=3,
        fmt=fmt,
        utc_offset=offset,
        spike=spike,
    )
    assert json.loads(Path(f"{path}.truth.json").read_text()) == truth
    got = counted(path)
    assert_same(truth, got)
    # The truth is not trivially empty: every kind and agent occurs.
    assert set(truth["kinds"]) == {
        "download",
        "metadata",
        "index",
        "index_root",
        "project",
        "json",
        "page",
        "bot",
        "other",
    }
    assert set(truth["downloads_by_agent"]) == {"pip", "uv", "other-installer", "direct"}
    assert truth["malformed"] > 0
    assert len(truth["per_day"]) == 4
    assert {"Raspbian GNU/Linux", "Debian GNU/Linux", "Ubuntu"} <= set(
        truth["platforms"]["download"]["distro_name"]
    )
    assert {"armv7l", "aarch64", "armv6l"} <= set(truth["platforms"]["index"]["arch"])


def test_spike_is_visible_in_the_truth(tmp_path: Path) -> None:
    truth = generate(
        tmp_path / "a.log", days=5, lines_per_day=1500, seed=5, spike=SpikeSpec(days=[3])
    )
    spike = truth["spike"]
    assert spike["packages"] == SPIKE_PACKAGES
    assert spike["days"] == ["2021-10-04"]
    per_day = {d: c["download"] for d, c in truth["per_day"].items()}
    assert per_day["2021-10-04"] > 1.3 * per_day["2021-10-03"]
    # On the spike day the injected packages lead the top list, the first one doubled.
    days = spike["package_days"]
    on_day = {p: days[p].get("2021-10-04", 0) for p in SPIKE_PACKAGES}
    before = {p: days[p].get("2021-10-03", 0) for p in SPIKE_PACKAGES}
    assert all(on_day[p] > 10 * max(1, before[p]) for p in SPIKE_PACKAGES)
    assert on_day["flask-login"] > 1.5 * on_day["markdown"]


def test_deterministic_from_seed(tmp_path: Path) -> None:
    def digest(name: str, seed: int) -> str:
        generate(tmp_path / name, days=2, lines_per_day=300, seed=seed)
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    assert digest("a.log", 1) == digest("b.log", 1)
    assert digest("a.log", 1) != digest("c.log", 2)


def test_top_breaks_ties_by_name() -> None:
    assert top({"a": 1, "c": 3, "b": 3}, 2) == [("b", 3), ("c", 3)]


def test_script(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    script = Path(__file__).parent.parent / "synthetic_logs.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--days",
            "2",
            "--lines-per-day",
            "200",
            "--seed",
            "1",
            "--spike-days",
            "1",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote" in result.stdout
    truth = json.loads(Path(f"{out}.truth.json").read_text())
    assert truth["lines"] == len(out.read_bytes().splitlines())
    assert_same(truth, counted(out))


def test_script_rejects_bad_format(tmp_path: Path) -> None:
    script = Path(__file__).parent.parent / "synthetic_logs.py"
    result = subprocess.run(
        [sys.executable, str(script), "--format", "xml", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--format" in result.stderr
