"""Every kind of sdist through a real farm: master, two builders, pip, PostgreSQL, the site.

All seven releases are queued at once (the sleeper last) so the two builders
work through them together; each test then waits for its own release.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from piwheels.wheels import parse_wheel_filename
from tests import sdists

from .conftest import Farm, wait_until

pytestmark = pytest.mark.slow

ABI = "cp{}{}".format(*sys.version_info[:2])
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")
TARGET = f"{ABI}-{PLATFORM}"
SLEEPER_TOKEN = f"piwsleep{uuid.uuid4().hex[:8]}"

KINDS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "piwtest-pure": (sdists.pure_sdist, ()),
    "piwtest-cext": (sdists.c_ext_sdist, ()),
    "piwtest-broken-c": (sdists.compile_error_sdist, ()),
    "piwtest-abi3": (sdists.abi3_sdist, ()),
    "piwtest-zlib": (sdists.zlib_sdist, ()),
    "piwtest-bad-import": (sdists.broken_import_sdist, ()),
    "piwtest-sleeper": (sdists.sleeper_sdist, (SLEEPER_TOKEN,)),
}


@pytest.fixture(scope="module")
def farm(farm_factory: Any) -> Farm:
    """A farm whose transient failures are not retried (the sleeper times out once)."""
    f = farm_factory(max_attempts=1)
    f.start_master()
    now = datetime.now(UTC)
    for i, (name, (make, args)) in enumerate(KINDS.items()):
        f.publish_sdist(make, *args)
        # Newest releases build first: the sleeper, released long ago, comes last.
        age = timedelta(days=99 if name == "piwtest-sleeper" else i)
        f.add_release(name, released_at=now - age)
    f.start_builder("pi-a")
    f.start_builder("pi-b")
    return f


def check_published(farm: Farm, package: str, build_id: int) -> tuple[str, dict[str, Any]]:
    """The one wheel of *package*: in the DB, in simple/, with .metadata, on the pages."""
    files = farm.files(package)
    assert len(files) == 1, files
    row = files[0]
    wheel = farm.output / "simple" / package / row.filename
    data = wheel.read_bytes()
    assert len(data) == row.size
    assert hashlib.sha256(data).hexdigest() == row.sha256
    metadata = (farm.output / "simple" / package / f"{row.filename}.metadata").read_text()
    assert f"Name: {package}" in metadata
    page = farm.wait_page_lists(package, row.filename)
    (listed,) = [f for f in page["files"] if f["filename"] == row.filename]
    assert listed["hashes"]["sha256"] == row.sha256
    assert listed.get("core-metadata") or listed.get("data-dist-info-metadata")
    # The other builder may be sending another package's wheel right now: only this
    # file must be gone from staging.
    assert [p for p in farm.staged() if p.name == row.filename] == []
    log = farm.build_log(build_id)
    assert "piwheels builder:" in log and row.filename in log
    project = farm.wait_project(package, row.filename)
    assert project["package"] == package
    return row.filename, project


def release_files(project: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for r in project["releases"] for f in r.get("files", [])]


def test_pure_python(farm: Farm) -> None:
    build = farm.wait_success("piwtest-pure")
    assert build.abi == TARGET
    filename, project = check_published(farm, "piwtest-pure", build.build_id)
    assert {str(t) for t in parse_wheel_filename(filename).tags} == {"py3-none-any"}
    deps = farm.dependencies(filename)
    # Requires-Dist kept with its markers.
    assert ("pip", 'packaging>=20; python_version >= "3.8"') in deps
    assert ("pip", 'colorama; os_name == "nt"') in deps
    assert project["install"]["version"] == "1.0"
    page = farm.simple_json("piwtest-pure")
    (listed,) = page["files"]
    assert listed["requires-python"] == ">=3.8"
    # One build only: a pure wheel serves every target.
    assert len(farm.builds("piwtest-pure")) == 1
    assert farm.sql("SELECT 1 FROM build_queue WHERE package = 'piwtest-pure'") == []


def test_c_extension(farm: Farm) -> None:
    build = farm.wait_success("piwtest-cext")
    filename, _ = check_published(farm, "piwtest-cext", build.build_id)
    assert f"{ABI}-{ABI}-" in filename and filename.endswith(f"{PLATFORM}.whl")
    (row,) = farm.files("piwtest-cext")
    assert row.import_test == "passed"
    assert [d for d in farm.dependencies(filename) if d[0] == "missing-lib"] == []


def test_compile_failure(farm: Farm) -> None:
    (build,) = farm.wait_finished("piwtest-broken-c")
    assert (build.status, build.failure_class) == ("failed", "compile_error")
    assert farm.files("piwtest-broken-c") == []
    assert list((farm.output / "simple" / "piwtest-broken-c").glob("*.whl")) == []
    log = farm.build_log(build.build_id)
    assert "this is not C" in log or "error:" in log
    project = farm.wait_project("piwtest-broken-c")
    assert project["install"]["version"] is None
    # A permanent failure is not queued again.
    assert farm.sql("SELECT 1 FROM build_queue WHERE package = 'piwtest-broken-c'") == []


def test_abi3(farm: Farm) -> None:
    build = farm.wait_success("piwtest-abi3")
    filename, _ = check_published(farm, "piwtest-abi3", build.build_id)
    assert "-cp38-abi3-" in filename
    (row,) = farm.files("piwtest-abi3")
    assert row.import_test == "passed"


def test_zlib_apt_dependency(farm: Farm) -> None:
    build = farm.wait_success("piwtest-zlib")
    filename, project = check_published(farm, "piwtest-zlib", build.build_id)
    assert ("apt", "zlib1g") in farm.dependencies(filename)
    assert "zlib1g" in project["install"]["apt_dependencies"]
    (row,) = farm.files("piwtest-zlib")
    assert row.import_test == "passed"


def test_import_failure_recorded(farm: Farm) -> None:
    build = farm.wait_success("piwtest-bad-import")
    filename, project = check_published(farm, "piwtest-bad-import", build.build_id)
    (row,) = farm.files("piwtest-bad-import")
    assert row.import_test == "failed"
    assert "piwtest_no_such_module_anywhere" in row.import_error
    shown = [f for f in release_files(project) if f.get("filename") == filename]
    assert shown, project
    result = shown[0]["import_test"]
    assert result["ok"] is False
    assert "piwtest_no_such_module_anywhere" in result["error"]


def test_sleeper_times_out(farm: Farm) -> None:
    (build,) = farm.wait_finished("piwtest-sleeper", timeout=240)
    assert (build.status, build.failure_class) == ("failed", "timeout")
    assert farm.files("piwtest-sleeper") == []
    log = farm.build_log(build.build_id)
    assert "piwtest sleeper started" in log
    assert "timeout" in log.lower() or "timed out" in log.lower()
    # The whole process tree was killed, the detached child too.
    survivors = wait_until(lambda: not _with_token(SLEEPER_TOKEN), timeout=30, what="no survivors")
    assert survivors
    # max_attempts = 1 here: not queued again.
    assert farm.sql("SELECT 1 FROM build_queue WHERE package = 'piwtest-sleeper'") == []


def _with_token(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_builders_still_serving(farm: Farm) -> None:
    """After all that, both builders are connected and idle, and nothing is in flight."""
    wait_until(
        lambda: (
            all(b.alive for b in farm.builders)
            and len(farm.dispatcher().snapshot()) == 2
            and all(s.build is None for s in farm.dispatcher().snapshot().values())
        ),
        timeout=120,
        what="two idle builders",
    )
    assert farm.sql("SELECT count(*) FROM builds WHERE status = 'building'") == [(0,)]
    names = {p.parent.name for p in farm.published()}
    assert names == {
        "piwtest-pure",
        "piwtest-cext",
        "piwtest-abi3",
        "piwtest-zlib",
        "piwtest-bad-import",
    }
    root = farm.output / "simple" / "index.json"
    listed = {p["name"] for p in json.loads(root.read_bytes())["projects"]}
    assert names <= listed
