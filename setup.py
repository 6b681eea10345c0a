"""Packaging for piwheels: the library, its executables and its migrations."""

import re
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "piwheels" / "__init__.py").read_text(), re.M
).group(1)

COMMON = [
    "pyzmq>=25",
    "cbor2>=6,<7",
    "voluptuous>=0.13",
    "packaging>=24",
]
MASTER = [
    "psycopg2-binary>=2.9",
    "sqlalchemy>=2.0,<2.2",
    "alembic>=1.12",
    "chameleon>=4",
]
BUILDER = ["pyelftools>=0.30", "pip>=23"]
MONITOR = ["textual>=8,<9"]
REPORT = ["matplotlib>=3.7"]
TEST = [
    "pytest>=8",
    "pytest-xdist>=3",
    "pytest-asyncio>=0.23",
    "html5lib>=1.1",
    "wheel>=0.40",
    "uv>=0.4",
    "ruff>=0.6",
    "mypy>=1.10",
    "sphinx>=7",
]

setup(
    name="piwheels",
    version=VERSION,
    description="A build farm that turns source releases into wheels and serves them as an index",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    # Namespace search so the data folders (web/templates, web/static) count as packages:
    # setuptools warns about, and will one day drop, data in folders it does not list.
    packages=find_namespace_packages(include=["piwheels", "piwheels.*"])
    + ["piwheels.sql", "piwheels.sql.versions"],
    package_dir={"piwheels.sql": "sql"},
    # The alembic migrations live in sql/ at the top of the tree and are
    # installed as the piwheels.sql package so the code can find them.
    include_package_data=True,
    package_data={
        "piwheels": ["py.typed"],
        "piwheels.web.templates": ["*.pt"],
        "piwheels.web.static": ["*"],
        "piwheels.sql": ["script.py.mako"],
    },
    install_requires=COMMON + MASTER + BUILDER + MONITOR + REPORT,
    extras_require={
        "test": TEST,
        "embedded": ['pgserver>=0.1; platform_machine == "x86_64" and python_version < "3.13"'],
    },
    entry_points={
        "console_scripts": [
            "piw-master = piwheels.master.main:main",
            "piw-builder = piwheels.builder.main:main",
            "piw-initdb = piwheels.db.initdb:main",
            "piw-add = piwheels.admin.add:main",
            "piw-remove = piwheels.admin.remove:main",
            "piw-rebuild = piwheels.admin.rebuild:main",
            "piw-import = piwheels.admin.importer:main",
            "piw-audit = piwheels.admin.audit:main",
            "piw-logger = piwheels.logger.main:main",
            "piw-monitor = piwheels.monitor.main:main",
            "piw-report = piwheels.stats.report_cli:main",
            "piw-keygen = piwheels.keygen:main",
            "piw-demo = piwheels.demo:main",
        ],
    },
)
