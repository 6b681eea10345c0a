"""Make real sdists, build-requirement wheels and a PEP 503 folder for tests, offline.

Every sdist here is a setuptools project with a ``pyproject.toml`` whose
build system requires setuptools, written straight into a ``.tar.gz`` (no
build step, so making one is instant).

pip builds them with build isolation, which needs setuptools (and, for
setuptools older than 70.1, ``wheel`` and its dependency ``packaging``) from
an index.  Tests never reach the internet, so :func:`build_requirement_wheels`
repacks the copies installed in the running Python into wheels, and
:func:`write_simple_index` turns a folder of distributions into a static
PEP 503 index that a loopback HTTP server can serve.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import importlib.metadata
import io
import tarfile
import textwrap
import time
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

PYPROJECT = textwrap.dedent(
    """\
    [build-system]
    requires = ["setuptools"]
    build-backend = "setuptools.build_meta"
    """
)
BUILD_REQUIREMENTS = ("setuptools", "wheel", "packaging")


def _norm(name: str) -> str:
    return canonicalize_name(name).replace("-", "_")


def make_sdist(
    dest: Path, name: str, version: str, setup_py: str, files: Mapping[str, str] | None = None
) -> Path:
    """Write ``<name>-<version>.tar.gz`` into *dest* holding *setup_py* and *files*."""
    dest.mkdir(parents=True, exist_ok=True)
    base = f"{_norm(name)}-{version}"
    members = {
        "pyproject.toml": PYPROJECT,
        "setup.py": textwrap.dedent(setup_py),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        **{k: textwrap.dedent(v) for k, v in (files or {}).items()},
    }
    path = dest / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, text in sorted(members.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _setup(name: str, version: str, body: str = "", **kwargs: str) -> str:
    args = "".join(f"    {k}={v},\n" for k, v in kwargs.items())
    return (
        "from setuptools import setup, Extension\n"
        + textwrap.dedent(body)
        + f"setup(\n    name={name!r},\n    version={version!r},\n{args})\n"
    )


def pure_sdist(dest: Path, name: str = "piwtest-pure", version: str = "1.0") -> Path:
    """A pure-Python package with a dependency (with a marker) and Requires-Python."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(
            name,
            version,
            packages=f"[{mod!r}]",
            python_requires="'>=3.8'",
            install_requires=repr(
                ['packaging>=20; python_version >= "3.8"', 'colorama; os_name == "nt"']
            ),
        ),
        {f"{mod}/__init__.py": "VALUE = 42\n"},
    )


C_MODULE = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
{includes}
static PyObject *answer(PyObject *self, PyObject *args) {{ {body} }}
static PyMethodDef methods[] = {{{{"answer", answer, METH_NOARGS, NULL}}, {{NULL, NULL, 0, NULL}}}};
static struct PyModuleDef mod = {{PyModuleDef_HEAD_INIT, "{mod}", NULL, -1, methods}};
PyMODINIT_FUNC PyInit_{mod}(void) {{ return PyModule_Create(&mod); }}
"""


def _c_source(mod: str, body: str = "return PyLong_FromLong(42);", includes: str = "") -> str:
    return C_MODULE.format(mod=mod, body=body, includes=includes)


def c_ext_sdist(dest: Path, name: str = "piwtest-cext", version: str = "1.0") -> Path:
    """A C extension module that links nothing but libc."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(name, version, ext_modules=f"[Extension({mod!r}, [{mod + '.c'!r}])]"),
        {f"{mod}.c": _c_source(mod)},
    )


def compile_error_sdist(dest: Path, name: str = "piwtest-broken-c", version: str = "1.0") -> Path:
    """A C extension with a syntax error."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(name, version, ext_modules=f"[Extension({mod!r}, [{mod + '.c'!r}])]"),
        {f"{mod}.c": _c_source(mod, body="return this is not C;")},
    )


def missing_header_sdist(dest: Path, name: str = "piwtest-no-header", version: str = "1.0") -> Path:
    """A C extension that includes a header no package on this machine has."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(name, version, ext_modules=f"[Extension({mod!r}, [{mod + '.c'!r}])]"),
        {f"{mod}.c": _c_source(mod, includes="#include <piwtest_no_such_header.h>")},
    )


