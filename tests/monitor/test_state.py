"""FarmState built from message sequences."""

from __future__ import annotations

from datetime import timedelta

import pytest

from piwheels import protocols
from piwheels.errors import ProtocolError
from piwheels.monitor.state import (
    BUILDER_SORT_KEYS,
    SERIES,
    FarmState,
    format_duration,
    format_size,
)

from .factories import (
    T0,
    at,
    build_summary,
    builder_state,
    check,
    current_build,
    history,
    host_stats,
    master_info,
    master_stats,
)


def test_factories_are_valid_messages() -> None:
    check("MASTER", master_info())
    check("STATS", master_stats())
    check("BUILDER", builder_state(1, state="building", build=current_build()))
    check("BUILD", build_summary())
    check("HISTORY", history(), protocols.control)


def test_empty_state_answers_without_data() -> None:
    state = FarmState()
    assert state.master is None and state.latest is None and state.paused is None
    assert state.uptime(T0) is None
    assert state.series("queue") == []
    assert state.builder_rows(T0) == []
    assert state.alerts(T0, silence=timedelta(seconds=30)) == []
    assert state.summary(T0) == {"master": None, "stats": None, "builders": [], "builds": []}


def test_history_fills_everything() -> None:
    state = FarmState()
    state.apply_history(history(), at(1))
    assert state.master is not None and state.master.hostname == "farm-master"
    assert state.uptime(T0) == timedelta(hours=5)
    assert len(state.stats) == 3
    assert state.series("queue", "cp311") == [50, 45, 40]
    assert state.series("queue") == [70, 60, 52]
    assert state.series("ingest_rate") == [10.0, 20.0, 25.5]
    assert sorted(state.builders) == [1, 2]
    assert state.builders[1].build is not None
    assert state.builders[1].task() == "numpy 1.26.4"
    assert state.builders[2].task() == "waiting for work"
    assert [b.build_id for b in state.builds] == [7, 8]
    assert state.last_message == at(1)
    # ABIs by Python version, not as strings.
    assert state.abis() == ["cp39", "cp311"]


def test_history_sorts_out_of_order_lists() -> None:
    data = history()
    data["stats"].reverse()
    data["builds"].reverse()
    state = FarmState()
    state.apply_history(data, T0)
    assert state.series("queue", "cp39") == [20, 15, 12]
    assert [b.build_id for b in state.builds] == [7, 8]


def test_history_replaces_previous_state() -> None:
    state = FarmState()
    state.apply_history(history(), T0)
    state.apply("BUILDER", builder_state(9, label="old"), T0)
    state.apply_history(history(builders=[], builds=[], stats=[]), at(5))
    assert state.builders == {} and not state.builds and not state.stats


def test_stats_append_and_drop_stale() -> None:
    state = FarmState()
    state.apply_history(history(), T0)
    state.apply("STATS", master_stats(at(60), queue={"cp311": 1}), at(60))
    assert state.series("queue", "cp311")[-1] == 1
    # A replayed older figure is ignored rather than drawing the chart backwards.
    state.apply("STATS", master_stats(at(30), queue={"cp311": 99}), at(61))
    assert state.series("queue", "cp311") == [50, 45, 40, 1]
    assert state.last_message == at(61)


def test_stats_ring_buffer_keeps_newest() -> None:
    state = FarmState(stats_limit=3, builds_limit=2)
    for i in range(5):
        state.apply("STATS", master_stats(at(i), downloads_last_hour=i), at(i))
        state.apply("BUILD", build_summary(i + 1), at(i))
    assert state.series("downloads_last_hour") == [2, 3, 4]
    assert [b.build_id for b in state.builds] == [4, 5]


def test_duplicate_build_ignored() -> None:
    state = FarmState()
    state.apply("BUILD", build_summary(3), T0)
    state.apply("BUILD", build_summary(3), T0)
    assert len(state.builds) == 1


def test_master_pause_follows_master_and_stats() -> None:
    state = FarmState()
    state.apply("MASTER", master_info(), T0)
    assert state.paused is False
    state.apply("MASTER", master_info(paused=True), at(1))
    assert state.paused is True
    state.apply("STATS", master_stats(at(2), paused=False), at(2))
    assert state.paused is False


def test_paused_from_stats_alone() -> None:
    state = FarmState()
    state.apply("STATS", master_stats(paused=True), T0)
    assert state.paused is True


def test_builder_update_and_gone() -> None:
    state = FarmState()
    state.apply("BUILDER", builder_state(1), T0)
    state.apply("BUILDER", builder_state(1, state="building", build=current_build()), at(1))
    view = state.builders[1]
    assert view.state == "building"
    assert view.build is not None and view.build.elapsed(T0) == timedelta(minutes=4)
    state.apply("GONE", {"builder_id": 1, "reason": "timed out"}, at(2))
    view = state.builders[1]
    assert view.gone and view.build is None and view.task() == "gone: timed out"
    # GONE for a builder never seen changes nothing.
    state.apply("GONE", {"builder_id": 42, "reason": "x"}, at(3))
    assert sorted(state.builders) == [1]
    # The same id coming back replaces the gone entry.
    state.apply("BUILDER", builder_state(1, last_seen=at(4)), at(4))
    assert not state.builders[1].gone


