"""The Debian packages behind the shared libraries a wheel links.

Reads the direct ``DT_NEEDED`` entries of every ELF member of the wheel with
pyelftools (never ``ldd``: it runs the dynamic loader on untrusted code and
lists the transitive closure, while the Debian packages bring their own
dependencies).  Each library name is resolved to a path with ``ldconfig -p``
for the member's architecture, and all paths go to ONE ``dpkg -S`` call,
each in both spellings that usrmerge allows (``/lib/...`` and
``/usr/lib/...``) and as its real path.  A library that no package provides
(or that cannot be found at all) is recorded with ``package=None``; one the
wheel ships itself is marked ``bundled``.  A wheel without ELF members asks
neither.  The ``ldconfig -p`` table and each path's ``dpkg -S`` answer are
kept for the builder's lifetime, until ``/etc/ld.so.cache`` or dpkg's
status file changes (a package installed or removed).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from piwheels.builder.timing import Timings
from piwheels.errors import InvalidWheel

__all__ = ["LibraryDependency", "ldconfig_cache", "needed_libraries", "wheel_library_deps"]

_ELF_MAGIC = b"\x7fELF"
# ldconfig -p flags that mark each architecture's libraries.
_LDCONFIG_ARCH = {
    ("EM_X86_64", 64): "x86-64",
    ("EM_AARCH64", 64): "AArch64",
    ("EM_ARM", 32): "hard-float",
    ("EM_RISCV", 64): "riscv64",
    ("EM_PPC64", 64): "64bit",
    ("EM_S390", 64): "64bit",
    ("EM_386", 32): "",
}
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
_MAX_MEMBER = 1 << 30  # a single ELF member larger than this is not read


@dataclass(frozen=True)
class LibraryDependency:
    """One ``DT_NEEDED`` library of a wheel and where it comes from."""

    library: str  # e.g. "libz.so.1"
    path: str | None  # where ldconfig finds it on this machine
    package: str | None  # Debian package, e.g. "zlib1g"; None when none provides it
    bundled: bool = False  # shipped inside the wheel itself

    @property
    def missing(self) -> bool:
        """No Debian package provides it and the wheel does not ship it."""
        return self.package is None and not self.bundled


def needed_libraries(data: bytes) -> tuple[list[str], tuple[str, int]] | None:
    """``(DT_NEEDED names, (machine, bits))`` of an ELF image, or None if it is not ELF."""
    if not data.startswith(_ELF_MAGIC):
        return None
    try:
        elf = ELFFile(io.BytesIO(data))
        needed: list[str] = []
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(str(tag.needed))  # type: ignore[attr-defined]
        return needed, (str(elf["e_machine"]), int(elf.elfclass))
    except (ELFError, ValueError, KeyError, IndexError, OSError):
        # A corrupt ELF member is not ours to judge here: it links nothing we can see.
        return [], ("", 0)


def _stamp(path: str) -> tuple[int, int] | None:
    """What says a system file changed: (mtime, size), or None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class _Cache:
    """Answers kept for the process's lifetime while a system file stays unchanged."""

    def __init__(self, source: str) -> None:
        self.source = source  # e.g. dpkg's status file: it changes when packages do
        self.stamp: tuple[int, int] | None = None
        self.data: dict[str, Any] = {}
        self.lock = threading.Lock()

    def fresh(self) -> dict[str, Any]:
        """The kept answers; dropped first when the source file changed. Call under lock."""
        stamp = _stamp(self.source)
        if stamp != self.stamp or stamp is None:
            self.data = {}
            self.stamp = stamp
        return self.data


LD_SO_CACHE = "/etc/ld.so.cache"
DPKG_STATUS = "/var/lib/dpkg/status"
_ldconfig = _Cache(LD_SO_CACHE)
_owners = _Cache(DPKG_STATUS)


def ldconfig_cache() -> dict[str, list[tuple[str, str]]]:
    """``ldconfig -p`` as ``{name: [(flags, path), ...]}`` (kept until ld.so.cache changes)."""
    with _ldconfig.lock:
        _ldconfig.source = LD_SO_CACHE
        kept = _ldconfig.fresh()
        if "cache" not in kept:
            cache = _run_ldconfig()
            if cache is None:
                return {}
            kept["cache"] = cache
        result: dict[str, list[tuple[str, str]]] = kept["cache"]
        return result


