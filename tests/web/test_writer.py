"""SiteWriter and PageCoalescer: atomic writes, modes, gzip twins, deletions, logs."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pytest

from piwheels.errors import InvalidName, InvalidWheel
from piwheels.web import layout
from piwheels.web.model import HomeStats, ProjectData, SearchEntry, VersionData
from piwheels.web.writer import PageCoalescer, SiteWriter

from .conftest import make_wheel, publish


@pytest.fixture
def site(tmp_path: Path) -> SiteWriter:
    return SiteWriter(tmp_path / "www", gzip_threshold=512)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_project_files_and_modes(site: SiteWriter) -> None:
    old = os.umask(0o077)  # a strict umask must not make pages unreadable to nginx
    try:
        f = publish(site, make_wheel("foo", "1.0"))
        site.write_project(
            ProjectData(
                "foo", "Foo", aliases=("Foo", "FOO"), versions=(VersionData("1.0", files=(f,)),)
            )
        )
    finally:
        os.umask(old)
    root = site.root
    for rel in (
        "simple/foo/index.html",
        "simple/foo/index.json",
        "project/foo/index.html",
        "project/foo/json/index.json",
        "simple/foo/foo-1.0-py3-none-any.whl.metadata",
    ):
        assert mode(root / rel) == 0o644, rel
    assert json.loads((root / "simple/foo/index.json").read_bytes())["name"] == "foo"
    assert os.readlink(root / "simple/Foo") == "foo" and os.readlink(root / "project/FOO") == "foo"
    assert (root / "simple/FOO/index.html").read_bytes() == (
        root / "simple/foo/index.html"
    ).read_bytes()
    # no temporary files left behind
    assert not [p for p in root.rglob("*.tmp")]


def test_gzip_twins_follow_the_page(site: SiteWriter) -> None:
    big = b"x" * 1000
    site.write_file("a/index.html", big, gz=True)
    twin = site.root / "a/index.html.gz"
    assert gzip.decompress(twin.read_bytes()) == big
    site.write_file("a/index.html", b"small", gz=True)
    assert not twin.exists()  # a stale twin would be served instead of the new page


def _write_on_a_full_disk(
    site: SiteWriter, monkeypatch: pytest.MonkeyPatch, path: str, data: bytes
) -> None:
    """write_file(*path*) with every os.write failing as on a full disk: it raises that."""

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        site.write_file(path, data)
    monkeypatch.undo()


def test_write_file_refuses_paths_outside(site: SiteWriter) -> None:
    for bad in ("../x", "/etc/passwd", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            site.write_file(bad, b"")


@pytest.mark.parametrize("reuse", [True, False])
def test_failed_write_leaves_old_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    site = SiteWriter(tmp_path / "www", reuse_inodes=reuse)
    site.write_file("p/index.html", b"old")
    site.write_file("p/index.html", b"older")  # with reuse, leaves a spare to write into

    _write_on_a_full_disk(site, monkeypatch, "p/index.html", b"new")
    assert (site.root / "p/index.html").read_bytes() == b"older"
    assert [p.name for p in (site.root / "p").iterdir()] == ["index.html"]
    site.write_file("p/index.html", b"new")  # and the writer still works
    assert (site.root / "p/index.html").read_bytes() == b"new"


def _generation(k: int) -> ProjectData:
    return ProjectData("foo", "Foo", summary=f"generation {k} " + "x" * 600 * k)


def test_rewrites_reuse_old_inodes_atomically(tmp_path: Path) -> None:
    site = SiteWriter(tmp_path / "www", gzip_threshold=100)
    page = site.root / "project/foo/index.html"
    site.write_project(_generation(0))
    inodes = {page.stat().st_ino}
    for k in range(1, 6):
        site.write_project(_generation(k))
        inodes.add(page.stat().st_ino)
    # Each rewrite exchanged the page with a spare: the old inodes came back into use.
    assert len(inodes) < 6
    fresh = SiteWriter(tmp_path / "fresh", gzip_threshold=100, reuse_inodes=False)
    fresh.write_project(_generation(5))
    for rel in ("simple/foo/index.html", "simple/foo/index.json", "project/foo/index.html"):
        assert (site.root / rel).read_bytes() == (fresh.root / rel).read_bytes(), rel
        assert mode(site.root / rel) == 0o644
    twin = site.root / "simple/foo/index.html.gz"
    assert gzip.decompress(twin.read_bytes()) == (site.root / "simple/foo/index.html").read_bytes()
    spares = site.root / ".spare"
    assert mode(spares) == 0o700  # old bytes are never served
    assert not list(site.root.rglob("*.tmp"))
    site.close()
    assert not list(spares.iterdir())


def test_open_reader_keeps_the_old_bytes(tmp_path: Path) -> None:
    """A reader still sending the old page (an nginx worker) holds its inode: never reused."""
    site = SiteWriter(tmp_path / "www")
    page = site.root / "project/foo/index.html"
    site.write_project(_generation(0))
    site.write_project(_generation(1))
    with open(page, "rb") as reader:
        held = page.read_bytes()
        for k in range(2, 8):
            site.write_project(_generation(k))
        assert reader.read() == held
        assert b"generation 1 " in held
    assert b"generation 7 " in page.read_bytes()


def test_hard_linked_page_is_not_reused(tmp_path: Path) -> None:
    """A snapshot made with hard links keeps what it saw."""
    site = SiteWriter(tmp_path / "www")
    page = site.root / "project/foo/index.html"
    site.write_project(_generation(0))
    snapshot = site.root / "snapshot.html"
    os.link(page, snapshot)
    held = snapshot.read_bytes()
    for k in range(1, 6):
        site.write_project(_generation(k))
    assert snapshot.read_bytes() == held
    assert b"generation 5 " in page.read_bytes()


def test_spares_of_dead_processes_are_cleared(tmp_path: Path) -> None:
    site = SiteWriter(tmp_path / "www")
    site.write_project(_generation(0))
    site.write_project(_generation(1))
    dead = site.root / ".spare" / "999999999-1"  # above any pid_max
    dead.mkdir()
    (dead / "3").write_bytes(b"old bytes")
    other = SiteWriter(tmp_path / "www")
    other.write_project(_generation(2))
    assert not dead.exists()
    assert [p.name.split("-")[0] for p in (site.root / ".spare").iterdir()] == [
        str(os.getpid())
    ] * 2


def test_writer_falls_back_when_exchange_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without RENAME_EXCHANGE: plain temporary file and rename from then on."""
    import ctypes
    import errno

    from piwheels.web import writer as writer_mod

    def unsupported(a: str, b: str) -> bool:
        ctypes.set_errno(errno.EINVAL)
        return False

    monkeypatch.setattr(writer_mod, "_exchange", unsupported)
    site = SiteWriter(tmp_path / "www")
    for k in range(4):
        site.write_project(_generation(k))
        assert b"generation %d " % k in (site.root / "project/foo/index.html").read_bytes()
    assert site._spares is not None and not site._spares.usable
    assert not list(site.root.rglob("*.tmp"))


