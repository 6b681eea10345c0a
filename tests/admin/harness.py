"""Shared pieces of the admin tests: a fresh database, a master env, wheels made by hand."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from piwheels.master.env import MasterEnv
from piwheels.settings import Settings

#: The migrated template every test database is copied from (see tests/conftest.py).
TEMPLATE_DB = "piwheels_template"


def fresh_engine(new_database: Any) -> Any:
    """An engine on a new migrated database of the test's own (the gateway commits)."""
    return create_engine(new_database(template=TEMPLATE_DB, prefix="piwadm"))


def make_env(engine: Any, output: Path, sockets: Path, **master: Any) -> MasterEnv:
    """A master environment: admin on ipc in *sockets*, internal endpoints inproc."""
    tag = sockets.name
    settings = Settings().replace(
        "master",
        output_path=output,
        page_coalesce=timedelta(0),
        admin_endpoint=f"ipc://{sockets}/admin",
        **master,
    )
    settings = settings.replace("keys", curve=False)
    addresses = {
        "admin": f"ipc://{sockets}/admin",
        "file": f"ipc://{sockets}/file",
        "pages": f"inproc://pages-{tag}",
        "transfers": f"inproc://transfers-{tag}",
    }
    return MasterEnv(settings=settings, addresses=addresses, output_path=output, engine=engine)


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    name: str = "foo",
    version: str = "1.0",
    tag: str = "cp311-cp311-linux_armv7l",
    *,
    requires_python: str | None = None,
) -> Path:
    """A valid wheel (METADATA, WHEEL, RECORD with hashes) written with zipfile."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    members = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{info}/METADATA": ("\n".join(meta) + "\n\nA test package.\n").encode(),
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: piwheels-tests\nRoot-Is-Purelib: false\nTag: {tag}\n"
        ).encode(),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in members.items())
    record += f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in members.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/RECORD", record)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{dist}-{version}-{tag}.whl"
    out.write_bytes(buf.getvalue())
    return out


def metadata_of(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name)


def publish_build(
    conn: Any,
    output: Path,
    package: str,
    version: str,
    target: str = "cp311-linux_armv7l",
    tag: str = "cp311-cp311-linux_armv7l",
) -> tuple[int, Path]:
    """Record a successful build of a real wheel and put it (and its .metadata) in the site."""
    from piwheels.db import builds
    from piwheels.db.files import FileRecord
    from piwheels.wheels import canonicalize

    folder = output / "simple" / canonicalize(package)
    wheel = make_wheel(folder, package, version, tag)
    data = wheel.read_bytes()
    meta = metadata_of(wheel)
    (folder / f"{wheel.name}.metadata").write_bytes(meta)
    build_id = builds.start_build(conn, package, version, target, "builder1")
    record = FileRecord(
        filename=wheel.name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metadata_sha256=hashlib.sha256(meta).hexdigest(),
    )
    builds.finish_build(conn, build_id, "success", timedelta(seconds=30), files=[record])
    return build_id, wheel