def _run_ldconfig() -> dict[str, list[tuple[str, str]]] | None:
    for exe in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            out = subprocess.run(
                [exe, "-p"], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode != 0:
            continue
        cache: dict[str, list[tuple[str, str]]] = {}
        for line in out.stdout.splitlines():
            m = _LDCONFIG_LINE.match(line)
            if m:
                cache.setdefault(m.group(1), []).append((m.group(2), m.group(3)))
        return cache
    return None


def _resolve(
    name: str, arch: tuple[str, int], cache: dict[str, list[tuple[str, str]]]
) -> str | None:
    entries = cache.get(name, [])
    token = _LDCONFIG_ARCH.get(arch)
    for flags, path in entries:
        parts = [p.strip() for p in flags.split(",")]
        if token is None:
            return path
        if token == "":
            # 32-bit x86 entries carry no architecture flag at all.
            if len(parts) == 1:
                return path
        elif token in parts:
            return path
    return None


def _spellings(path: str) -> list[str]:
    """The path, its real path, and their usrmerge twins."""
    out: list[str] = []
    for p in (path, os.path.realpath(path)):
        if p.startswith("/usr/lib"):
            twin = p[len("/usr") :]
        elif p.startswith("/lib"):
            twin = "/usr" + p
        else:
            twin = p
        for q in (p, twin):
            if q not in out:
                out.append(q)
    return out


def dpkg_owners(paths: Iterable[str]) -> dict[str, str]:
    """``{path: package}`` for every path some installed package owns.

    Each path's answer (a package, or none) is kept until dpkg's status file
    changes, so a library seen in an earlier build costs no ``dpkg -S``; the
    others go to ONE ``dpkg -S`` call.
    """
    wanted = sorted(set(paths))
    with _owners.lock:
        _owners.source = DPKG_STATUS
        kept = _owners.fresh()
        unknown = [p for p in wanted if p not in kept]
        if unknown:
            kept.update(_run_dpkg(unknown))
        return {p: kept[p] for p in wanted if kept.get(p)}


_NOT_FOUND = "dpkg-query: no path found matching pattern "


def _run_dpkg(paths: list[str]) -> dict[str, str | None]:
    """One ``dpkg -S``: each path's package, None when dpkg says none has it.

    A path dpkg gave no clear answer for (it failed, or said something else)
    is left out, so it is asked again next time rather than kept as unowned.
    """
    try:
        out = subprocess.run(
            ["dpkg", "-S", *paths], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    answers: dict[str, str | None] = {}
    for line in out.stdout.splitlines():
        if line.startswith("diversion by") or ": " not in line:
            continue
        pkgs, _, path = line.partition(": ")
        # "pkg:arch" (multi-arch) or "pkg1, pkg2": keep the first, without the arch.
        first = pkgs.split(",")[0].strip().split(":")[0]
        if first and answers.get(path.strip()) is None:
            answers[path.strip()] = first
    for line in out.stderr.splitlines():
        if line.startswith(_NOT_FOUND):
            answers.setdefault(line[len(_NOT_FOUND) :].strip(), None)
    return answers


def wheel_library_deps(
    path: str | Path, *, timings: Timings | None = None
) -> tuple[LibraryDependency, ...]:
    """The direct shared-library dependencies of the wheel at *path*, sorted by name.

    *timings* receives ``ELF scan`` and, when the wheel links anything, ``dpkg -S``.
    """
    timings = timings if timings is not None else Timings()
    with timings.step("ELF scan"):
        wanted, basenames = _scan(path)
    if not wanted:
        return ()
    with timings.step("dpkg -S"):
        return _locate(wanted, basenames)


def _scan(path: str | Path) -> tuple[dict[str, tuple[str, int]], set[str]]:
    """({needed library: (machine, bits)}, every member's base name) of a wheel."""
    wanted: dict[str, tuple[str, int]] = {}
    basenames: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                basenames.add(info.filename.rsplit("/", 1)[-1])
                if info.file_size < 64 or info.file_size > _MAX_MEMBER:
                    continue
                with zf.open(info) as member:
                    if member.read(4) != _ELF_MAGIC:
                        continue
                parsed = needed_libraries(zf.read(info))
                if parsed is None:
                    continue
                needed, arch = parsed
                for name in needed:
                    wanted.setdefault(name, arch)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidWheel(f"{Path(path).name}: cannot read for ELF analysis ({exc})")
    return wanted, basenames


def _locate(
    wanted: dict[str, tuple[str, int]], basenames: set[str]
) -> tuple[LibraryDependency, ...]:
    """Each needed library's path (ldconfig) and Debian package (dpkg -S)."""
    cache = ldconfig_cache()
    located = {name: _resolve(name, arch, cache) for name, arch in wanted.items()}
    candidates = [s for p in located.values() if p for s in _spellings(p)]
    owners = dpkg_owners(candidates)
    deps: list[LibraryDependency] = []
    for name in sorted(wanted):
        lib_path = located[name]
        package = None
        if lib_path:
            for spelling in _spellings(lib_path):
                if spelling in owners:
                    package = owners[spelling]
                    break
        deps.append(
            LibraryDependency(
                library=name,
                path=lib_path,
                package=package,
                bundled=package is None and name in basenames,
            )
        )
    return tuple(deps)