def test_delete_project_removes_pages_files_and_aliases(site: SiteWriter) -> None:
    f = publish(site, make_wheel("foo", "1.0"))
    site.write_project(
        ProjectData("foo", "Foo", aliases=("Foo",), versions=(VersionData("1.0", files=(f,)),))
    )
    site.write_project(ProjectData("bar", "bar"))
    site.delete_project("foo", aliases=("Foo",))
    assert not (site.root / "simple/foo").exists() and not (site.root / "project/foo").exists()
    assert not (site.root / "simple/Foo").is_symlink()
    assert (site.root / "simple/bar/index.html").exists()
    site.delete_project("foo")  # deleting again is harmless
    with pytest.raises(InvalidName):
        site.delete_project("../bar")


def test_delete_version_rewrites_and_removes_files(site: SiteWriter) -> None:
    f1 = publish(site, make_wheel("foo", "1.0"))
    f2 = publish(site, make_wheel("foo", "2.0"))
    both = ProjectData(
        "foo", "foo", versions=(VersionData("2.0", files=(f2,)), VersionData("1.0", files=(f1,)))
    )
    site.write_project(both)
    only2 = ProjectData("foo", "foo", versions=(VersionData("2.0", files=(f2,)),))
    with pytest.raises(ValueError):
        site.delete_version(both, "1.0")
    assert site.delete_version(only2, "1.0") == [f1.filename]
    d = site.root / "simple/foo"
    assert not (d / f1.filename).exists() and not (d / (f1.filename + ".metadata")).exists()
    assert (d / f2.filename).exists()
    assert f1.filename not in (d / "index.html").read_text()
    # explicit file names work too, and bad ones are refused
    assert site.delete_version(ProjectData("foo", "foo"), "2.0", [f2.filename]) == [f2.filename]
    with pytest.raises(InvalidWheel):
        site.delete_version(ProjectData("foo", "foo"), "2.0", ["../../index.html"])


