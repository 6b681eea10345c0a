#!/usr/bin/python3
"""Lay out what the binary packages install, with the system python3 alone.

Called by debian/rules as ``python3 debian/build-tree.py debian/build``.  Writes:

* ``lib/piwheels``: the package, with the migrations of ``sql/`` as
  ``piwheels.sql`` (as setup.py installs them);
* ``bin/piw-*`` and ``sbin/piwheels-venv``: wrappers that run the code from
  /usr/lib/piwheels: piw-builder and piw-keygen with Debian's python3 and its
  python3-* packages (debian/control), the others with the interpreter of the
  virtual environment piwheels-venv makes;
* ``requirements/<role>.txt``: the third-party libraries the virtual
  environment holds for each package that needs it, read from setup.py;
* ``etc/piwheels.conf``: every setting commented out with its default;
* ``nginx/piwheels``: the nginx site serving /var/www/piwheels.
"""

import ast
import shutil
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
LIB = "/usr/lib/piwheels"
VENV = "/var/lib/piwheels/venv"

#: executable -> module whose main() runs it.
EXECUTABLES = {
    "piw-master": "piwheels.master.main",
    "piw-builder": "piwheels.builder.main",
    "piw-initdb": "piwheels.db.initdb",
    "piw-add": "piwheels.admin.add",
    "piw-remove": "piwheels.admin.remove",
    "piw-rebuild": "piwheels.admin.rebuild",
    "piw-import": "piwheels.admin.importer",
    "piw-audit": "piwheels.admin.audit",
    "piw-logger": "piwheels.logger.main",
    "piw-monitor": "piwheels.monitor.main",
    "piw-report": "piwheels.stats.report_cli",
    "piw-keygen": "piwheels.keygen",
}

#: Executables that run on Debian's own python3 packages (no virtual environment):
#: what they import is in Debian 12 at versions they work with (see debian/control).
SYSTEM_PYTHON = {"piw-builder", "piw-keygen"}

#: requirements file -> setup.py lists it joins (only for the virtual environment:
#: the master needs SQLAlchemy 2 and the monitor textual 8, which Debian 12 lacks).
ROLES = {
    "common": ("COMMON",),
    "master": ("MASTER", "REPORT"),
    "monitor": ("MONITOR",),
}

SYSTEM_WRAPPER = """#!/bin/sh
# {name}: runs piwheels from {lib} with Debian's python3 and its python3-*
# packages (PIWHEELS_PYTHON overrides the interpreter).
PY="${{PIWHEELS_PYTHON:-/usr/bin/python3}}"
export PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{lib}"
# -P: the current folder must not shadow the installed code.
exec "$PY" -P -c 'import sys; from {module} import main; sys.exit(main())' "$@"
"""

WRAPPER = """#!/bin/sh
# {name}: runs piwheels from {lib} with the interpreter of the virtual
# environment made by piwheels-venv (PIWHEELS_PYTHON overrides it).
PY="${{PIWHEELS_PYTHON:-{venv}/bin/python3}}"
if [ ! -x "$PY" ]; then
    echo "{name}: $PY is missing: run 'piwheels-venv' (as root) to create the environment" >&2
    exit 1
fi
export PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{lib}"
# -P: the current folder must not shadow the installed code.
exec "$PY" -P -c 'import sys; from {module} import main; sys.exit(main())' "$@"
"""

VENV_SCRIPT = """#!/bin/sh
# piwheels-venv: create or update the virtual environment that holds the
# third-party libraries of piwheels-master and piwheels-monitor (piw-builder
# and piw-keygen use Debian's python3 packages instead).  pip runs with
# the machine's own configuration (/etc/pip.conf, PIP_* variables), so a
# local mirror or proxy set there is used.
set -eu
VENV="${{PIWHEELS_VENV:-{venv}}}"
REQS=/usr/share/piwheels/requirements
if [ "$(id -u)" -ne 0 ] && [ "$VENV" = "{venv}" ]; then
    echo "piwheels-venv: run as root (or set PIWHEELS_VENV)" >&2
    exit 1
fi
set --
for role in master monitor; do
    if dpkg-query -W -f='${{Status}}' "piwheels-$role" 2>/dev/null | grep -q 'ok installed'; then
        set -- "$@" -r "$REQS/$role.txt"
    fi
done
if [ $# -eq 0 ]; then
    echo "piwheels-venv: neither piwheels-master nor piwheels-monitor is installed;" \
        "piw-builder and piw-keygen run on Debian's python3 packages: nothing to do"
    exit 0
fi
set -- -r "$REQS/common.txt" "$@"
[ -x "$VENV/bin/python3" ] || python3 -m venv "$VENV"
"$VENV/bin/python3" -m pip install --disable-pip-version-check --upgrade pip
"$VENV/bin/python3" -m pip install --disable-pip-version-check --upgrade "$@"
echo "piwheels-venv: $VENV is ready"
"""


def setup_lists() -> dict[str, list[str]]:
    """The module-level requirement lists of setup.py (read, not run)."""
    tree = ast.parse((TOP / "setup.py").read_text())
    lists: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.List):
                lists[target.id] = [ast.literal_eval(e) for e in node.value.elts]
    return lists


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    shutil.rmtree(out, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    lib = out / "lib" / "piwheels"
    shutil.copytree(TOP / "piwheels", lib, ignore=ignore)
    shutil.copytree(TOP / "sql", lib / "sql", ignore=ignore)
    for path in lib.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    for name, module in EXECUTABLES.items():
        template = SYSTEM_WRAPPER if name in SYSTEM_PYTHON else WRAPPER
        text = template.format(name=name, lib=LIB, venv=VENV, module=module)
        write(out / "bin" / name, text, 0o755)
    write(out / "sbin" / "piwheels-venv", VENV_SCRIPT.format(venv=VENV), 0o755)
    lists = setup_lists()
    for role, names in ROLES.items():
        reqs = [req for name in names for req in lists[name]]
        write(out / "requirements" / f"{role}.txt", "\n".join(reqs) + "\n")
    # Only the standard library is needed for these two.
    sys.path.insert(0, str(out / "lib"))
    from piwheels.settings import example_config
    from piwheels.web.nginx import render_site

    write(out / "etc" / "piwheels.conf", example_config())
    write(out / "nginx" / "piwheels", render_site("/var/www/piwheels"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