def test_gone_builders_are_bounded() -> None:
    state = FarmState(gone_limit=2)
    for i in range(1, 5):
        state.apply("BUILDER", builder_state(i, last_seen=at(i)), at(i))
    for i in range(1, 5):
        state.apply("GONE", {"builder_id": i, "reason": "bye"}, at(10 + i))
    assert sorted(state.builders) == [3, 4]


def test_unknown_message_is_refused() -> None:
    state = FarmState()
    with pytest.raises(ProtocolError, match="FROB"):
        state.apply("FROB", {}, T0)
    assert state.version == 0 and state.last_message is None


def test_version_counts_changes() -> None:
    state = FarmState()
    state.apply("MASTER", master_info(), T0)
    state.apply_history(history(), T0)
    assert state.version == 2


def test_series_names() -> None:
    state = FarmState()
    state.apply(
        "STATS",
        master_stats(
            host=host_stats(
                disk_total=200, disk_free=50, mem_total=100, mem_free=25, swap_total=0,
                swap_free=0, load_average=1.5, cpu_temp=None,
            ),
            upstream_lag=None,
        ),
        T0,
    )  # fmt: skip
    values = {name: state.series(name) for name in SERIES}
    assert values["disk"] == [75.0]
    assert values["memory"] == [75.0]
    assert values["swap"] == [0.0]
    assert values["load"] == [1.5]
    assert values["temperature"] == [0.0]
    assert values["upstream_lag"] == [0.0]
    assert values["builds_last_hour"] == [38.0]
    with pytest.raises(KeyError, match="no series"):
        state.series("bogus")


def test_builder_rows_sort_and_filter() -> None:
    state = FarmState()
    state.apply("BUILDER", builder_state(1, label="zeta", abi="cp311"), T0)
    state.apply(
        "BUILDER",
        builder_state(2, label="alpha", abi="cp39", state="building", build=current_build()),
        T0,
    )
    state.apply(
        "BUILDER",
        builder_state(3, label="mid", abi="cp310", stats=host_stats(load_average=3.0)),
        T0,
    )
    labels = lambda **kw: [b.label for b in state.builder_rows(T0, **kw)]  # noqa: E731
    assert labels() == ["alpha", "mid", "zeta"]
    assert labels(sort="abi") == ["alpha", "mid", "zeta"]
    assert labels(sort="load") == ["alpha", "zeta", "mid"]
    assert labels(sort="elapsed", reverse=True)[0] == "alpha"
    assert labels(text="NUMPY") == ["alpha"]
    assert labels(text="cp3") == ["alpha", "mid", "zeta"]
    assert labels(text="cp311") == ["zeta"]
    assert labels(text="nothing like it") == []
    for key in BUILDER_SORT_KEYS:
        assert len(labels(sort=key)) == 3
    with pytest.raises(KeyError):
        state.builder_rows(T0, sort="colour")


def test_alerts() -> None:
    state = FarmState()
    silence = timedelta(seconds=30)
    state.apply(
        "STATS",
        master_stats(
            host=host_stats(disk_free=1 << 30, load_average=6.0, cpu_temp=80.0),
            downloads_last_hour=0,
        ),
        T0,
    )
    state.apply(
        "BUILDER",
        builder_state(
            1,
            state="building",
            build=current_build(timeout=timedelta(minutes=1)),
            last_seen=at(-120),
            stats=host_stats(mem_free=0, swap_free=0),
        ),
        T0,
    )
    alerts = state.alerts(at(60), silence=silence)
    assert "master: no message for 1m 00s" in alerts
    assert "master: disk 99% full" in alerts
    assert "master: load 6.00" in alerts
    assert "master: temperature 80°C" in alerts
    assert "master: no downloads in the last hour" in alerts
    assert "pi1: silent for 3m 00s" in alerts
    assert "pi1: build past its timeout" in alerts
    assert "pi1: memory 100% used" in alerts
    assert "pi1: swap 100% used" in alerts
    # A healthy farm says nothing.
    calm = FarmState()
    calm.apply_history(history(), T0)
    assert calm.alerts(T0, silence=silence) == []


def test_summary_is_plain_data() -> None:
    import json

    state = FarmState()
    state.apply_history(history(), T0)
    summary = state.summary(T0)
    json.dumps(summary)  # nothing that JSON cannot carry
    assert summary["master"]["uptime"] == 5 * 3600
    assert summary["stats"]["queue"] == {"cp39": 12, "cp311": 40}
    assert summary["stats"]["time_saved"] == (3 * 24 + 4) * 3600
    assert [b["label"] for b in summary["builders"]] == ["pi1", "pi2"]
    assert summary["builders"][0]["build"]["elapsed"] == 240
    assert [b["build_id"] for b in summary["builds"]] == [8, 7]  # newest first


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        FarmState(stats_limit=0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (61, "1m 01s"),
        (3600 * 2 + 300, "2h 05m"),
        (86400 * 3 + 7200, "3d 2h"),
        (-5, "-5s"),
    ],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text
    assert format_duration(None) == "-"


def test_format_size() -> None:
    assert format_size(512) == "512B"
    assert format_size(1536) == "1.5K"
    assert format_size(3 << 30) == "3.0G"
    assert format_size(None) == "-"
