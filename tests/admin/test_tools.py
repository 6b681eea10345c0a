"""piw-add, piw-remove, piw-rebuild and piw-import in-process against a running master."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from piwheels.admin import add, importer, rebuild, remove
from piwheels.errors import EX_DATAERR, EX_UNAVAILABLE, EX_USAGE

from .conftest import Master
from .harness import make_wheel, publish_build


def run(command: Any, argv: list[str]) -> int:
    return command.COMMAND.run(argv, system_config=None, user_config=None, environ={})


class Terminal(io.StringIO):
    """A stdin that is a terminal, with the user's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_add_package_and_version(master: Master, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["Foo_Bar", "1.0", "--summary", "Bars", "--alias", "foo.bar", *master.options()]
    assert run(add, argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["added package foo-bar", "added version foo-bar 1.0"]
    assert run(add, argv) == 0
    assert "already exists" in capsys.readouterr().out
    assert master.sql("SELECT name, summary FROM packages") == [("foo-bar", "Bars")]
    assert ("foo.bar",) in master.sql("SELECT alias FROM package_aliases")

    # A legacy version string is kept as it is.
    assert run(add, ["foo-bar", "2004d", *master.options()]) == 0
    assert master.sql("SELECT valid FROM versions WHERE version = '2004d'") == [(False,)]

    opts = master.options()
    assert run(add, ["foo-bar", "1.0", "--skip", "broken", "--abi", "cp311", *opts]) == 0
    assert run(add, ["foo-bar", "1.0", "--yank", "bad build", *opts]) == 0
    assert run(add, ["foo-bar", "--priority", "3", *opts]) == 0
    out = capsys.readouterr().out
    assert "will not be built: broken" in out and "yanked foo-bar 1.0" in out and "-> 3" in out
    assert master.sql("SELECT yanked, yank_reason FROM versions WHERE version = '1.0'") == [
        (True, "bad build")
    ]


def test_add_refuses_bad_input(master: Master, capsys: pytest.CaptureFixture[str]) -> None:
    opts = master.options()
    assert run(add, ["x" * 201, *opts]) == EX_DATAERR
    err = capsys.readouterr().err
    assert "INVALID" in err and "longer than 200" in err
    assert run(add, ["foo bar", *opts]) == EX_DATAERR
    assert "INVALID" in capsys.readouterr().err
    assert run(add, ["foo", "1 0", *opts]) == EX_DATAERR
    assert run(add, ["foo", "--alias", "bar", *opts]) == EX_DATAERR
    assert "not a spelling of foo" in capsys.readouterr().err
    assert run(add, ["foo", "--yank", "x", *opts]) == EX_USAGE
    assert "--yank needs a VERSION" in capsys.readouterr().err
    assert run(add, ["foo", "--skip", "x", "--unskip", *opts]) == EX_USAGE
    assert master.sql("SELECT name FROM packages") == [("foo",)]  # only from the "1 0" try


def test_no_master_running(tmp_short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"ipc://{tmp_short}/nobody"
    start = time.monotonic()
    code = run(add, ["foo", "--admin-endpoint", address, "--timeout", "0.5"])
    assert code == EX_UNAVAILABLE
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"piw-add: error: the master is not running at {address} (no answer within 0.5 s)"
    ]
    code = run(rebuild, ["home", "--admin-endpoint", address, "--timeout", "0.5"])
    assert code == EX_UNAVAILABLE


def test_remove(master: Master, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    opts = master.options()
    assert run(remove, ["nothere", "-y", *opts]) == EX_DATAERR
    assert "NOPKG: no package nothere" in capsys.readouterr().err
    assert run(add, ["foo", "1.0", *opts]) == 0
    with master.engine.begin() as conn:
        _, wheel = publish_build(conn, master.output, "foo", "1.0")
    # No terminal and no --yes: refused, nothing removed.
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert run(remove, ["foo", *opts]) == EX_USAGE
    assert "--yes" in capsys.readouterr().err
    # A terminal, and the user says no.
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert run(remove, ["foo", "--builds", *opts]) == 1
    assert wheel.exists()
    # The user says yes: only the builds go.
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert run(remove, ["foo", "--builds", *opts]) == 0
    assert "removed 1 build(s) of foo" in capsys.readouterr().out
    assert not wheel.exists()
    assert master.sql("SELECT version FROM build_queue") == [("1.0",)]
    assert run(remove, ["foo", "1.0", "-y", *opts]) == 0
    assert master.sql("SELECT count(*) FROM versions") == [(0,)]
    assert run(remove, ["foo", "-y", "--reason", "spam", *opts]) == 0
    assert master.sql("SELECT count(*) FROM packages") == [(0,)]
    assert not (master.output / "project/foo").exists()


def test_rebuild(master: Master, capsys: pytest.CaptureFixture[str]) -> None:
    opts = master.options()
    for name in ("alpha", "beta"):
        assert run(add, [name, *opts]) == 0
    capsys.readouterr()
    assert run(rebuild, ["all", *opts]) == 0
    captured = capsys.readouterr()
    # piw-rebuild all ends once the page writer has written every project.
    assert "wrote the pages of 2 project(s)" in captured.out
    assert "2/2 written" in captured.err
    for name in ("alpha", "beta"):
        assert (master.output / f"project/{name}/index.html").exists(), name
    assert run(rebuild, ["project", "beta", *opts]) == 0
    assert run(rebuild, ["project", *opts]) == EX_USAGE
    assert run(rebuild, ["home", "beta", *opts]) == EX_USAGE
    assert run(rebuild, ["project", "nope", *opts]) == EX_DATAERR
    deadline = time.monotonic() + 10
    while not (master.output / "project/alpha/index.html").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_import(master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opts = [*master.options(), "--file-endpoint", master.env.addresses["file"], "--no-curve"]
    assert run(add, ["foo", "1.0", *opts[:6]]) == 0
    wheel = make_wheel(tmp_path / "in", "foo", "1.0", "cp311-cp311-linux_armv7l")
    log = tmp_path / "build.log"
    log.write_text("compiled by hand\n")
    code = run(importer, [str(wheel), "--log", str(log), "--duration", "5m", "-y", *opts])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Import 1 wheel(s) of foo 1.0 for cp311-linux_armv7l" in captured.out
    assert "imported 1 file(s)" in captured.out
    published = master.output / "simple/foo" / wheel.name
    assert published.read_bytes() == wheel.read_bytes()
    assert master.sql("SELECT status, extract(epoch FROM duration) FROM builds") == [
        ("success", 300)
    ]
    # Again: already there.
    assert run(importer, [str(wheel), "-y", *opts]) == 0
    assert "already published" in capsys.readouterr().out


def _break(wheel: Path) -> None:
    """Change a member's bytes without updating RECORD."""
    with zipfile.ZipFile(wheel) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n.endswith("__init__.py"))
    members[name] += b"# tampered\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_import_refuses_broken_wheels_locally(
    tmp_path: Path, tmp_short: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No master at all: a broken wheel is refused before anything is sent (65, not 69).
    opts = ["--admin-endpoint", f"ipc://{tmp_short}/nobody", "--timeout", "0.5", "-y"]
    wheel = make_wheel(tmp_path / "in", "foo", "1.0", "cp311-cp311-linux_armv7l")
    _break(wheel)
    assert run(importer, [str(wheel), *opts]) == EX_DATAERR
    assert "RECORD" in capsys.readouterr().err
    truncated = make_wheel(tmp_path / "t", "foo", "1.0", "cp311-cp311-linux_armv7l")
    truncated.write_bytes(truncated.read_bytes()[:-40])
    assert run(importer, [str(truncated), *opts]) == EX_DATAERR
    other = make_wheel(tmp_path / "o", "foo", "1.0", "cp311-cp311-linux_armv7l")
    assert run(importer, [str(other), "--package", "bar", *opts]) == EX_DATAERR
    assert "not 'bar'" in capsys.readouterr().err
    pure = make_wheel(tmp_path / "p", "foo", "1.0", "py3-none-any")
    assert run(importer, [str(pure), *opts]) == EX_USAGE
    assert "--abi" in capsys.readouterr().err
    assert run(importer, [str(tmp_path / "missing.whl"), *opts]) == EX_DATAERR
    # A good wheel with no master: the master is not running.
    assert run(importer, [str(other), "--no-curve", *opts]) == EX_UNAVAILABLE
