"""piw-audit against a site with planted problems, on a real database."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from piwheels.admin import audit, rebuild
from piwheels.db import packages, versions

from .conftest import Master
from .harness import publish_build


def run(argv: list[str]) -> int:
    return audit.COMMAND.run(argv, system_config=None, user_config=None, environ={})


def rebuild_pages(master: Master, *argv: str) -> int:
    return rebuild.COMMAND.run(
        [*argv, *master.options()], system_config=None, user_config=None, environ={}
    )


def plant(master: Master) -> dict[str, Path]:
    """Three published wheels and their pages, then one problem of each kind."""
    out = master.output
    with master.engine.begin() as conn:
        for name in ("alpha", "beta", "gamma", "delta"):
            packages.add_package(conn, name)
            versions.add_version(conn, name, "1.0")
        wheels = {
            name: publish_build(conn, out, name, "1.0")[1]
            for name in ("alpha", "beta", "gamma", "delta")
        }
    # The page writer is running: ask it for every page, as an operator would.
    assert rebuild_pages(master, "all") == 0
    deadline = time.monotonic() + 10
    while not all((out / f"project/{n}/json/index.json").exists() for n in wheels):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    wheels["alpha"].unlink()  # missing
    wheels["beta"].write_bytes(wheels["beta"].read_bytes() + b"x")  # wrong size
    data = bytearray(wheels["gamma"].read_bytes())
    data[-1] ^= 0xFF
    wheels["gamma"].write_bytes(bytes(data))  # wrong hash, same size
    Path(f"{wheels['delta']}.metadata").unlink()  # missing .metadata
    extra = out / "simple/delta/delta-0.9-py3-none-any.whl"
    extra.write_bytes(b"not ours")  # extra file
    stray = out / "simple/nobody"
    stray.mkdir()
    (stray / "index.html").write_text("stale")  # a project the database does not know
    (out / "project/beta/index.html").unlink()  # missing page
    return {**wheels, "extra": extra, "stray": stray}


def test_audit_reports_each_problem(master: Master, capsys: pytest.CaptureFixture[str]) -> None:
    planted = plant(master)
    capsys.readouterr()
    argv = ["--dsn", master.url, "--output-path", str(master.output)]
    assert run(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    found = {(line.split()[0], line.split()[1].rstrip(":")) for line in lines[:-1]}
    assert found == {
        ("missing", f"simple/alpha/{planted['alpha'].name}"),
        ("size", f"simple/beta/{planted['beta'].name}"),
        ("hash", f"simple/gamma/{planted['gamma'].name}"),
        ("metadata-missing", f"simple/delta/{planted['delta'].name}.metadata"),
        ("extra", "simple/delta/delta-0.9-py3-none-any.whl"),
        ("extra-project", "simple/nobody"),
        ("page-missing", "project/beta/index.html"),
    }, lines
    assert lines[-1] == "7 problem(s) found"
    # --quick does not read whole files: the damaged hash goes unseen.
    assert run([*argv, "--quick"]) == 1
    assert "hash " not in capsys.readouterr().out


def test_audit_fix_moves_extras_and_leaves_listed_files(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = plant(master)
    quarantine = tmp_path / "quarantine"
    before = {p: planted[p].read_bytes() for p in ("beta", "gamma", "delta")}
    argv = ["--dsn", master.url, *master.options(), "--fix", "--quarantine", str(quarantine)]
    assert run(argv) == 1  # missing and damaged files cannot be fixed
    out = capsys.readouterr().out
    assert "4 problem(s) left" in out
    assert not planted["extra"].exists()
    assert (quarantine / "simple/delta/delta-0.9-py3-none-any.whl").read_bytes() == b"not ours"
    assert (quarantine / "simple/nobody/index.html").exists() and not planted["stray"].exists()
    # Files the database lists are never moved or touched, damaged or not.
    for name, data in before.items():
        assert planted[name].read_bytes() == data
    deadline = time.monotonic() + 10
    while not (master.output / "project/beta/index.html").exists():
        assert time.monotonic() < deadline, "the page was not rewritten"
        time.sleep(0.05)
    assert run(["--dsn", master.url, "--output-path", str(master.output)]) == 1
    kinds = {line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert kinds == {"missing", "size", "hash", "metadata-missing"}


def test_audit_finds_stale_pages_and_a_clean_site(
    master: Master, capsys: pytest.CaptureFixture[str]
) -> None:
    with master.engine.begin() as conn:
        versions.add_version(conn, "solo", "1.0")
        publish_build(conn, master.output, "solo", "1.0")
    assert rebuild_pages(master, "project", "solo") == 0
    assert rebuild_pages(master, "root") == 0
    page = master.output / "project/solo/json/index.json"
    deadline = time.monotonic() + 10
    while not (page.exists() and (master.output / "simple/index.html").exists()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    capsys.readouterr()
    argv = ["--dsn", master.url, "--output-path", str(master.output)]
    assert run(argv) == 0
    assert capsys.readouterr().out.strip() == "0 problem(s) found"
    os.utime(page, (0, 0))  # as if written long before the build
    assert run(argv) == 1
    assert "page-stale        project/solo/json/index.json" in capsys.readouterr().out


def test_audit_bad_config(tmp_path: Path, capsys: Any) -> None:
    assert run(["--output-path", str(tmp_path / "nope")]) == 78
    assert "is not a folder" in capsys.readouterr().err
