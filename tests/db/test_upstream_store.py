"""DbUpstreamStore on real PostgreSQL: each event kind, the todo, crashes, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from piwheels.db import abis, builds, packages, versions
from piwheels.db.upstream_store import DbUpstreamStore, PageRequest
from piwheels.errors import InvalidName, UpstreamError
from piwheels.upstream.events import (
    FilesAdded,
    FilesRemoved,
    KnownProject,
    NewAlias,
    NewProject,
    NewRelease,
    ProjectRemoved,
    ProjectStatus,
    ReleaseRemoved,
    Summary,
    Unyank,
    UpstreamFile,
    Yank,
    apply_events,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
ARM = "cp311-linux_armv7l"
ARM64 = "cp311-linux_aarch64"


@pytest.fixture
def engine(new_database: Any) -> Iterator[Any]:
    eng = create_engine(new_database(template="piwheels_template", prefix="piwups"))
    with eng.begin() as conn:
        abis.add_abi(conn, "cp311", "linux_armv7l")
        abis.add_abi(conn, "cp311", "linux_aarch64", glibc="2.36")
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Any) -> DbUpstreamStore:
    return DbUpstreamStore(engine)


def sdist(name: str, version: str) -> UpstreamFile:
    return UpstreamFile(f"{name}-{version}.tar.gz", "sdist", "a" * 64, 10)


def wheel(name: str, version: str, tags: str) -> UpstreamFile:
    return UpstreamFile(f"{name}-{version}-{tags}.whl", "wheel", "b" * 64, 20, tags=tags)


def release(name: str, version: str, *files: UpstreamFile, rp: str | None = None) -> NewRelease:
    tags = tuple(sorted({f.tags for f in files if f.kind == "wheel"}))
    has_sdist = any(f.kind == "sdist" for f in files)
    return NewRelease(
        name, version, T0, has_sdist, bool(tags) and not has_sdist, tags, rp, tuple(files)
    )


def queued(engine: Any, package: str) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT version, abi FROM build_queue WHERE package = :p"), {"p": package}
        )
        return {(v, a) for v, a in rows}


def version_row(engine: Any, package: str, version: str) -> Any:
    with engine.connect() as conn:
        return versions.get_version(conn, package, version)


def scalar(engine: Any, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def new(store: DbUpstreamStore, name: str, *releases: NewRelease, serial: int = 5) -> None:
    store.apply([NewProject(name, name), *releases], name, serial)


# ---- each event kind --------------------------------------------------------------


def test_new_project_and_release(engine, store):
    store.save_todo(9, {"foo": 5, "bar": 9})
    store.apply(
        [
            NewProject("foo", "Foo"),
            NewAlias("foo", "Foo"),
            Summary("foo", "a foo"),
            release("foo", "1.0", sdist("foo", "1.0"), rp=">=3.8"),
        ],
        "foo",
        5,
    )
    with engine.connect() as conn:
        pkg = packages.get_package(conn, "foo")
        assert pkg is not None
        assert (pkg.display_name, pkg.summary, pkg.removed_at) == ("Foo", "a foo", None)
        assert "Foo" in packages.get_aliases(conn, "foo")
    row = version_row(engine, "foo", "1.0")
    assert (row.has_sdist, row.upstream_wheel_serves, row.requires_python) == (True, False, ">=3.8")
    assert row.released_at == T0
    assert queued(engine, "foo") == {("1.0", ARM), ("1.0", ARM64)}
    assert store.get_project_serials() == {"foo": 5}
    assert store.load_todo() == (9, {"bar": 9})
    assert store.take_requests() == [PageRequest("PROJECT", "foo")]
    known = store.get_known("foo")
    assert known is not None
    assert known.releases["1.0"].files == {"foo-1.0.tar.gz"}
    assert known.summary == "a foo" and "Foo" in known.aliases and known.serial == 5


def test_wheel_only_release_that_serves_every_target_needs_no_build(engine, store):
    new(store, "pure", release("pure", "1.0", wheel("pure", "1.0", "py3-none-any")))
    row = version_row(engine, "pure", "1.0")
    assert (row.has_sdist, row.upstream_wheel_serves) == (False, True)
    assert row.upstream_wheel_tags == ("py3-none-any",)
    # A late sdist makes it buildable, but upstream's wheel still serves every target.
    store.apply(
        [FilesAdded("pure", "1.0", (sdist("pure", "1.0"),), True, ("py3-none-any",))], "pure", 6
    )
    row = version_row(engine, "pure", "1.0")
    assert (row.has_sdist, row.upstream_wheel_serves) == (True, True)
    assert queued(engine, "pure") == set()


def test_late_sdist_makes_a_wheel_only_release_buildable(engine, store):
    # A manylinux aarch64 wheel serves one target, not the other.
    tags = "cp311-cp311-manylinux_2_17_aarch64"
    new(store, "native", release("native", "2.0", wheel("native", "2.0", tags)))
    row = version_row(engine, "native", "2.0")
    assert (row.has_sdist, row.upstream_wheel_serves) == (False, False)
    assert queued(engine, "native") == set()
    store.apply(
        [FilesAdded("native", "2.0", (sdist("native", "2.0"),), True, (tags,))], "native", 7
    )
    assert version_row(engine, "native", "2.0").has_sdist
    assert queued(engine, "native") == {("2.0", ARM)}
    assert store.get_known("native").releases["2.0"].files == {
        "native-2.0.tar.gz",
        f"native-2.0-{tags}.whl",
    }
    # The sdist goes away again: nothing left to build from.
    store.apply(
        [FilesRemoved("native", "2.0", ("native-2.0.tar.gz",), False, (tags,))], "native", 8
    )
    assert not version_row(engine, "native", "2.0").has_sdist
    assert queued(engine, "native") == set()
    assert store.get_known("native").releases["2.0"].files == {f"native-2.0-{tags}.whl"}


def test_yank_with_reason_and_unyank(engine, store):
    new(store, "foo", release("foo", "1.0", sdist("foo", "1.0")))
    store.apply([Yank("foo", "1.0", "broken")], "foo", 6)
    row = version_row(engine, "foo", "1.0")
    assert (row.yanked, row.yank_reason) == (True, "broken")
    assert queued(engine, "foo") == set()
    known = store.get_known("foo").releases["1.0"]
    assert (known.yanked, known.yank_reason) == (True, "broken")
    store.apply([Unyank("foo", "1.0")], "foo", 7)
    row = version_row(engine, "foo", "1.0")
    assert (row.yanked, row.yank_reason) == (False, "")
    assert len(queued(engine, "foo")) == 2


def test_quarantine_stops_builds_and_clearance_restores(engine, store):
    new(store, "foo", release("foo", "1.0", sdist("foo", "1.0")))
    store.take_requests()
    store.apply([ProjectStatus("foo", "quarantined", "malware report")], "foo", 6)
    with engine.connect() as conn:
        pkg = packages.get_package(conn, "foo")
        assert (pkg.status, pkg.status_reason) == ("quarantined", "malware report")
    assert queued(engine, "foo") == set()
    # The page writer must rewrite the project (it then offers no files) and the root.
    assert set(store.take_requests()) == {PageRequest("PROJECT", "foo"), PageRequest("ROOT")}
    assert store.get_known("foo").releases.keys() == {"1.0"}  # kept for the clearance
    store.apply([ProjectStatus("foo", "active", None)], "foo", 7)
    assert len(queued(engine, "foo")) == 2


def test_new_spelling_becomes_the_display_name(engine, store):
    new(store, "foo-bar")
    store.apply([NewAlias("foo-bar", "Foo_Bar")], "foo-bar", 6)
    store.apply([NewAlias("foo-bar", "foo.bar")], "foo-bar", 7)
    with engine.connect() as conn:
        assert packages.get_package(conn, "foo-bar").display_name == "foo.bar"
        assert {"Foo_Bar", "foo.bar"} <= set(packages.get_aliases(conn, "foo-bar"))


def test_release_removed_waits_for_builds_then_goes(engine, store):
    new(store, "foo", release("foo", "1.0", sdist("foo", "1.0")), release("foo", "2.0"))
    with engine.begin() as conn:
        build_id = builds.start_build(conn, "foo", "1.0", ARM, None)
    store.take_requests()
    store.apply([ReleaseRemoved("foo", "1.0")], "foo", 6)
    assert version_row(engine, "foo", "1.0").removed_at is not None
    assert ("1.0", ARM64) not in queued(engine, "foo")
    assert store.get_known("foo").releases.keys() == {"2.0"}
    assert store.pending_removals() == [("foo", "1.0")]
    assert store.sweep_removals() == []  # the build in flight holds it
    assert version_row(engine, "foo", "1.0") is not None
    with engine.begin() as conn:
        builds.finish_build(conn, build_id, "failed", timedelta(seconds=1), "compile_error")
    assert store.sweep_removals() == [PageRequest("DELETE_VERSION", "foo", "1.0")]
    assert version_row(engine, "foo", "1.0") is None
    assert scalar(engine, "SELECT count(*) FROM builds WHERE package = 'foo'") == 0
    assert store.pending_removals() == []
    assert store.sweep_removals() == []


def test_project_removed_then_created_again(engine, store):
    new(store, "foo", release("foo", "1.0", sdist("foo", "1.0")))
    store.apply([NewAlias("foo", "Foo")], "foo", 6)
    store.take_requests()
    store.apply([ProjectRemoved("foo")], "foo", None)
    assert store.get_known("foo") is None
    assert store.get_project_serials() == {}
    assert queued(engine, "foo") == set()
    assert store.take_requests() == [PageRequest("ROOT")]
    assert store.sweep_removals() == [PageRequest("DELETE_PACKAGE", "foo")]
    # The row and its spellings stay: the page writer reads them to delete alias links.
    with engine.connect() as conn:
        pkg = packages.get_package(conn, "foo")
        assert pkg is not None and pkg.removed_at is not None
        assert "Foo" in packages.get_aliases(conn, "foo")
        assert versions.get_versions(conn, "foo") == []
    # Created again upstream: it comes back as new.
    new(store, "foo", release("foo", "3.0", sdist("foo", "3.0")), serial=20)
    assert store.get_project_serials() == {"foo": 20}
    assert store.get_known("foo").releases.keys() == {"3.0"}
    assert queued(engine, "foo") == {("3.0", ARM), ("3.0", ARM64)}
    assert store.pending_removals() == []


def test_release_published_again_after_removal(engine, store):
    new(store, "foo", release("foo", "1.0", sdist("foo", "1.0")))
    with engine.begin() as conn:
        builds.start_build(conn, "foo", "1.0", ARM, None)  # keeps the tombstone
    store.apply([ReleaseRemoved("foo", "1.0")], "foo", 6)
    store.apply([release("foo", "1.0", wheel("foo", "1.0", "py3-none-any"))], "foo", 7)
    row = version_row(engine, "foo", "1.0")
    assert row.removed_at is None and not row.has_sdist and row.upstream_wheel_serves
    assert store.pending_removals() == []
    assert store.get_known("foo").releases["1.0"].files == {"foo-1.0-py3-none-any.whl"}


def test_operator_added_version_takes_upstream_facts(engine, store):
    with engine.begin() as conn:
        versions.add_version(conn, "foo", "1.0")  # piw-add: assumed to have an sdist
    # Never seen upstream: not a project the follower would call removed.
    assert store.get_project_serials() == {}
    known = store.get_known("foo")
    assert known is not None and known.serial is None
    store.apply([release("foo", "1.0", wheel("foo", "1.0", "py3-none-any"))], "foo", 4)
    row = version_row(engine, "foo", "1.0")
    assert (row.has_sdist, row.upstream_wheel_serves) == (False, True)


# ---- the store against the pure model ------------------------------------------------


def test_known_state_matches_the_pure_model(store):
    steps: list[tuple[str, list[Any]]] = [
        ("foo", [NewProject("foo", "Foo"), NewAlias("foo", "Foo"), Summary("foo", "s")]),
        ("foo", [release("foo", "1.0", sdist("foo", "1.0")), Yank("foo", "1.0", "bad")]),
        ("foo", [release("foo", "1.1", wheel("foo", "1.1", "py3-none-any"))]),
        ("foo", [FilesAdded("foo", "1.1", (sdist("foo", "1.1"),), True, ("py3-none-any",))]),
        ("foo", [FilesRemoved("foo", "1.1", ("foo-1.1-py3-none-any.whl",), True, ())]),
        ("foo", [Unyank("foo", "1.0"), ReleaseRemoved("foo", "1.1")]),
        ("foo", [ProjectStatus("foo", "archived", "done")]),
    ]
    model: KnownProject | None = None
    for serial, (name, events) in enumerate(steps, 1):
        store.apply(events, name, serial)
        model = apply_events(model, events)
        assert model is not None
        got = store.get_known(name)
        assert got is not None
        assert got.releases == model.releases
        assert (got.status, got.status_reason, got.summary) == (
            model.status,
            model.status_reason,
            model.summary,
        )
        assert model.aliases <= got.aliases


# ---- the todo, batching, crashes ----------------------------------------------------------


def test_todo_survives_a_new_store_and_last_serial_moves_only_when_set(engine):
    first = DbUpstreamStore(engine)
    assert first.get_last_serial() is None and first.load_todo() is None
    first.save_todo(30, {"a": 10, "b": 20, "gone": -1})
    first.apply([NewProject("a", "a")], "a", 10)
    second = DbUpstreamStore(engine)  # the master restarted
    assert second.load_todo() == (30, {"b": 20, "gone": -1})
    assert second.get_last_serial() is None
    second.apply([NewProject("b", "b")], "b", 20)
    second.apply([], "gone", None)
    assert second.load_todo() == (30, {})
    second.set_last_serial(30)
    assert second.get_last_serial() == 30 and second.load_todo() is None
    with pytest.raises(UpstreamError, match="backwards"):
        second.set_last_serial(29)


def test_a_crash_mid_batch_loses_nothing(engine):
    store = DbUpstreamStore(engine, batch_size=10)
    names = {f"p{i}": i + 1 for i in range(15)}
    store.save_todo(15, names)
    for name, serial in list(names.items())[:13]:
        store.apply(
            [NewProject(name, name), release(name, "1.0", sdist(name, "1.0"))], name, serial
        )
    assert store.buffered == 3  # ten committed as one batch
    assert len(store.take_requests()) == 10
    del store  # crash: the buffered three were never committed
    again = DbUpstreamStore(engine, batch_size=10)
    target, left = again.load_todo()
    assert target == 15 and sorted(left) == sorted(list(names)[10:])
    assert scalar(engine, "SELECT count(*) FROM packages") == 10
    for name in sorted(left, key=left.__getitem__):
        assert again.get_known(name) is None
        again.apply([NewProject(name, name), release(name, "1.0", sdist(name, "1.0"))], name, 1)
    again.set_last_serial(15)  # flushes first
    assert scalar(engine, "SELECT count(*) FROM versions") == 15
    assert again.get_last_serial() == 15


def test_get_known_sees_its_own_buffer(engine):
    store = DbUpstreamStore(engine, batch_size=100)
    store.apply([NewProject("foo", "foo")], "foo", 3)
    assert store.get_known("foo") is not None
    assert store.buffered == 0


def test_a_failing_project_does_not_hold_back_its_batch(engine):
    store = DbUpstreamStore(engine, batch_size=3)
    new(store, "ok1")
    # A file for a release that does not exist breaks its foreign key.
    store.apply([FilesAdded("ok1", "9.9", (sdist("ok1", "9.9"),), True, ())], "ok1", 6)
    with pytest.raises(UpstreamError, match=r"could not record 1 project.*ok1"):
        store.apply([NewProject("ok2", "ok2")], "ok2", 7)
    assert store.get_project_serials() == {"ok1": 5, "ok2": 7}


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "name", "message"),
    [
        ([NewProject("bar", "bar")], "foo", "names 'bar', applied to foo"),
        ([NewProject("Foo", "Foo")], "Foo", "not a canonical project name"),
        ([ProjectStatus("foo", "gone", None)], "foo", "unknown project status"),
        ([NewAlias("foo", "fooo")], "foo", "not a spelling"),
        ([Yank("foo", "1 0", None)], "foo", "version has spaces"),
    ],
)
def test_bad_events_are_refused_whole(engine, events, name, message):
    store = DbUpstreamStore(engine)
    store.save_todo(1, {name: 1})
    with pytest.raises(InvalidName, match=message):
        store.apply([NewProject(name, name), *events], name, 1)
    assert scalar(engine, "SELECT count(*) FROM packages") == 0
    assert store.load_todo() == (1, {name: 1})


def test_unsent_page_requests_survive_until_confirmed(engine, store):
    new(store, "foo")
    new(store, "bar")
    sent = store.take_requests()
    assert {r.package for r in sent} == {"foo", "bar"}
    restarted = DbUpstreamStore(engine)
    assert {r.package for r in restarted.unsent_requests()} == {"foo", "bar"}
    restarted.requests_sent(sent)
    assert restarted.unsent_requests() == []
