"""The data layer: names, versions, files, downloads, upstream state, project pages."""

from __future__ import annotations

import random
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from packaging.version import Version
from sqlalchemy import create_engine, text

from piwheels.db import builds, downloads, files, packages, projects, stats, upstream, versions
from piwheels.db.downloads import ClientInfo, Hit
from piwheels.db.files import Dependency
from piwheels.errors import BuildError, InvalidName, InvalidWheel, ProtocolError, UpstreamError

from . import factories as f


def test_sort_key_is_pep440_order():
    rng = random.Random(4)
    pool = [
        "1.0",
        "1.0.0",
        "1.0a1",
        "1.0b2",
        "1.0rc1",
        "1.0.dev3",
        "1.0a1.dev1",
        "1.0.post1",
        "1.0.post1.dev2",
        "1.0+local.7",
        "1.0+local.a",
        "1.0+2",
        "1!0.5",
        "2.0",
        "1.10",
        "1.9",
        "0.0.1",
        "1.0.0.1",
        "10.0",
        "1.0-1",
        "2024.1.15",
    ]
    for _ in range(300):
        a, b = rng.choice(pool), rng.choice(pool)
        va, vb = Version(a), Version(b)
        ka, kb = versions.sort_key(a), versions.sort_key(b)
        assert (va < vb) == (ka < kb), (a, b)
        assert (va == vb) == (ka == kb), (a, b)


def test_versions_ordered_in_sql_with_legacy_last(db_conn):
    # "0.1-beta" is valid PEP 440 (0.1b0); "2004d" and "r.1" are legacy strings.
    for v in ["2004d", "1.0", "1.10", "1.9", "2.0rc1", "0.1-beta", "2.0", "r.1"]:
        versions.add_version(db_conn, "Foo", v)
    assert [v.version for v in versions.get_versions(db_conn, "foo")] == [
        "2.0",
        "2.0rc1",
        "1.10",
        "1.9",
        "1.0",
        "0.1-beta",
        "r.1",
        "2004d",
    ]
    legacy = versions.get_version(db_conn, "foo", "2004d")
    assert legacy is not None and not legacy.valid


@pytest.mark.parametrize(
    "name", ["", "x" * 201, "-bad", "bad-", "sp ace", "sl/ash", "nl\n", "..", "ünicode"]
)
def test_bad_names_refused(db_conn, name):
    with pytest.raises(InvalidName):
        packages.add_package(db_conn, name)
    assert db_conn.execute(text("SELECT count(*) FROM packages")).scalar_one() == 0


@pytest.mark.parametrize("version", ["", "v" * 201, "1.0 beta", "1/2", "1\n"])
def test_bad_versions_refused(db_conn, version):
    with pytest.raises(InvalidName):
        versions.add_version(db_conn, "foo", version)
    assert db_conn.execute(text("SELECT count(*) FROM packages")).scalar_one() == 0


def test_names_canonical_with_aliases_and_idempotent_adds(db_conn):
    assert packages.add_package(db_conn, "Foo_Bar", "a summary")
    assert not packages.add_package(db_conn, "foo.bar")
    assert not packages.add_package(db_conn, "Foo_Bar")
    assert packages.list_packages(db_conn) == ["foo-bar"]
    assert sorted(packages.get_aliases(db_conn, "FOO-bar")) == ["Foo_Bar", "foo.bar"]
    assert versions.add_version(db_conn, "foo-bar", "1.0")
    assert not versions.add_version(db_conn, "FOO_BAR", "1.0")
    assert len(versions.get_versions(db_conn, "foo-bar")) == 1


def test_concurrent_writers_same_package(db_url):
    engine = create_engine(db_url, pool_size=4)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(spelling: str) -> None:
        try:
            barrier.wait(10)
            for i in range(30):
                with engine.begin() as conn:
                    versions.add_version(conn, spelling, f"{i}.0")
                    packages.add_alias(conn, spelling)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in ("Racy-Pkg", "racy_pkg")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        with engine.connect() as conn:
            assert len(versions.get_versions(conn, "racy-pkg")) == 30
            assert sorted(packages.get_aliases(conn, "racy-pkg")) == ["Racy-Pkg", "racy_pkg"]
    finally:
        with engine.begin() as conn:
            packages.delete_package(conn, "racy-pkg")
        engine.dispose()


