"""The local-folder upstream: the same follower over a folder, and its simple index."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from piwheels.upstream.events import (
    FilesAdded,
    NewAlias,
    NewProject,
    NewRelease,
    ProjectRemoved,
    ReleaseRemoved,
)
from piwheels.upstream.faults import FolderUnavailable
from piwheels.upstream.follower import Follower
from piwheels.upstream.localdir import LocalDirUpstream, write_simple_index
from piwheels.upstream.memory import MemoryStore
from tests.sdists import build_requirement_wheels, pure_sdist
from tests.upstream.conftest import FakeClock, run_until_complete


class FakeNs:
    """Wall clock in ns for serials, moved by hand (file mtimes are set to match)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now


def put(folder: Path, name: str, clock: FakeNs, data: bytes = b"data") -> Path:
    """Write a file and give it (and the folder) an mtime from *clock*, one second on."""
    clock.now += 10**9
    path = folder / name
    path.write_bytes(data)
    os.utime(path, ns=(clock.now, clock.now))
    os.utime(folder, ns=(clock.now, clock.now))
    return path


def drop(folder: Path, name: str, clock: FakeNs) -> None:
    clock.now += 10**9
    (folder / name).unlink()
    os.utime(folder, ns=(clock.now, clock.now))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "sdists"
    path.mkdir()
    return path


def make(folder: Path, ns: FakeNs, store: MemoryStore, clock: FakeClock) -> Follower:
    return Follower(LocalDirUpstream(folder, settle=0, clock_ns=ns), store, clock=clock, workers=1)


def test_add_and_remove_files(folder: Path, clock: FakeClock) -> None:
    ns, store = FakeNs(), MemoryStore()
    follower = make(folder, ns, store, clock)
    put(folder, "Foo_Bar-1.0.tar.gz", ns)
    put(folder, "baz-0.1-py3-none-any.whl", ns)
    put(folder, "README.txt", ns)  # not a distribution: ignored
    put(folder, ".hidden-1.0.tar.gz", ns)
    put(folder, "partial-1.0.tar.gz.part", ns)
    run_until_complete(follower, clock)
    events = [e for _, e in store.log]
    assert NewProject("foo-bar", "Foo_Bar") in events and NewAlias("foo-bar", "Foo_Bar") in events
    (foo,) = [e for e in events if isinstance(e, NewRelease) and e.name == "foo-bar"]
    assert foo.version == "1.0" and foo.has_sdist and not foo.wheel_only
    assert foo.files[0].sha256 is not None and foo.files[0].size == 4
    (baz,) = [e for e in events if isinstance(e, NewRelease) and e.name == "baz"]
    assert baz.wheel_only and baz.wheel_tags == ("py3-none-any",)
    assert set(store.known) == {"foo-bar", "baz"}

    mark = len(store.log)
    put(folder, "foo_bar-2.0.tar.gz", ns)
    put(folder, "baz-0.1.tar.gz", ns)  # a late sdist
    run_until_complete(follower, clock)
    later = [e for _, e in store.log[mark:]]
    assert [type(e) for e in later if e.name == "foo-bar"] == [NewRelease]
    (added,) = [e for e in later if isinstance(e, FilesAdded)]
    assert added.name == "baz" and added.has_sdist

    mark = len(store.log)
    drop(folder, "foo_bar-2.0.tar.gz", ns)
    drop(folder, "baz-0.1-py3-none-any.whl", ns)
    drop(folder, "baz-0.1.tar.gz", ns)
    run_until_complete(follower, clock)
    assert sorted(map(repr, (e for _, e in store.log[mark:]))) == sorted(
        map(repr, [ReleaseRemoved("foo-bar", "2.0"), ProjectRemoved("baz")])
    )
    # Nothing changed: nothing happens.
    mark = len(store.log)
    run = run_until_complete(follower, clock)[-1]
    assert run.complete and run.projects_changed == 0 and store.log[mark:] == []


