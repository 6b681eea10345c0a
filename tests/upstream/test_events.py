"""diff_project: each event kind from a known state and a page, and apply_events."""

from __future__ import annotations

from datetime import UTC, datetime

from piwheels.upstream.events import (
    FilesAdded,
    FilesRemoved,
    KnownProject,
    KnownRelease,
    NewAlias,
    NewProject,
    NewRelease,
    ProjectStatus,
    ReleaseRemoved,
    Summary,
    Unyank,
    Yank,
    apply_events,
    diff_project,
)
from piwheels.upstream.pages import FileInfo, ProjectPage, classify_filename

T1 = datetime(2025, 1, 1, tzinfo=UTC)
T2 = datetime(2025, 1, 2, tzinfo=UTC)


def f(
    filename: str, *, yanked: str | bool = False, when: datetime = T1, rp: str | None = None
) -> FileInfo:
    kind, version, tags = classify_filename(filename, "foo")
    return FileInfo(
        filename,
        "",
        version,
        kind,
        yanked=bool(yanked) or yanked == "",
        yank_reason=yanked if isinstance(yanked, str) and yanked else None,
        upload_time=when,
        requires_python=rp,
        tags=tags,
    )


def page(*files: FileInfo, **kw: object) -> ProjectPage:
    return ProjectPage("foo", 5, tuple(files), **kw)  # type: ignore[arg-type]


def known(**releases: KnownRelease) -> KnownProject:
    return KnownProject("foo", 4, {r.version: r for r in releases.values()})


def test_new_project_with_release() -> None:
    events = diff_project(
        None,
        page(
            f("foo-1.0.tar.gz", when=T2, rp=">=3.9"),
            f("foo-1.0-py3-none-any.whl", when=T1),
            display_name="Foo",
            summary="s",
        ),
    )
    assert events[:3] == [NewProject("foo", "Foo"), NewAlias("foo", "Foo"), Summary("foo", "s")]
    (release,) = events[3:]
    assert isinstance(release, NewRelease)
    assert (release.version, release.released, release.has_sdist, release.wheel_only) == (
        "1.0",
        T1,
        True,
        False,
    )
    assert release.wheel_tags == ("py3-none-any",)
    assert release.requires_python == ">=3.9"
    assert [x.filename for x in release.files] == ["foo-1.0.tar.gz", "foo-1.0-py3-none-any.whl"]


def test_wheel_only_release_lists_tags() -> None:
    events = diff_project(
        known(),
        page(
            f("foo-2.0-cp311-cp311-manylinux_2_17_aarch64.whl"),
            f("foo-2.0-cp311-cp311-win_amd64.whl"),
        ),
    )
    (release,) = events
    assert isinstance(release, NewRelease)
    assert release.wheel_only and not release.has_sdist
    assert release.wheel_tags == ("cp311-cp311-manylinux_2_17_aarch64", "cp311-cp311-win_amd64")


def test_files_added_and_removed() -> None:
    k = known(a=KnownRelease("1.0", frozenset({"foo-1.0-py3-none-any.whl", "foo-1.0.zip"})))
    events = diff_project(k, page(f("foo-1.0-py3-none-any.whl"), f("foo-1.0.tar.gz")))
    assert len(events) == 2
    added, removed = events
    assert isinstance(added, FilesAdded) and added.has_sdist
    assert [x.filename for x in added.files] == ["foo-1.0.tar.gz"]
    assert removed == FilesRemoved("foo", "1.0", ("foo-1.0.zip",), True, ("py3-none-any",))


def test_release_removed() -> None:
    k = known(a=KnownRelease("1.0", frozenset({"foo-1.0.tar.gz"})), b=KnownRelease("2.0"))
    assert diff_project(k, page(f("foo-1.0.tar.gz"))) == [ReleaseRemoved("foo", "2.0")]


def test_yank_reason_change_and_unyank() -> None:
    k = known(a=KnownRelease("1.0", frozenset({"foo-1.0.tar.gz"})))
    assert diff_project(k, page(f("foo-1.0.tar.gz", yanked="oops"))) == [Yank("foo", "1.0", "oops")]
    k = known(a=KnownRelease("1.0", frozenset({"foo-1.0.tar.gz"}), True, "oops"))
    assert diff_project(k, page(f("foo-1.0.tar.gz", yanked="other"))) == [
        Yank("foo", "1.0", "other")
    ]
    assert diff_project(k, page(f("foo-1.0.tar.gz", yanked="oops"))) == []
    assert diff_project(k, page(f("foo-1.0.tar.gz"))) == [Unyank("foo", "1.0")]


def test_new_release_already_yanked() -> None:
    events = diff_project(known(), page(f("foo-1.0.tar.gz", yanked=True)))
    assert [type(e) for e in events] == [NewRelease, Yank]
    assert events[1] == Yank("foo", "1.0", None)


def test_partly_yanked_release_is_not_yanked() -> None:
    events = diff_project(known(), page(f("foo-1.0.tar.gz", yanked="x"), f("foo-1.0.zip")))
    assert [type(e) for e in events] == [NewRelease]


def test_status_changes_and_quarantine_keeps_releases() -> None:
    k = known(a=KnownRelease("1.0", frozenset({"foo-1.0.tar.gz"})))
    # Quarantine: the page offers no files, but nothing is removed.
    events = diff_project(k, page(status="quarantined", status_reason="malware?"))
    assert events == [ProjectStatus("foo", "quarantined", "malware?")]
    k2 = apply_events(k, events)
    assert k2 is not None and k2.releases == k.releases
    # Cleared: back to active with the same files: only the status changes.
    assert diff_project(k2, page(f("foo-1.0.tar.gz"))) == [ProjectStatus("foo", "active", None)]
    assert diff_project(k, page(f("foo-1.0.tar.gz"), status="archived")) == [
        ProjectStatus("foo", "archived", None)
    ]


def test_alias_and_summary_only_when_new() -> None:
    k = KnownProject("foo", 1, {}, aliases=frozenset({"Foo"}), summary="s")
    assert diff_project(k, page(display_name="Foo", summary="s")) == []
    assert diff_project(k, page(display_name="FOO", summary="t")) == [
        NewAlias("foo", "FOO"),
        Summary("foo", "t"),
    ]
    assert diff_project(k, page(display_name="foo")) == []


def test_diff_then_apply_reaches_a_fixed_point() -> None:
    p = page(
        f("foo-1.0.tar.gz", yanked="bad"),
        f("foo-2.0-py3-none-any.whl"),
        display_name="Foo",
        summary="x",
        status="deprecated",
    )
    state = apply_events(None, diff_project(None, p))
    assert state is not None
    assert diff_project(state, p) == []
    assert state.releases["1.0"].yanked and state.aliases == {"Foo"}