def test_concurrent_start_build_only_one_wins(db_url):
    engine = create_engine(db_url, pool_size=4)
    with engine.begin() as conn:
        target = f.abi(conn, "cp311", "linux_riscv64")
        f.version(conn, "contested", "1.0")
    results: list[object] = []
    barrier = threading.Barrier(2)

    def start(label: str) -> None:
        barrier.wait(10)
        try:
            with engine.begin() as conn:
                results.append(builds.start_build(conn, "contested", "1.0", target, label))
        except BuildError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start, args=(f"b{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(type(r).__name__ for r in results) == ["BuildError", "int"]
    finally:
        with engine.begin() as conn:
            packages.delete_package(conn, "contested")
            conn.execute(text("DELETE FROM abis WHERE abi = :a"), {"a": target})
        engine.dispose()


def test_files_never_replaced_and_dependencies_kept(db_conn):
    target = f.abi(db_conn)
    f.version(db_conn, "foo", "1.0")
    deps = (Dependency("apt", "libc6"), Dependency("pip", 'six; python_version < "3"'))
    build_id = f.build(db_conn, "foo", "1.0", target, tags="cp311-cp311-linux_armv7l", deps=deps)
    [name] = [
        r.filename
        for r in [files.get_file(db_conn, "foo-1.0-cp311-cp311-linux_armv7l.whl")]
        if r is not None
    ]
    info = files.get_file(db_conn, name)
    assert info is not None and info.build_id == build_id and set(info.dependencies) == set(deps)
    bad = files.FileRecord(filename=name, size=1, sha256="0" * 64)
    with pytest.raises(InvalidWheel, match="never replaced"):
        files.add_files(db_conn, build_id, [bad])
    for rec in [
        files.FileRecord(filename="../evil.whl", size=1, sha256="0" * 64),
        files.FileRecord(filename="foo-1.0.whl", size=1, sha256="0" * 64),
        files.FileRecord(filename="foo-1.0-py3-none-any.whl", size=1, sha256="XYZ"),
        files.FileRecord(filename="foo-1.0-py3-none-any.whl", size=-1, sha256="0" * 64),
    ]:
        with pytest.raises(InvalidWheel):
            files.add_files(db_conn, build_id, [rec])
    files.set_import_test(db_conn, name, "failed", "ImportError", ["libfoo.so.1"])
    info = files.get_file(db_conn, name)
    assert info is not None and info.import_test == "failed"
    assert Dependency("missing-lib", "libfoo.so.1") in info.dependencies


def test_finish_build_validates(db_conn):
    target = f.abi(db_conn)
    f.version(db_conn, "foo", "1.0")
    build_id = builds.start_build(db_conn, "foo", "1.0", target, "b1")
    with pytest.raises(BuildError):
        builds.finish_build(db_conn, build_id, "failed", timedelta(1), "made_up")
    with pytest.raises(BuildError):
        builds.finish_build(db_conn, build_id, "exploded", timedelta(1))
    builds.finish_build(db_conn, build_id, "failed", timedelta(1), "compile_error")
    with pytest.raises(BuildError, match="already finished"):
        builds.finish_build(db_conn, build_id, "success", timedelta(1))


def _hit(when: datetime, target: str, **kw: object) -> Hit:
    return Hit(accessed_at=when, target=target, **kw)  # type: ignore[arg-type]


def test_downloads_copy_and_rollups(db_conn):
    target = f.abi(db_conn)
    f.version(db_conn, "foo", "1.0")
    f.build(db_conn, "foo", "1.0", target, tags="py3-none-any")
    day = date(2024, 3, 4)
    at = datetime(2024, 3, 4, 10, 30, tzinfo=UTC)
    info = ClientInfo(
        distro_name="Debian GNU/Linux",
        distro_version="12",
        arch="armv7l",
        py_name="CPython",
        py_version="3.11.2",
        installer_name="pip",
        installer_version="23.0.1",
    )
    n = downloads.add_downloads(
        db_conn,
        [
            _hit(at, "foo-1.0-py3-none-any.whl", client="ab" * 16, bytes_sent=1000, info=info),
            _hit(at, "foo-1.0-py3-none-any.whl", client="10.0.0.0/24", bytes_sent=1000, info=info),
            _hit(at + timedelta(hours=1), "Weird\tName-1.0-py3-none-any.whl", kind="direct"),
        ],
    )
    assert n == 3
    downloads.add_searches(db_conn, [_hit(at, "foo", info=info)] * 4)
    downloads.add_project_hits(db_conn, [_hit(at, "foo", kind="direct")])
    downloads.add_json_hits(db_conn, [_hit(at, "foo", kind="bot")])
    downloads.add_web_hits(db_conn, [_hit(at, "index.html", kind="direct")])
    stats.rollup_day(db_conn, day)
    stats.rollup_day(db_conn, day)  # idempotent
    row = db_conn.execute(
        text(
            "SELECT downloads, bytes_sent, seconds_saved, searches, project_hits, json_hits "
            "FROM daily_package_stats WHERE package = 'foo'"
        )
    ).one()
    # The JSON hit is a bot's: bots are never counted as hits (docs/statistics.rst).
    assert tuple(row) == (2, 2000, 120.0, 4, 1, 0)
    by_arch = db_conn.execute(
        text(
            "SELECT arch, sum(hits) FROM daily_client_stats WHERE source = 'download' "
            "GROUP BY arch ORDER BY arch"
        )
    ).all()
    assert [tuple(r) for r in by_arch] == [("", 1), ("armv7l", 2)]
    assert (
        db_conn.execute(
            text("SELECT count(*) FROM hourly_totals WHERE source = 'download'")
        ).scalar_one()
        == 2
    )
    assert (
        db_conn.execute(text("SELECT filename FROM downloads WHERE kind = 'direct'")).scalar_one()
        == "Weird\tName-1.0-py3-none-any.whl"
    )


@pytest.mark.parametrize("client", ["203.0.113.7", "2001:db8::1", "host.example", "AB" * 16])
def test_raw_addresses_refused(db_conn, client):
    at = datetime(2024, 3, 4, tzinfo=UTC)
    with pytest.raises(ProtocolError, match="raw addresses"):
        downloads.add_downloads(db_conn, [_hit(at, "foo-1.0-py3-none-any.whl", client=client)])
    with pytest.raises(ProtocolError):
        downloads.add_searches(db_conn, [_hit(at, "foo", kind="robot")])
    assert db_conn.execute(text("SELECT count(*) FROM downloads")).scalar_one() == 0


def test_upstream_serials_and_rewrites(db_conn):
    upstream.set_serial(db_conn, 100)
    assert upstream.get_serial(db_conn) == 100
    with pytest.raises(UpstreamError, match="backwards"):
        upstream.set_serial(db_conn, 99)
    packages.add_package(db_conn, "foo")
    upstream.set_project_serial(db_conn, "foo", 50)
    upstream.set_project_serial(db_conn, "foo", 40)
    assert upstream.get_project_serial(db_conn, "foo") == 50
    upstream.request_rewrite(db_conn, "foo", "simple")
    upstream.request_rewrite(db_conn, "foo", "simple")
    assert [r.kind for r in upstream.pending_rewrites(db_conn)] == ["simple"]
    upstream.request_rewrite(db_conn, "foo", "project")
    assert [r.kind for r in upstream.pending_rewrites(db_conn)] == ["both"]
    upstream.rewrite_done(db_conn, "foo")
    assert upstream.pending_rewrites(db_conn) == []


def test_project_data(db_conn):
    cp39 = f.abi(db_conn, "cp39")
    cp311 = f.abi(db_conn, "cp311")
    f.version(db_conn, "Foo", "1.0", days_ago=10)
    f.version(db_conn, "foo", "2.0", days_ago=5, requires_python=">=3.10")
    f.version(db_conn, "foo", "3.0a1", days_ago=1)
    versions.yank_version(db_conn, "foo", "1.0", "oops")
    f.build(db_conn, "foo", "2.0", cp311, tags="py3-none-any", deps=(Dependency("pip", "six"),))
    f.build(db_conn, "foo", "3.0a1", cp39, failure="compile_error")
    data = projects.get_project_data(db_conn, "FOO")
    assert data.name == "foo" and data.abis == (cp39, cp311)
    assert [v.version for v in data.versions] == ["3.0a1", "2.0", "1.0"]
    v3, v2, v1 = data.versions
    assert v3.prerelease and v3.builds[cp39].status == "failed"
    assert v3.builds[cp311].status == "pending"
    assert v2.builds[cp311].status == "built" and v2.builds[cp39].status == "skipped"
    assert v2.files[0].pip_dependencies == ("six",)
    assert v2.files[0].builder_abis == (cp311,)
    assert v1.yanked and v1.yank_reason == "oops"
    with pytest.raises(InvalidName):
        projects.get_project_data(db_conn, "nothing-here")
