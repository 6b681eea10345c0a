"""piw-monitor --status (text and JSON), and the command line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from piwheels.errors import EX_CONFIG, EX_TEMPFAIL, EX_USAGE
from piwheels.monitor.main import COMMAND, default_silence
from piwheels.monitor.state import FarmState
from piwheels.monitor.status import format_status, status_json
from piwheels.settings import Settings

from .conftest import ScriptedMaster
from .factories import T0, history

MasterFactory = Callable[..., ScriptedMaster]
SILENCE = timedelta(minutes=2)


def farm() -> FarmState:
    state = FarmState()
    state.apply_history(history(), T0)
    return state


def test_text_has_every_fact() -> None:
    text = format_status(farm(), T0, silence=SILENCE)
    for fact in (
        "Master: farm-master (piwheels 1.0, Debian 12), up 5h 00m, building",
        "upstream serial 24681357, lag 3",
        "built 1234 packages, 5678 files, time saved 3d 4h",
        "downloads 900/hour, 123456 in 30 days, 9876543 in all",
        "log ingest 25.5 records/s",
        "disk 40% of 100.0G, memory 25% of 8.0G, swap 0%, load 0.50, temperature 45C",
        "  cp39: 12, 8\n  cp311: 40, 30",
        "Builders (2):",
        "#2 pi2 cp39 linux_aarch64 idle: waiting for work; seen 0s ago; disk 40%, memory 25%, "
        "load 2.50",
        "#1 pi1 cp311 linux_armv7l building: numpy 1.26.4 for 4m 00s of 3h 00m",
        "Recent builds (2 of 2):",
        "#8 pillow 10.3.0 cp39 on pi2: failed (compile_error) in 12m 00s",
        "#7 requests 2.31.0 cp311 on pi1: success in 1m 35s",
        "Alerts (0):",
    ):
        assert fact in text, fact
    # Newest build first, ABIs by Python version.
    assert text.index("#8 pillow") < text.index("#7 requests")


def test_text_of_an_empty_farm() -> None:
    text = format_status(FarmState(), T0, silence=SILENCE)
    assert text.startswith("Master: unknown\nBuilders (0):")


def test_text_shows_paused_and_alerts() -> None:
    data = history()
    data["master"]["paused"] = True
    data["stats"][-1]["downloads_last_hour"] = 0
    state = FarmState()
    state.apply_history(data, T0)
    text = format_status(state, T0, silence=SILENCE)
    assert ", PAUSED" in text
    assert "Alerts (1):\n  master: no downloads in the last hour" in text


def test_json() -> None:
    data = json.loads(status_json(farm(), T0, silence=SILENCE))
    assert data["master"]["hostname"] == "farm-master"
    assert data["stats"]["queue"] == {"cp39": 12, "cp311": 40}
    assert [b["label"] for b in data["builders"]] == ["pi1", "pi2"]
    assert data["builders"][0]["build"]["package"] == "numpy"
    assert [b["build_id"] for b in data["builds"]] == [8, 7]
    assert data["alerts"] == []
    assert data["now"] == T0.isoformat()


def run(argv: list[str]) -> int:
    return COMMAND.run(argv, system_config=None, user_config=None, environ={})


def endpoints(master: ScriptedMaster) -> list[str]:
    return [
        "--status-endpoint",
        master.status_endpoint,
        "--control-endpoint",
        master.control_endpoint,
    ]


@pytest.mark.parametrize("as_json", [False, True])
def test_status_command(
    master_factory: MasterFactory, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    master = master_factory()
    thread = threading.Thread(target=master.answer_hello)
    thread.start()
    code = run(["--status", *endpoints(master), "--timeout", "10"] + (["--json"] * as_json))
    thread.join()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    if as_json:
        assert json.loads(out)["master"]["hostname"] == "farm-master"
    else:
        assert out.startswith("Master: farm-master")
        assert "numpy 1.26.4" in out


def test_status_without_master(tmp_short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    control = f"ipc://{tmp_short}/control"
    code = run(["--status", "--control-endpoint", control, "--timeout", "0.3"])
    out, err = capsys.readouterr()
    assert code == EX_TEMPFAIL
    assert out == ""
    assert err == f"piw-monitor: error: the master did not answer at {control} within 0.3s\n"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--json"], EX_USAGE, "--json goes with --status"),
        (["--status", "--timeout", "-1"], EX_USAGE, "must be a positive number"),
        (["--status", "--timeout", "soon"], EX_USAGE, "is not a number of seconds"),
        (["--status", "--silence", "nan"], EX_USAGE, "must be a positive number"),
        (["--status", "--control-endpoint", "nowhere"], EX_CONFIG, "not a ZeroMQ endpoint"),
        (
            ["--status", "--control-endpoint", "tcp://127.0.0.1:9", "--curve"],
            EX_CONFIG,
            "secret_key_file",
        ),
    ],
)
def test_bad_command_lines(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert err.count("piw-monitor: error:") + err.count("piw-monitor: configuration") == 1


def test_default_silence() -> None:
    settings = Settings()
    assert default_silence(settings) == settings.master.stats_interval * 2 + timedelta(seconds=5)
    quick = settings.replace("master", stats_interval=timedelta(seconds=1))
    assert default_silence(quick) == timedelta(seconds=10)