def test_write_log_gzipped_never_overwritten(site: SiteWriter) -> None:
    path = site.write_log(123456789, "build output\n")
    assert path == site.root / "logs/0001/2345/6789.txt.gz"
    assert gzip.decompress(path.read_bytes()) == b"build output\n"
    assert mode(path) == 0o644
    with pytest.raises(FileExistsError):
        site.write_log(123456789, "other")
    assert gzip.decompress(path.read_bytes()) == b"build output\n"
    assert not list(path.parent.glob("*.tmp"))
    assert layout.log_url(5) == "/logs/0000/0000/0005.txt"
    with pytest.raises(ValueError):
        site.write_log(-1, "x")


def test_write_root_scales(site: SiteWriter) -> None:
    names = [f"project-{i}" for i in range(600_000)]
    site.write_root(names)
    html = (site.root / "simple/index.html").read_bytes()
    assert html.count(b"<a href=") == 600_000
    doc = json.loads((site.root / "simple/index.json").read_bytes())
    assert len(doc["projects"]) == 600_000 and doc["projects"][-1] == {"name": "project-599999"}
    assert (site.root / "simple/index.html.gz").exists()


def test_site_pages_and_sitemaps(site: SiteWriter) -> None:
    site.write_static([("Downloads", "/stats/d.png")])
    for rel in ("styles.css", "search.js", "faq.html", "404.html", "packages.html", "stats.html"):
        assert (site.root / rel).exists(), rel
    site.write_home(HomeStats(packages_built=7))
    assert b"packages-built" in (site.root / "index.html").read_bytes()
    site.write_search_index([SearchEntry("foo", 1, 2)])
    assert json.loads((site.root / "packages.json").read_bytes()) == [["foo", 1, 2]]
    assert site.write_sitemaps([f"p{i}" for i in range(3)]) == [
        "sitemap.xml",
        "sitemap0.xml",
        "sitemap1.xml",
    ]
    (site.root / "sitemap9.xml").write_text("stale")
    site.write_sitemaps([])
    assert not (site.root / "sitemap9.xml").exists() and not (site.root / "sitemap1.xml").exists()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_coalescer_first_request_is_due_at_once() -> None:
    clock = Clock()
    c = PageCoalescer(window=2.0, clock=clock)
    c.request("foo", "simple")
    assert c.next_due() == 100.0
    assert c.flush() == [("foo", "simple")]  # idle: no waiting for a window
    assert c.next_due() is None and len(c) == 0


def test_coalescer_merges_repeats_within_the_window() -> None:
    clock = Clock()
    c = PageCoalescer(window=2.0, clock=clock)
    c.request("foo", "simple")
    assert c.flush() == [("foo", "simple")]
    # Three more requests for foo within the window of that write: one write at its end.
    clock.now += 0.5
    c.request("foo", "simple")
    c.request("bar")  # another project is not held back by foo's window
    clock.now += 0.5
    c.request("foo", "project")
    c.request("foo", "project")
    assert c.flush() == [("bar", "both")]
    assert len(c) == 1 and c.next_due() == 102.0
    clock.now = 101.999
    assert c.flush() == []
    clock.now = 102.0
    assert c.flush() == [("foo", "both")]  # merged into one, kinds widened
    assert c.flush() == [] and len(c) == 0
    # Long after the window, a request is due at once again.
    clock.now = 110.0
    c.request("foo", "project")
    assert c.flush() == [("foo", "project")]


def test_coalescer_zero_window_never_waits() -> None:
    clock = Clock()
    c = PageCoalescer(window=0.0, clock=clock)
    for _ in range(3):
        c.request("foo")
        c.request("foo")  # still merged while pending
        assert c.flush() == [("foo", "both")]
    with pytest.raises(ValueError):
        PageCoalescer(window=-1.0)


