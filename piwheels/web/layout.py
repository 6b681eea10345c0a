"""Where each file of the site lives: one place for paths and URLs, shared by renderer and writer.

Paths are relative to the output folder and use ``/``; URLs are site-absolute (start with ``/``)
so pages work behind any host name.
"""

from __future__ import annotations

from piwheels.web.model import check_canonical, check_filename


def simple_dir(name: str) -> str:
    """``simple/<name>``: the project's index directory (also holds its wheels)."""
    return f"simple/{check_canonical(name)}"


def project_dir(name: str) -> str:
    """``project/<name>``: the human project page's directory."""
    return f"project/{check_canonical(name)}"


def file_path(name: str, filename: str) -> str:
    """Where a wheel is stored: next to the project's simple page."""
    return f"{simple_dir(name)}/{check_filename(filename)}"


def metadata_path(name: str, filename: str) -> str:
    """Where a wheel's core metadata (PEP 658) is stored."""
    return file_path(name, filename) + ".metadata"


def log_path(build_id: int) -> str:
    """``logs/NNNN/NNNN/NNNN.txt.gz``: the id zero-padded to 12 digits, split in three.

    Spreading logs over two directory levels keeps each directory at most 10,000 entries.
    Ids past 10^12 just get a longer first group.
    """
    if not isinstance(build_id, int) or build_id < 0:
        raise ValueError(f"build id must be a non-negative integer: {build_id!r:.40}")
    digits = f"{build_id:012d}"
    return f"logs/{digits[:-8]}/{digits[-8:-4]}/{digits[-4:]}.txt.gz"


def log_url(build_id: int) -> str:
    """The URL of a build log; nginx serves the ``.gz`` file with ``Content-Encoding: gzip``."""
    return "/" + log_path(build_id)[: -len(".gz")]


def project_url(name: str) -> str:
    """The URL of the human project page."""
    return f"/{project_dir(name)}/"


def project_json_url(name: str) -> str:
    """The URL of the project JSON API."""
    return f"/{project_dir(name)}/json/"


def simple_url(name: str) -> str:
    """The URL of the project's simple index page."""
    return f"/{simple_dir(name)}/"
