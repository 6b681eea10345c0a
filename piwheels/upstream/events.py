"""What the follower records, and the pure diff that produces it.

:func:`diff_project` compares what we knew of a project (:class:`KnownProject`,
as the store keeps it) with a fresh :class:`~piwheels.upstream.pages.ProjectPage`
and returns the events that turn one into the other, in an order a store can
apply one by one (project before releases, release before its yank).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from piwheels.upstream.pages import FileInfo, ProjectPage, group_releases


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """A distribution file as recorded with a release."""

    filename: str
    kind: str  # "sdist", "wheel" or "other"
    sha256: str | None = None
    size: int | None = None
    upload_time: datetime | None = None
    requires_python: str | None = None
    tags: str = ""  # compressed wheel tags, "" for other kinds

    @classmethod
    def from_info(cls, info: FileInfo) -> UpstreamFile:
        return cls(
            info.filename,
            info.kind,
            info.sha256,
            info.size,
            info.upload_time,
            info.requires_python,
            info.tags,
        )


@dataclass(frozen=True, slots=True)
class NewProject:
    name: str
    display_name: str


@dataclass(frozen=True, slots=True)
class NewRelease:
    """A version we had not seen.  ``wheel_only``: upstream ships wheels and no sdist,
    so whether it needs a build depends on ``wheel_tags`` (the planner decides)."""

    name: str
    version: str
    released: datetime | None
    has_sdist: bool
    wheel_only: bool
    wheel_tags: tuple[str, ...]
    requires_python: str | None
    files: tuple[UpstreamFile, ...]


@dataclass(frozen=True, slots=True)
class FilesAdded:
    """Files that appeared in a known release (e.g. a late sdist)."""

    name: str
    version: str
    files: tuple[UpstreamFile, ...]
    has_sdist: bool  # for the release as it now stands
    wheel_tags: tuple[str, ...]  # all of the release's wheel tags now


@dataclass(frozen=True, slots=True)
class FilesRemoved:
    """Files that vanished from a release that still exists."""

    name: str
    version: str
    filenames: tuple[str, ...]
    has_sdist: bool
    wheel_tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReleaseRemoved:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class ProjectRemoved:
    name: str


@dataclass(frozen=True, slots=True)
class Yank:
    name: str
    version: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Unyank:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    """PEP 792 status: active, archived, quarantined (publish nothing) or deprecated."""

    name: str
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewAlias:
    """A spelling of the name not seen before (the canonical form is never one)."""

    name: str
    spelling: str


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    summary: str


Event = (
    NewProject
    | NewRelease
    | FilesAdded
    | FilesRemoved
    | ReleaseRemoved
    | ProjectRemoved
    | Yank
    | Unyank
    | ProjectStatus
    | NewAlias
    | Summary
)


@dataclass(frozen=True, slots=True)
class KnownRelease:
    version: str
    files: frozenset[str] = frozenset()
    yanked: bool = False
    yank_reason: str | None = None


@dataclass(frozen=True)
class KnownProject:
    """What the store knows of a project: enough to diff against a page."""

    name: str
    serial: int | None = None
    releases: Mapping[str, KnownRelease] = field(default_factory=dict)
    status: str = "active"
    status_reason: str | None = None
    aliases: frozenset[str] = frozenset()
    summary: str | None = None


def _release_state(files: list[FileInfo]) -> tuple[bool, tuple[str, ...], bool, str | None]:
    has_sdist = any(f.kind == "sdist" for f in files)
    tags = tuple(sorted({f.tags for f in files if f.kind == "wheel"}))
    # PyPI yanks whole releases; a release counts as yanked when every file is.
    yanked = bool(files) and all(f.yanked for f in files)
    reason = next((f.yank_reason for f in files if f.yank_reason), None) if yanked else None
    return has_sdist, tags, yanked, reason


def diff_project(known: KnownProject | None, page: ProjectPage) -> list[Event]:
    """Events that bring *known* (None: never seen) up to *page*."""
    name = page.name
    events: list[Event] = []
    if known is None:
        events.append(NewProject(name, page.display_name or name))
        known = KnownProject(name)
    spelling = page.display_name
    if spelling and spelling != name and spelling not in known.aliases:
        events.append(NewAlias(name, spelling))
    if page.status != known.status or (
        page.status != "active" and page.status_reason != known.status_reason
    ):
        events.append(ProjectStatus(name, page.status, page.status_reason))
    if page.summary is not None and page.summary != known.summary:
        events.append(Summary(name, page.summary))
    if page.status == "quarantined":
        # A quarantined project's page offers no files (PEP 792), but the
        # releases still exist and come back on clearance: keep them.
        return events
    releases = group_releases(page)
    for version, files in releases.items():
        has_sdist, tags, yanked, reason = _release_state(files)
        old = known.releases.get(version)
        if old is None:
            times = [f.upload_time for f in files if f.upload_time is not None]
            requires = next((f.requires_python for f in files if f.requires_python), None)
            events.append(
                NewRelease(
                    name,
                    version,
                    released=min(times) if times else None,
                    has_sdist=has_sdist,
                    wheel_only=bool(tags) and not has_sdist,
                    wheel_tags=tags,
                    requires_python=requires,
                    files=tuple(UpstreamFile.from_info(f) for f in files),
                )
            )
            if yanked:
                events.append(Yank(name, version, reason))
            continue
        names = {f.filename for f in files}
        added = [f for f in files if f.filename not in old.files]
        if added:
            events.append(
                FilesAdded(
                    name, version, tuple(UpstreamFile.from_info(f) for f in added), has_sdist, tags
                )
            )
        gone = sorted(old.files - names)
        if gone:
            events.append(FilesRemoved(name, version, tuple(gone), has_sdist, tags))
        if yanked and (not old.yanked or reason != old.yank_reason):
            events.append(Yank(name, version, reason))
        elif not yanked and old.yanked:
            events.append(Unyank(name, version))
    for version in known.releases:
        if version not in releases:
            events.append(ReleaseRemoved(name, version))
    return events


def apply_events(known: KnownProject | None, events: list[Event]) -> KnownProject | None:
    """*known* after *events* (what a store keeps); None once the project is removed.

    The in-memory store uses this, and a database store can test against it.
    """
    state = known
    releases: dict[str, KnownRelease] = dict(known.releases) if known else {}
    for event in events:
        if isinstance(event, ProjectRemoved):
            state, releases = None, {}
            continue
        if isinstance(event, NewProject):
            state, releases = KnownProject(event.name), {}
            continue
        if state is None:
            raise ValueError(f"event {event!r} for a project that is not known")
        if isinstance(event, NewRelease):
            releases[event.version] = KnownRelease(
                event.version, frozenset(f.filename for f in event.files)
            )
        elif isinstance(event, FilesAdded):
            old = releases[event.version]
            files = old.files | {f.filename for f in event.files}
            releases[event.version] = KnownRelease(old.version, files, old.yanked, old.yank_reason)
        elif isinstance(event, FilesRemoved):
            old = releases[event.version]
            files = old.files - set(event.filenames)
            releases[event.version] = KnownRelease(old.version, files, old.yanked, old.yank_reason)
        elif isinstance(event, ReleaseRemoved):
            releases.pop(event.version, None)
        elif isinstance(event, Yank):
            old = releases[event.version]
            releases[event.version] = KnownRelease(old.version, old.files, True, event.reason)
        elif isinstance(event, Unyank):
            old = releases[event.version]
            releases[event.version] = KnownRelease(old.version, old.files, False, None)
        elif isinstance(event, ProjectStatus):
            state = replace(state, status=event.status, status_reason=event.reason)
        elif isinstance(event, NewAlias):
            state = replace(state, aliases=state.aliases | {event.spelling})
        elif isinstance(event, Summary):
            state = replace(state, summary=event.summary)
    if state is None:
        return None
    return replace(state, releases=releases)