def test_coalescer_steady_stream_still_writes() -> None:
    clock = Clock()
    c = PageCoalescer(window=1.0, clock=clock)
    written = []
    for _ in range(50):
        c.request("busy", "simple")
        clock.now += 0.1
        written += c.flush()
    # A request every 0.1 s for 5 s: written at once, then once per window (not 50 times,
    # and not postponed forever).
    assert 4 <= len(written) <= 6
    assert all(w == ("busy", "simple") for w in written)


def test_coalescer_many_names_in_order() -> None:
    clock = Clock()
    c = PageCoalescer(window=1.0, clock=clock)
    names = [f"p{i}" for i in range(1000)]
    for name in names:
        c.request(name)
    assert [n for n, _ in c.flush()] == names  # earliest first
    for name in names:
        c.request(name)  # all within the window: held
    assert c.flush() == []
    clock.now += 1.0
    assert len(c.flush()) == 1000
    clock.now += 5.0
    c.request("p1")
    assert c.flush() == [("p1", "both")]
    assert len(c._released) == 1  # old hand-outs are forgotten, not kept forever


def test_coalescer_delete_purges_and_bad_kind() -> None:
    clock = Clock()
    c = PageCoalescer(window=1.0, clock=clock)
    c.request("foo")
    c.request("bar", "simple")
    assert c.delete("foo") is True and c.delete("foo") is False
    assert c.flush(force=True) == [("bar", "simple")]
    assert c.flush(force=True) == [] and c.next_due() is None
    # Within bar's window a new request waits; force hands it out at once.
    c.request("bar")
    assert c.flush() == [] and c.flush(force=True) == [("bar", "both")]
    with pytest.raises(ValueError):
        c.request("foo", "everything")  # type: ignore[arg-type]


# --- full rewrite and unchanged pages ---------------------------------------------------------


def _load(name: str) -> ProjectData | None:
    """A loader for write_all: runs in the pool's workers (so it lives at module level)."""
    if name == "gone":
        return None  # deleted meanwhile: skipped
    if name == "bad":
        raise InvalidName("no such project: bad")
    return ProjectData(name, name.upper(), summary=f"summary of {name}")


