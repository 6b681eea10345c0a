"""The bulk project loader reads exactly what the per-project loader reads."""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from piwheels.db import builds, figures, files, packages, projects, versions
from piwheels.db.files import Dependency
from piwheels.web.model import AbiStatus, unchecked_maker
from tests.db import factories as f


def _varied(conn: Any) -> list[str]:
    """Projects in every state a page shows; returns their names (one missing on purpose)."""
    cp39 = f.abi(conn, "cp39")
    cp311 = f.abi(conn, "cp311")
    # Yanked, pre-release, pure wheel serving both targets, with deps of every kind.
    f.version(conn, "Alpha", "1.0", days_ago=10)
    f.version(conn, "alpha", "2.0", days_ago=5)
    f.version(conn, "alpha", "3.0a1", days_ago=1)
    versions.yank_version(conn, "alpha", "1.0", "broken <b>")
    deps = (
        Dependency("pip", "six"),
        Dependency("apt", "libffi8"),
        Dependency("apt", "libc6"),
        Dependency("missing-lib", "libfoo.so.1"),
    )
    f.build(conn, "alpha", "2.0", cp311, tags="py3-none-any", deps=deps)
    f.build(conn, "alpha", "3.0a1", cp39, failure="compile_error")
    packages.add_alias(conn, "ALPHA")
    packages.add_alias(conn, "aLpHa")
    # Binary wheels, import results, a Requires-Python exclusion.
    f.version(conn, "beta", "1.0", requires_python=">=3.10")
    f.build(conn, "beta", "1.0", cp311, tags="cp311-cp311-linux_armv7l")
    wheel = "beta-1.0-cp311-cp311-linux_armv7l.whl"
    files.set_import_test(conn, wheel, "failed", "ImportError: libfoo", ["libfoo.so.1"])
    f.version(conn, "beta", "0.9")
    f.build(conn, "beta", "0.9", cp39, tags="cp39-cp39-linux_armv7l")
    # Skipped in every way: project, version, project-target, version-target.
    f.version(conn, "gamma", "1.0")
    packages.skip_package(conn, "gamma", "binary only")
    f.version(conn, "delta", "1.0")
    f.version(conn, "delta", "2.0")
    versions.skip_version(conn, "delta", "1.0", "too big")
    packages.skip_package_abi(conn, "delta", cp39, "no compiler")
    versions.skip_version_abi(conn, "delta", "2.0", cp311, "hangs")
    # Building, pending, failed then queued again.
    f.version(conn, "epsilon", "1.0")
    f.version(conn, "epsilon", "1.1")
    builds.start_build(conn, "epsilon", "1.0", cp311, "builder1")
    f.build(conn, "epsilon", "1.1", cp39, failure="timeout")
    builds.request_retry(conn, "epsilon", "1.1")
    # Quarantined (PEP 792), no versions at all, downloads.
    f.version(conn, "zeta", "1.0")
    packages.set_status(conn, "zeta", "quarantined", "malware report")
    packages.add_package(conn, "eta", summary="nothing yet")
    today = date.today()
    for pkg, days_ago, n in (("alpha", 1, 5), ("alpha", 100, 7), ("beta", 3, 2)):
        conn.execute(
            text("INSERT INTO daily_package_stats (day, package, downloads) VALUES (:d, :p, :n)"),
            {"d": today - timedelta(days=days_ago), "p": pkg, "n": n},
        )
    # Added and deleted before the rewrite reads it.
    f.version(conn, "theta", "1.0")
    packages.delete_package(conn, "theta")
    return ["alpha", "Beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "never-was"]


def test_bulk_equals_per_project(db_conn: Any) -> None:
    names = _varied(db_conn)
    bulk = projects.get_projects_data(db_conn, names)
    assert sorted(bulk) == ["alpha", "beta", "delta", "epsilon", "eta", "gamma", "zeta"]
    for name, data in bulk.items():
        assert data == projects.get_project_data(db_conn, name), name
    # The states the comparison covers are really there.
    statuses = {
        (p.name, v.version, abi): s.status
        for p in bulk.values()
        for v in p.versions
        for abi, s in v.builds.items()
    }
    assert {"built", "failed", "skipped", "pending", "building"} <= set(statuses.values())
    alpha = bulk["alpha"]
    assert alpha.downloads_30d == 5 and alpha.downloads_all == 12
    assert set(alpha.aliases) >= {"ALPHA", "aLpHa"}
    assert alpha.versions[2].yanked and alpha.versions[1].files[0].apt_dependencies
    assert bulk["beta"].versions[0].files[0].import_ok is False
    assert bulk["zeta"].status == "quarantined" and bulk["eta"].versions == ()


def test_bulk_edge_cases(db_conn: Any) -> None:
    assert projects.get_projects_data(db_conn, []) == {}
    assert projects.get_projects_data(db_conn, ["nobody-here"]) == {}
    names = _varied(db_conn)
    # Other spellings and repeats read the canonical project once.
    got = projects.get_projects_data(db_conn, ["ALPHA", "alpha", "Alpha"])
    assert list(got) == ["alpha"]
    streamed = list(projects.iter_projects_data(db_conn, names, batch=3))
    assert sorted(p.name for p in streamed) == sorted(projects.get_projects_data(db_conn, names))


@pytest.mark.parametrize("batch", [0, -1])
def test_iter_refuses_bad_batch(db_conn: Any, batch: int) -> None:
    with pytest.raises(ValueError, match="batch"):
        list(projects.iter_projects_data(db_conn, ["alpha"], batch=batch))


def test_bulk_values_pass_the_model_checks(db_conn: Any) -> None:
    """The loaders skip the model's checks; every value they make must pass them anyway."""
    bulk = projects.get_projects_data(db_conn, _varied(db_conn))
    made = 0
    for project in bulk.values():
        for version in project.versions:
            # replace() builds through __init__, so __post_init__ checks each value again.
            assert dataclasses.replace(version) == version
            for status in version.builds.values():
                assert dataclasses.replace(status) == status
                made += 1
            for file in version.files:
                assert dataclasses.replace(file) == file
                made += 1
    assert made > 10


def test_unchecked_maker_takes_every_field() -> None:
    make = unchecked_maker(AbiStatus)
    assert make("built", 7, None, None, None) == AbiStatus("built", build_id=7)
    with pytest.raises(TypeError):
        make("built", 7)


def test_batch_says_which_are_published(db_conn: Any) -> None:
    names = _varied(db_conn)
    data, published = projects.get_projects_batch(db_conn, names)
    assert data == projects.get_projects_data(db_conn, names)
    # The root index's own query decides; quarantined zeta and file-less eta are not listed.
    assert published == set(figures.published_names(db_conn)) & set(data)
    assert "alpha" in published and "zeta" not in published and "eta" not in published
    # A removed project keeps its rows for a while but leaves the root index.
    packages.remove_package(db_conn, "alpha")
    data, published = projects.get_projects_batch(db_conn, names)
    assert "alpha" not in published and published == set(figures.published_names(db_conn))
    assert projects.get_projects_batch(db_conn, []) == ({}, set())
