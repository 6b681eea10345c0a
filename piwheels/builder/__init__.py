"""The builder side of the farm: build a wheel under limits, analyse it, test its import.

The public API the builder daemon uses:

* :func:`build_wheel` -> :class:`BuildResult` (``pip wheel`` under a timeout,
  memory limit and disk check, inside bubblewrap when available);
* :func:`analyse_wheel` -> :class:`WheelAnalysis` (metadata and the Debian
  packages behind the wheel's shared libraries);
* :func:`import_test` -> :class:`ImportResult`;
* :func:`sandbox_status` for the start-up log line.
"""

from __future__ import annotations

from piwheels.builder.build import (
    BuildResult,
    DiskSpaceLow,
    FailureClass,
    WheelAnalysis,
    analyse_wheel,
    build_wheel,
    check_disk,
    classify_failure,
)
from piwheels.builder.elfdeps import LibraryDependency
from piwheels.builder.importtest import ImportResult, import_test
from piwheels.builder.sandbox import resolve_sandbox, sandbox_status

__all__ = [
    "BuildResult",
    "DiskSpaceLow",
    "FailureClass",
    "ImportResult",
    "LibraryDependency",
    "WheelAnalysis",
    "analyse_wheel",
    "build_wheel",
    "check_disk",
    "classify_failure",
    "import_test",
    "resolve_sandbox",
    "sandbox_status",
]
