"""Import tests of built wheels in a fresh venv (piwheels.builder.importtest)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from piwheels.builder import import_test
from piwheels.builder.importtest import missing_library
from tests.builder.test_build import _processes_with
from tests.test_wheels import make_wheel

pytestmark = pytest.mark.slow


def test_pure_wheel_imports(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("pure").wheels[0], timeout=120)
    assert result.ok
    assert result.modules == ("piwtest_pure",)
    assert result.error is None
    assert result.missing_library is None


def test_extension_with_system_library_imports(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("zlib").wheels[0], timeout=120)
    assert result.ok, result.error


def test_broken_import_reports_the_error(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("bad-import").wheels[0], timeout=120)
    assert not result.ok
    assert result.modules == ("piwtest_bad_import",)
    assert result.error is not None
    assert "ModuleNotFoundError" in result.error
    assert "piwtest_no_such_module_anywhere" in result.error
    assert result.missing_library is None


def test_missing_library_is_named(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("missing-lib").wheels[0], timeout=120)
    assert not result.ok
    assert result.missing_library == "libpiwtestmissing.so.1"
    assert "cannot open shared object file" in (result.error or "")


def test_reports_the_module_that_fails(built) -> None:  # type: ignore[no-untyped-def]
    result = import_test(built("pure").wheels[0], timeout=120, modules=["piwtest_pure", "nope_x"])
    assert not result.ok
    assert (result.error or "").startswith("import nope_x: ModuleNotFoundError")


def test_import_that_hangs_is_killed(tmp_path: Path) -> None:
    module = f"slow_{uuid.uuid4().hex}"
    wheel = make_wheel(tmp_path, files={f"{module}.py": b"import time\ntime.sleep(600)\n"})
    result = import_test(wheel, timeout=3)
    assert not result.ok
    assert "timed out after 3 s" in (result.error or "")
    assert _processes_with(module) == []


@pytest.mark.parametrize(
    ("text", "library"),
    [
        (
            "ImportError: libopenblas.so.0: cannot open shared object file: No such file",
            "libopenblas.so.0",
        ),
        (
            "ImportError: libhdf5_serial.so.103: cannot open shared object file",
            "libhdf5_serial.so.103",
        ),
        ("ImportError: libfoo.so: cannot open shared object file", "libfoo.so"),
        ("ModuleNotFoundError: No module named 'x'", None),
    ],
)
def test_missing_library_parsing(text: str, library: str | None) -> None:
    assert missing_library(text) == library