def _pages(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_write_all_matches_write_project(tmp_path: Path, workers: int) -> None:
    names = [f"p{i}" for i in range(23)]
    one = SiteWriter(tmp_path / "one", gzip_threshold=100)
    for name in names:
        project = _load(name)
        assert project is not None
        one.write_project(project)
    seen: list[int] = []
    many = SiteWriter(tmp_path / "many", gzip_threshold=100)
    count = many.write_all(
        [*names, "gone"], workers=workers, load=_load, chunk_size=4, progress=seen.append
    )
    assert count == 23
    assert seen and seen[-1] == 23 and seen == sorted(seen)
    expected = _pages(one.root)
    # four pages each, and twins of the two simple pages (not of the project pages)
    assert len(expected) == 23 * 6
    assert not list(many.root.glob("project/**/*.gz"))
    assert _pages(many.root) == expected
    assert not list(many.root.rglob("*.tmp"))
    # ProjectData items need no loader
    again = SiteWriter(tmp_path / "again", gzip_threshold=100)
    projects = [p for p in map(_load, names) if p is not None]
    assert again.write_all(projects, workers=workers, chunk_size=5) == 23
    assert _pages(again.root) == expected


@pytest.mark.parametrize("workers", [1, 2])
def test_write_all_raises_the_first_error(tmp_path: Path, workers: int) -> None:
    site = SiteWriter(tmp_path / "www")
    with pytest.raises(InvalidName, match="no such project: bad"):
        site.write_all(["a", "b", "bad", "c"], workers=workers, load=_load, chunk_size=1)
    with pytest.raises(TypeError):
        site.write_all(["not a project"], workers=workers)
    with pytest.raises(ValueError):
        site.write_all([], workers=0)


def _load_many(names: list[str]) -> list[ProjectData]:
    """A chunk loader for write_all (module level: it runs in the workers)."""
    return [p for p in map(_load, names) if p is not None]


@pytest.mark.parametrize("workers", [1, 2])
def test_write_all_with_a_chunk_loader(tmp_path: Path, workers: int) -> None:
    names = [f"p{i}" for i in range(11)]
    one = SiteWriter(tmp_path / "one")
    for project in _load_many(names):
        one.write_project(project)
    many = SiteWriter(tmp_path / "many")
    assert many.write_all([*names, "gone"], workers=workers, load_many=_load_many, chunk_size=3)
    assert _pages(many.root) == _pages(one.root)
    with pytest.raises(ValueError, match="not both"):
        many.write_all(names, load=_load, load_many=_load_many)


def test_write_all_stops_when_asked(tmp_path: Path) -> None:
    site = SiteWriter(tmp_path / "www")
    seen: list[int] = []
    # Asked before each chunk: true once two chunks are written.
    count = site.write_all(
        [f"p{i}" for i in range(10)],
        load=_load,
        chunk_size=2,
        progress=seen.append,
        stop=lambda: len(seen) >= 2,
    )
    assert count == 4 and seen == [2, 4]
    assert len(list((tmp_path / "www/project").iterdir())) == 4


def test_unchanged_pages_are_left_alone(tmp_path: Path) -> None:
    site = SiteWriter(tmp_path / "www", gzip_threshold=512, project_twins=True)
    project = ProjectData("foo", "Foo", summary="x" * 2000)
    site.write_project(project)
    page = site.root / "project/foo/index.html"
    twin = site.root / "project/foo/index.html.gz"
    before = (page.stat().st_ino, twin.stat().st_ino)
    site.write_project(project)
    assert (page.stat().st_ino, twin.stat().st_ino) == before  # same files, same ETags
    site.write_project(ProjectData("foo", "Foo", summary="y" * 2000))
    assert page.stat().st_ino != before[0] and twin.stat().st_ino != before[1]
    assert b"yyyy" in gzip.decompress(twin.read_bytes())


def test_unchanged_page_with_wrong_twin_is_repaired(site: SiteWriter) -> None:
    big = b"z" * 1000
    site.write_file("a/index.html", big, gz=True)
    twin = site.root / "a/index.html.gz"
    twin.write_bytes(gzip.compress(b"stale"))  # as if a write died between twin and page
    site.write_file("a/index.html", big, gz=True)
    assert gzip.decompress(twin.read_bytes()) == big
    twin.write_bytes(b"not gzip at all")
    site.write_file("a/index.html", big, gz=True)
    assert gzip.decompress(twin.read_bytes()) == big
    # a small page that already holds its bytes still loses a leftover twin
    site.write_file("b/index.html", b"small", gz=True)
    (site.root / "b/index.html.gz").write_bytes(gzip.compress(b"old big page"))
    site.write_file("b/index.html", b"small", gz=True)
    assert not (site.root / "b/index.html.gz").exists()


def test_gzip_level_and_deterministic_twins(tmp_path: Path) -> None:
    data = json.dumps([f"{i:064x}" for i in range(200)]).encode()
    fast = SiteWriter(tmp_path / "fast", gzip_level=1)
    best = SiteWriter(tmp_path / "best", gzip_level=9)
    assert gzip.decompress(fast.gzip(data)) == data == gzip.decompress(best.gzip(data))
    assert fast.gzip(data) == fast.gzip(data)  # no timestamp: same page, same bytes
    assert len(best.gzip(data)) <= len(fast.gzip(data))
    for bad in (0, 10):
        with pytest.raises(ValueError):
            SiteWriter(tmp_path / "bad", gzip_level=bad)


def test_project_pages_get_twins_only_when_asked(tmp_path: Path) -> None:
    """Simple pages keep precompressed twins; the project page and JSON API have none by
    default (nginx compresses them on the fly), and a twin left by a site written with
    project_twins is removed at the next write, even of an unchanged page."""
    project = ProjectData("foo", "Foo", summary="x" * 2000)
    old = SiteWriter(tmp_path / "www", gzip_threshold=100, project_twins=True)
    old.write_project(project)
    proj_twins = [
        tmp_path / "www/project/foo/index.html.gz",
        tmp_path / "www/project/foo/json/index.json.gz",
    ]
    assert all(t.exists() for t in proj_twins)
    new = SiteWriter(tmp_path / "www", gzip_threshold=100)
    new.write_project(project)  # same bytes: the pages stay, the twins go
    assert not any(t.exists() for t in proj_twins)
    assert (tmp_path / "www/simple/foo/index.html.gz").exists()
    assert (tmp_path / "www/simple/foo/index.json.gz").exists()
    # The setting reaches pool workers too.
    pooled = SiteWriter(tmp_path / "pool", gzip_threshold=100, project_twins=True)
    assert pooled.write_all(["p1", "p2", "p3"], workers=2, load=_load, chunk_size=1) == 3
    assert len(list((tmp_path / "pool/project").glob("*/**/*.gz"))) == 6


def test_twin_of_other_bytes_of_the_same_length_is_replaced(site: SiteWriter) -> None:
    """The twin check reads the gzip trailer (CRC-32 and length): a twin made from other
    bytes of the very same length is still told apart; one made at another level is kept."""
    page = b"a" * 600 + b"b" * 400
    other = b"b" * 400 + b"a" * 600
    site.write_file("a/index.html", page, gz=True)
    twin = site.root / "a/index.html.gz"
    twin.write_bytes(gzip.compress(other, mtime=0))
    site.write_file("a/index.html", page, gz=True)
    assert gzip.decompress(twin.read_bytes()) == page
    twin.write_bytes(gzip.compress(page, compresslevel=9, mtime=0))
    inode = twin.stat().st_ino
    site.write_file("a/index.html", page, gz=True)
    assert twin.stat().st_ino == inode  # right bytes at another level: left alone
    for bad in (b"", b"\x1f\x8b", twin.read_bytes()[:-8] + b"\x00" * 8):
        twin.write_bytes(bad)
        site.write_file("a/index.html", page, gz=True)
        assert gzip.decompress(twin.read_bytes()) == page, bad[:4]


def test_new_pages_are_made_nameless_and_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that does not exist yet is written into an O_TMPFILE inode and linked under
    its name: no temporary name, no spare; a failed write leaves no name at all."""
    site = SiteWriter(tmp_path / "www", gzip_threshold=100)
    made: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            made.append(fd)
        return fd

    monkeypatch.setattr(os, "open", spy)
    site.write_project(_generation(1))
    files = [p for p in site.root.rglob("*") if p.is_file()]
    assert len(files) == 6  # four pages and the twins of the two simple pages
    assert len(made) == len(files)  # each made nameless
    assert site._spares is None  # no spare was needed
    for rel in ("simple/foo/index.html", "project/foo/json/index.json"):
        assert mode(site.root / rel) == 0o644
    assert (
        gzip.decompress((site.root / "simple/foo/index.html.gz").read_bytes())
        == (site.root / "simple/foo/index.html").read_bytes()
    )

    _write_on_a_full_disk(site, monkeypatch, "new/index.html", b"never seen")
    assert list((site.root / "new").iterdir()) == []
    assert site._tmpfiles  # a write error is not a reason to stop using them


def test_new_page_that_appears_meanwhile_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """linkat never replaces a file: if the page appeared after the writer looked, the
    writer falls back to its atomic replacement, and goes on making new pages nameless."""
    from piwheels.web import writer as writer_mod

    site = SiteWriter(tmp_path / "www")
    (site.root / "p").mkdir()
    (site.root / "p/index.html").write_bytes(b"someone else's")
    monkeypatch.setattr(writer_mod, "_on_disk", lambda path, data: writer_mod._MISSING)
    site.write_file("p/index.html", b"mine")
    assert (site.root / "p/index.html").read_bytes() == b"mine"
    assert site._tmpfiles
    assert not list(site.root.rglob("*.tmp"))


@pytest.mark.parametrize("err", ["EOPNOTSUPP", "EISDIR"])
def test_writer_falls_back_without_o_tmpfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: str
) -> None:
    """A file system (or kernel) without O_TMPFILE: named temporary files from then on."""
    import errno

    real_open = os.open

    def refuse(path: object, flags: int, *args: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    site = SiteWriter(tmp_path / "www", gzip_threshold=100)
    for k in range(3):
        site.write_project(_generation(k))
        assert b"generation %d " % k in (site.root / "project/foo/index.html").read_bytes()
    assert not site._tmpfiles
    assert mode(site.root / "simple/foo/index.html") == 0o644
    assert not list(site.root.rglob("*.tmp"))