def test_restart_sees_only_changes_made_while_away(folder: Path, clock: FakeClock) -> None:
    ns, store = FakeNs(), MemoryStore()
    put(folder, "foo-1.0.tar.gz", ns)
    put(folder, "bar-1.0.tar.gz", ns)
    run_until_complete(make(folder, ns, store, clock), clock)
    ns.now += 10**9
    # A new process, same store, nothing changed: no project is looked at.
    run = run_until_complete(make(folder, ns, store, clock), clock)[-1]
    assert run.projects_changed == 0
    # Changed while away: a removal is seen (the folder's mtime moved).
    drop(folder, "foo-1.0.tar.gz", ns)
    mark = len(store.log)
    run = run_until_complete(make(folder, ns, store, clock), clock)[-1]
    assert run.complete
    assert [e for _, e in store.log[mark:]] == [ProjectRemoved("foo")]


def test_settling_files_wait(folder: Path, clock: FakeClock) -> None:
    ns, store = FakeNs(), MemoryStore()
    upstream = LocalDirUpstream(folder, settle=5.0, clock_ns=ns)
    follower = Follower(upstream, store, clock=clock, workers=1)
    put(folder, "foo-1.0.tar.gz", ns)  # mtime == now: may still be copying
    run_until_complete(follower, clock)
    assert store.known == {}
    ns.now += 6 * 10**9
    run_until_complete(follower, clock)
    assert set(store.known) == {"foo"}


def test_bad_file_names_warned_once(
    folder: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    ns, store = FakeNs(), MemoryStore()
    put(folder, "-bad-1.0.tar.gz", ns)
    put(folder, "bad name-1.0.tar.gz", ns)
    put(folder, "ok-1.0.tar.gz", ns)
    follower = make(folder, ns, store, clock)
    caplog.set_level(logging.WARNING, logger="piwheels.upstream")
    run_until_complete(follower, clock)
    put(folder, "ok-1.1.tar.gz", ns)
    run_until_complete(follower, clock)
    assert set(store.known) == {"ok"}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all("ignoring" in w for w in warned)


def test_missing_folder_is_a_fault_not_a_mass_removal(tmp_path: Path, clock: FakeClock) -> None:
    folder = tmp_path / "mnt"
    folder.mkdir()
    ns, store = FakeNs(), MemoryStore()
    put(folder, "foo-1.0.tar.gz", ns)
    follower = make(folder, ns, store, clock)
    run_until_complete(follower, clock)
    folder.rename(tmp_path / "elsewhere")
    run = follower.run_once()
    assert run.faults == {"unavailable": 1} and run.retry_in
    assert set(store.known) == {"foo"}
    with pytest.raises(FolderUnavailable, match="missing or unreadable"):
        LocalDirUpstream(folder).get_root()


def test_index_written_and_pruned(folder: Path, tmp_path: Path) -> None:
    ns = FakeNs()
    put(folder, "Foo-1.0.tar.gz", ns, b"foo sdist")
    put(folder, "foo-1.1-py3-none-any.whl", ns, b"foo wheel")
    put(folder, "bar-2.0.zip", ns, b"bar")
    target = tmp_path / "index"
    assert write_simple_index(folder, target) == 2
    page = (target / "foo" / "index.html").read_text()
    assert 'href="Foo-1.0.tar.gz#sha256=' in page and "foo-1.1-py3-none-any.whl" in page
    assert (target / "foo" / "Foo-1.0.tar.gz").read_bytes() == b"foo sdist"
    assert '<a href="bar/">bar</a>' in (target / "index.html").read_text()
    assert (target / "bar" / "index.json").exists()
    drop(folder, "bar-2.0.zip", ns)
    drop(folder, "foo-1.1-py3-none-any.whl", ns)
    assert write_simple_index(folder, target) == 1
    assert not (target / "bar").exists()
    assert not (target / "foo" / "foo-1.1-py3-none-any.whl").is_symlink()
    assert "foo-1.1" not in (target / "foo" / "index.html").read_text()


def test_index_refuses_a_folder_it_did_not_make(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not make"):
        write_simple_index(folder, target)
    assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_pip_downloads_from_the_written_index(tmp_path: Path) -> None:
    folder = tmp_path / "upstream"
    pure_sdist(folder, "piwtest-pure", "1.0")
    build_requirement_wheels(folder)  # pip's build isolation needs setuptools offline
    target = tmp_path / "index"
    write_simple_index(folder, target)
    out = tmp_path / "out"
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--index-url",
            target.as_uri() + "/",
            "-d",
            str(out),
            "piwtest-pure==1.0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "piwtest_pure-1.0.tar.gz").read_bytes() == (
        folder / "piwtest_pure-1.0.tar.gz"
    ).read_bytes()