def abi3_sdist(dest: Path, name: str = "piwtest-abi3", version: str = "1.0") -> Path:
    """A limited-API extension that builds a ``cp38-abi3`` wheel."""
    mod = _norm(name)
    ext = (
        f"[Extension({mod!r}, [{mod + '.c'!r}], py_limited_api=True,"
        " define_macros=[('Py_LIMITED_API', '0x03080000')])]"
    )
    return make_sdist(
        dest,
        name,
        version,
        _setup(
            name, version, ext_modules=ext, options="{'bdist_wheel': {'py_limited_api': 'cp38'}}"
        ),
        {f"{mod}.c": _c_source(mod)},
    )


def zlib_sdist(dest: Path, name: str = "piwtest-zlib", version: str = "1.0") -> Path:
    """An extension linking the system zlib (DT_NEEDED libz.so.1, Debian package zlib1g)."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(
            name, version, ext_modules=f"[Extension({mod!r}, [{mod + '.c'!r}], libraries=['z'])]"
        ),
        {
            f"{mod}.c": _c_source(
                mod,
                includes="#include <zlib.h>",
                body="return PyUnicode_FromString(zlibVersion());",
            )
        },
    )


def missing_library_sdist(
    dest: Path, name: str = "piwtest-missing-lib", version: str = "1.0"
) -> Path:
    """An extension linking a library built during the build and not shipped in the wheel.

    The wheel installs, and importing it fails with
    ``libpiwtestmissing.so.1: cannot open shared object file``.
    """
    mod = _norm(name)
    body = """\
    import os, subprocess
    os.makedirs("piwlib", exist_ok=True)
    subprocess.check_call(["gcc", "-shared", "-fPIC", "-Wl,-soname,libpiwtestmissing.so.1",
                           "-o", "piwlib/libpiwtestmissing.so", "piwtestmissing.c"])
    """
    ext = (
        f"[Extension({mod!r}, [{mod + '.c'!r}], libraries=['piwtestmissing'],"
        " library_dirs=['piwlib'])]"
    )
    return make_sdist(
        dest,
        name,
        version,
        _setup(name, version, body, ext_modules=ext),
        {
            "piwtestmissing.c": "int piwtest_missing(void) { return 7; }\n",
            f"{mod}.c": _c_source(
                mod,
                includes="int piwtest_missing(void);",
                body="return PyLong_FromLong(piwtest_missing());",
            ),
        },
    )


def broken_import_sdist(dest: Path, name: str = "piwtest-bad-import", version: str = "1.0") -> Path:
    """A pure package that builds and installs, and whose import fails."""
    mod = _norm(name)
    return make_sdist(
        dest,
        name,
        version,
        _setup(name, version, py_modules=f"[{mod!r}]"),
        {f"{mod}.py": "import piwtest_no_such_module_anywhere\n"},
    )


def sleeper_sdist(
    dest: Path, token: str, name: str = "piwtest-sleeper", version: str = "1.0"
) -> Path:
    """A package whose setup.py starts children (one detached) and sleeps for ten minutes.

    Each child carries *token* on its command line so a test can look for
    survivors in ``/proc``.
    """
    body = f"""\
    import subprocess, sys, time
    sleep = "import time; time.sleep(600)"
    subprocess.Popen([sys.executable, "-c", sleep, {token + "-child"!r}])
    subprocess.Popen([sys.executable, "-c", sleep, {token + "-detached"!r}],
                     start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    print("piwtest sleeper started", flush=True)
    time.sleep(600)
    """
    return make_sdist(dest, name, version, _setup(name, version, body, py_modules="[]"))


def noisy_sdist(
    dest: Path, lines: int, marker: str, name: str = "piwtest-noisy", version: str = "1.0"
) -> Path:
    """A pure package whose setup.py prints *lines* numbered lines, then *marker*."""
    body = f"""\
    import sys
    for i in range({lines}):
        sys.stdout.write("piwtest noise line %08d ................................\\n" % i)
    print({marker!r}, flush=True)
    """
    return make_sdist(dest, name, version, _setup(name, version, body, py_modules="[]"))


def memory_hog_sdist(
    dest: Path, nbytes: int, name: str = "piwtest-hog", version: str = "1.0"
) -> Path:
    """A package whose setup.py allocates *nbytes* at once."""
    body = f"""\
    hog = bytearray({nbytes})
    """
    return make_sdist(dest, name, version, _setup(name, version, body, py_modules="[]"))


def probe_sdist(dest: Path, token: str, name: str = "piwtest-probe", version: str = "1.0") -> Path:
    """A package whose setup.py reports what it can write, and leaves a file in /tmp."""
    body = f"""\
    import os
    def can_write(path):
        try:
            with open(path, "w") as fh:
                fh.write("x")
            os.unlink(path)
            return "yes"
        except OSError as exc:
            return "no (%s)" % exc.strerror
    print("PROBE usr-writable:", can_write("/usr/piwtest-probe"), flush=True)
    print("PROBE etc-writable:", can_write("/etc/piwtest-probe"), flush=True)
    with open("/tmp/{token}", "w") as fh:
        fh.write("left behind")
    print("PROBE home:", os.environ.get("HOME"), flush=True)
    print("PROBE build-flag:", os.environ.get("PIWHEELS_BUILD"), flush=True)
    """
    return make_sdist(dest, name, version, _setup(name, version, body, py_modules="[]"))


# ------------------------------------------------------------------ offline index


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def repack_installed(dist_name: str, dest: Path) -> Path:
    """Rebuild a wheel of the installed distribution *dist_name* into *dest*."""
    dist = importlib.metadata.distribution(dist_name)
    dist_info = None
    members: list[tuple[str, bytes]] = []
    for file in dist.files or ():
        rel = str(file)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue  # scripts outside site-packages are regenerated on install
        parts = rel.split("/")
        if parts[0].endswith(".dist-info"):
            dist_info = parts[0]
            if parts[-1] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            members.append((rel, path.read_bytes()))
    if dist_info is None:
        raise RuntimeError(f"{dist_name}: installed without a .dist-info")
    wheel_text = dist.read_text("WHEEL") or ""
    tags = [ln.split(":", 1)[1].strip() for ln in wheel_text.splitlines() if ln.startswith("Tag:")]
    tag = tags[0] if len(tags) == 1 else "py3-none-any"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{_norm(dist.metadata['Name'])}-{dist.version}-{tag}.whl"
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in members:
            zf.writestr(rel, data)
            writer.writerow([rel, _record_hash(data), len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        zf.writestr(f"{dist_info}/RECORD", rows.getvalue())
    return out


def build_requirement_wheels(dest: Path, names: Iterable[str] = BUILD_REQUIREMENTS) -> list[Path]:
    """Wheels of the build requirements installed here (those that are installed)."""
    made = []
    for name in names:
        try:
            made.append(repack_installed(name, dest))
        except importlib.metadata.PackageNotFoundError:
            continue
    return made


def _project_of(filename: str) -> str:
    if filename.endswith(".whl"):
        return str(parse_wheel_filename(filename)[0])
    stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
    return canonicalize_name(stem.rpartition("-")[0])


def write_simple_index(root: Path) -> Path:
    """(Re)write ``root/simple/`` (PEP 503) for the distributions in ``root/files/``."""
    files_dir = root / "files"
    projects: dict[str, list[Path]] = {}
    for path in sorted(files_dir.iterdir()):
        projects.setdefault(_project_of(path.name), []).append(path)
    simple = root / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    for project, paths in projects.items():
        links = "".join(
            f'<a href="../../files/{html.escape(p.name)}#sha256='
            f'{hashlib.sha256(p.read_bytes()).hexdigest()}">{html.escape(p.name)}</a><br>\n'
            for p in paths
        )
        page = simple / project
        page.mkdir(exist_ok=True)
        tmp = page / "index.html.tmp"
        tmp.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
        tmp.replace(page / "index.html")
    root_links = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(projects))
    tmp = simple / "index.html.tmp"
    tmp.write_text(f"<!DOCTYPE html><html><body>\n{root_links}</body></html>\n")
    tmp.replace(simple / "index.html")
    return simple
