"""Fixtures for the site tests: real wheels, a site written by SiteWriter, private nginx."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from piwheels.web.model import FileData, ProjectData, VersionData
from piwheels.web.nginx import PrivateNginx
from piwheels.web.render import SiteConfig
from piwheels.web.writer import SiteWriter


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Wheel:
    """A wheel made in memory: its file name, bytes and METADATA."""

    name: str
    version: str
    filename: str
    data: bytes
    metadata: bytes
    requires: tuple[str, ...]
    requires_python: str | None


def make_wheel(
    name: str, version: str, requires: tuple[str, ...] = (), requires_python: str | None = None
) -> Wheel:
    """A valid pure-Python wheel (METADATA, WHEEL, RECORD with hashes) built with zipfile."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    metadata = ("\n".join(meta) + "\n\nA test package.\n").encode()
    files = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: piwheels-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", record)
    filename = f"{dist}-{version}-py3-none-any.whl"
    return Wheel(name, version, filename, buf.getvalue(), metadata, requires, requires_python)


def publish(site: SiteWriter, wheel: Wheel, *, with_metadata: bool = True) -> FileData:
    """Put *wheel* (and its .metadata) in the site the way the file receiver does."""
    target = site.path(f"simple/{wheel.name}/{wheel.filename}")
    target.parent.mkdir(parents=True, exist_ok=True)
    site.write_file(f"simple/{wheel.name}/{wheel.filename}", wheel.data)
    meta_sha = None
    if with_metadata:
        site.write_metadata(wheel.name, wheel.filename, wheel.metadata)
        meta_sha = hashlib.sha256(wheel.metadata).hexdigest()
    return FileData(
        filename=wheel.filename,
        size=len(wheel.data),
        sha256=hashlib.sha256(wheel.data).hexdigest(),
        upload_time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        abi_tag="none",
        platform_tag="any",
        requires_python=wheel.requires_python,
        metadata_sha256=meta_sha,
        builder_abis=("cp311",),
        import_ok=True,
        pip_dependencies=wheel.requires,
    )


def readable_tempdir(prefix: str) -> Path:
    """A temp dir nginx workers (another user when we are root) can read."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def write_demo_site(root: Path, *, with_metadata: bool = True) -> dict[str, ProjectData]:
    """A small tree: alpha (2.0 needs beta; 3.0 yanked), beta, gamma (quarantined), foo-bar."""
    site = SiteWriter(root, SiteConfig(base_url="http://piwheels.test"), gzip_threshold=1024)
    site.write_static()
    beta1 = publish(site, make_wheel("beta", "1.0"), with_metadata=with_metadata)
    alpha1 = publish(site, make_wheel("alpha", "1.0"), with_metadata=with_metadata)
    alpha2 = publish(
        site,
        make_wheel("alpha", "2.0", ("beta>=1.0",), ">=3.8"),
        with_metadata=with_metadata,
    )
    alpha3 = publish(site, make_wheel("alpha", "3.0", ("beta>=1.0",)), with_metadata=with_metadata)
    gamma1 = publish(site, make_wheel("gamma", "1.0"), with_metadata=with_metadata)
    foo_bar1 = publish(site, make_wheel("foo-bar", "1.0"), with_metadata=with_metadata)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    projects = {
        "alpha": ProjectData(
            name="alpha",
            display_name="Alpha",
            summary="The first",
            aliases=("Alpha",),
            versions=(
                VersionData("3.0", when, yanked=True, yank_reason="broken", files=(alpha3,)),
                VersionData("2.0", when, files=(alpha2,)),
                VersionData("1.0", when, files=(alpha1,)),
            ),
        ),
        "beta": ProjectData("beta", "beta", versions=(VersionData("1.0", when, files=(beta1,)),)),
        "gamma": ProjectData(
            "gamma",
            "gamma",
            status="quarantined",
            status_reason="malware report",
            versions=(VersionData("1.0", when, files=(gamma1,)),),
        ),
        # Upstream spells it Foo_Bar: other spellings are redirected here by nginx.
        "foo-bar": ProjectData(
            "foo-bar",
            "Foo_Bar",
            aliases=("Foo_Bar",),
            versions=(VersionData("1.0", when, files=(foo_bar1,)),),
        ),
    }
    for project in projects.values():
        site.write_project(project)
    site.write_root(sorted(projects))
    return projects


@pytest.fixture(scope="module")
def demo_site() -> Iterator[tuple[Path, dict[str, ProjectData]]]:
    """A demo tree written by SiteWriter (module-wide; tests must not modify it)."""
    root = readable_tempdir("piwtest-site-")
    projects = write_demo_site(root / "www")
    yield root / "www", projects
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_nginx(demo_site: tuple[Path, dict[str, ProjectData]]) -> Iterator[PrivateNginx]:
    """A private nginx serving the demo tree on a loopback port."""
    root, _ = demo_site
    prefix = readable_tempdir("piwtest-nginx-")
    with PrivateNginx(root, prefix) as server:
        yield server
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_nginx() -> Iterator[PrivateNginx]:
    """A second nginx serving an index that has no projects (the 'main' index for extra-url)."""
    top = readable_tempdir("piwtest-empty-")
    SiteWriter(top / "www").write_root([])
    with PrivateNginx(top / "www", top / "nginx") as server:
        yield server
    shutil.rmtree(top, ignore_errors=True)
