"""Names, versions, ABI tags, wheel filenames and wheel archives.

This is the one module that imports :mod:`packaging`; everything else asks it.
It holds:

* package names: :func:`canonicalize` (PEP 503) and :func:`validate_name`;
* versions: :func:`version_key` (a ``bytes`` key that sorts PEP 440 versions
  correctly, legacy strings below them) and :func:`is_prerelease`;
* the ABI model: :func:`parse_abi`, :func:`abi_key` (by Python version, never
  by string) and :func:`abis_served` (which build ABIs a wheel counts for,
  ``abi3`` and ``none`` included);
* wheel filenames: :func:`parse_wheel_filename`;
* wheel archives: :func:`read_wheel` (checks the archive on its own) and
  :func:`verify_wheel` (the master's check that a received file is the wheel
  it asked for).
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from packaging import tags as _tags
from packaging.utils import InvalidWheelFilename, canonicalize_name
from packaging.utils import parse_wheel_filename as _parse_wheel_filename
from packaging.version import InvalidVersion, Version

from piwheels.errors import InvalidName, InvalidWheel

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_VERSION_LENGTH",
    "AbiTag",
    "WheelFilename",
    "WheelInfo",
    "abi_key",
    "abis_served",
    "canonicalize",
    "is_prerelease",
    "normalize_version",
    "parse_abi",
    "parse_wheel_filename",
    "read_wheel",
    "validate_name",
    "validate_version",
    "verify_wheel",
    "version_key",
]

MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 200
MAX_FILENAME_LENGTH = 255

# PEP 508 names: letters, digits, ".", "_", "-"; starting and ending alphanumeric.
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_NAME_EDGES = re.compile(r"^[A-Za-z0-9](.*[A-Za-z0-9])?$", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- names


def canonicalize(name: str) -> str:
    """The PEP 503 form of *name*: lower case, runs of ``-_.`` become one ``-``."""
    return canonicalize_name(name)


def validate_name(name: str) -> str:
    """Check that *name* is a storable package name; return its canonical form.

    Raises :class:`InvalidName` saying what is wrong.
    """
    if not isinstance(name, str):
        raise InvalidName(f"package name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidName("package name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"package name is {len(name)} characters long (limit {MAX_NAME_LENGTH})")
    if not _NAME_CHARS.fullmatch(name):
        bad = sorted({ch for ch in name if not _NAME_CHARS.fullmatch(ch)})
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise InvalidName(
            f"package name {name[:60]!r} contains {shown} (allowed: letters, digits, '.', '_', '-')"
        )
    if not _NAME_EDGES.match(name):
        raise InvalidName(f"package name {name!r} must start and end with a letter or digit")
    return canonicalize(name)


# ------------------------------------------------------------------------ versions


def validate_version(version: str) -> str:
    """Check that *version* is storable (not necessarily PEP 440); return it unchanged."""
    if not isinstance(version, str):
        raise InvalidName(f"version must be a string, not {type(version).__name__}")
    if not version or not version.strip():
        raise InvalidName("version is empty")
    if len(version) > MAX_VERSION_LENGTH:
        raise InvalidName(f"version is {len(version)} characters long (limit {MAX_VERSION_LENGTH})")
    if _CONTROL.search(version) or any(ch.isspace() for ch in version):
        raise InvalidName(f"version {version[:60]!r} contains whitespace or control characters")
    if "/" in version or "\\" in version:
        raise InvalidName(f"version {version[:60]!r} contains a path separator")
    return version


@functools.lru_cache(maxsize=4096)
def _parse_version(version: str) -> Version | None:
    # Cached: the master parses each received wheel's version six times or more (name
    # checks, the archive check, METADATA), and a Version is immutable.
    try:
        return Version(version)
    except InvalidVersion:
        return None


@functools.lru_cache(maxsize=4096)
def normalize_version(version: str) -> str:
    """The PEP 440 normal form of *version*, or *version* unchanged if it is legacy."""
    parsed = _parse_version(version)
    return version if parsed is None else str(parsed)


def is_prerelease(version: str) -> bool:
    """True for PEP 440 pre- and development releases; legacy versions count as final."""
    parsed = _parse_version(version)
    return bool(parsed is not None and parsed.is_prerelease)


_BIG = (1 << 64) - 1


def _num(n: int) -> bytes:
    # Eight bytes big-endian; absurdly large components are clamped (still ordered).
    # This encoding is stored in the database (versions.sort_key): never change it
    # without a migration that recomputes every key.
    return min(n, _BIG).to_bytes(8, "big")


_PRE_ORDER = {"a": 1, "b": 2, "rc": 3}


@functools.lru_cache(maxsize=4096)
def version_key(version: str) -> bytes:
    """A key whose byte order is the PEP 440 order of *version*.

    Valid versions sort exactly as :class:`packaging.version.Version` does;
    legacy strings (``2004d``, ``1.0-foo``) are accepted and sort below every
    valid version, among themselves by string.  Being ``bytes``, the key can
    be stored (PostgreSQL ``bytea`` compares the same way) as well as sorted.
    """
    parsed = _parse_version(version)
    if parsed is None:
        return b"\x00" + version.encode("utf-8", "surrogatepass")
    return b"\x01" + _encode_version(parsed)


def _encode_version(v: Version) -> bytes:
    out = bytearray(_num(v.epoch))
    release = list(v.release)
    while len(release) > 1 and release[-1] == 0:
        release.pop()  # 1.0 == 1.0.0
    for part in release:
        out += b"\x01" + _num(part)
    out += b"\x00"
    # Pre-release: a dev-only release sorts before any pre-release of it.
    if v.pre is None and v.post is None and v.dev is not None:
        out += b"\x00"
    elif v.pre is None:
        out += b"\x03"
    else:
        out += b"\x01" + bytes([_PRE_ORDER[v.pre[0]]]) + _num(v.pre[1])
    out += b"\x00" if v.post is None else b"\x01" + _num(v.post)
    out += b"\x02" if v.dev is None else b"\x01" + _num(v.dev)
    if v.local is None:
        out += b"\x00"
    else:
        out += b"\x01"
        for seg in v.local.split("."):
            if seg.isdigit():
                out += b"\x02" + _num(int(seg))
            else:
                out += b"\x01" + seg.lower().encode("ascii") + b"\x00"
        out += b"\x00"
    return bytes(out)


# ----------------------------------------------------------------------------- ABIs

_CP_ABI = re.compile(r"^cp(\d)(\d+)([a-z]*)$")
_PYPY_ABI = re.compile(r"^pypy(\d)(\d+)_pp\d+$")
_PY_TAG = re.compile(r"^(?:cp|pp|py)(\d)(\d*)$")


@dataclass(frozen=True)
class AbiTag:
    """A parsed ABI tag.

    ``interpreter`` is ``cp``, ``pp`` or ``""`` (for ``none``, ``abi3`` and
    tags this model does not know); ``python`` is the Python version it is for.
    """

    tag: str
    interpreter: str
    python: tuple[int, int] | None
    flags: str = ""

    @property
    def python_tag(self) -> str | None:
        """The matching interpreter tag (``cp311`` for ``cp311``), if any."""
        if self.python is None:
            return None
        return f"{self.interpreter}{self.python[0]}{self.python[1]}"


def parse_abi(tag: str) -> AbiTag:
    """Parse an ABI tag such as ``cp39``, ``cp313t``, ``abi3``, ``none``, ``pypy310_pp73``."""
    tag = tag.strip().lower()
    if not tag or _CONTROL.search(tag) or "-" in tag:
        raise InvalidName(f"invalid ABI tag {tag!r}")
    if m := _CP_ABI.match(tag):
        return AbiTag(tag, "cp", (int(m.group(1)), int(m.group(2))), m.group(3))
    if m := _PYPY_ABI.match(tag):
        return AbiTag(tag, "pp", (int(m.group(1)), int(m.group(2))))
    return AbiTag(tag, "", None)


def abi_key(tag: str) -> tuple[int, int, int, int, str, str]:
    """Sort key for ABI tags: ``none`` < ``abi3`` < ``cp39`` < ``cp311`` < ``cp313`` < ``cp313t``.

    Ordered by Python version, then CPython before PyPy, then flags; unknown
    tags sort last by string.
    """
    abi = parse_abi(tag)
    if abi.python is not None:
        rank = 0 if abi.interpreter == "cp" else 1
        return (1, abi.python[0], abi.python[1], rank, abi.flags, abi.tag)
    if abi.tag == "none":
        return (0, 0, 0, 0, "", abi.tag)
    if abi.tag in ("abi3", "abi3t"):
        return (0, 0, 0, 1, "", abi.tag)
    return (2, 0, 0, 0, "", abi.tag)


BuildAbi = str | tuple[str, str]
T = TypeVar("T", bound=str | tuple[str, str])


def _wheel_tag_set(wheel_tags: str | Iterable[str | _tags.Tag]) -> frozenset[_tags.Tag]:
    if isinstance(wheel_tags, str):
        if wheel_tags.endswith(".whl"):
            return parse_wheel_filename(wheel_tags).tags
        return frozenset(_tags.parse_tag(wheel_tags))
    out: set[_tags.Tag] = set()
    for item in wheel_tags:
        if isinstance(item, _tags.Tag):
            out.add(item)
        else:
            out.update(_tags.parse_tag(item))
    return frozenset(out)


def supported_tags(abi: str, platforms: Iterable[str]) -> frozenset[_tags.Tag]:
    """Every wheel tag an installer on build ABI *abi* accepts on *platforms*.

    The same lists pip builds for its interpreter (from :mod:`packaging.tags`),
    so ``abi3``, ``none`` and ``py3`` tags count exactly as they do for pip.
    """
    return _supported_tags(abi, tuple(sorted(set(platforms) - {"any"})))


@functools.lru_cache(maxsize=256)
def _supported_tags(abi: str, plats: tuple[str, ...]) -> frozenset[_tags.Tag]:
    # Cached: every verified wheel asks for the same few (ABI, platforms), and building
    # the list costs about a millisecond each time.
    parsed = parse_abi(abi)
    if parsed.python is None:
        raise InvalidName(f"{abi!r} is not a build ABI (expected e.g. cp311 or pypy310_pp73)")
    found: set[_tags.Tag] = set()
    interpreter = parsed.python_tag
    if parsed.interpreter == "cp":
        found.update(_tags.cpython_tags(parsed.python, [parsed.tag], list(plats)))
    else:
        found.update(_tags.generic_tags(interpreter, [parsed.tag], list(plats)))
    found.update(_tags.compatible_tags(parsed.python, interpreter, list(plats)))
    return frozenset(found)


def abis_served(wheel_tags: str | Iterable[str | _tags.Tag], build_abis: Iterable[T]) -> set[T]:
    """Which of *build_abis* a wheel with *wheel_tags* serves.

    *wheel_tags* is a wheel filename, a (possibly compressed) tag triple such
    as ``cp38.cp39-abi3-linux_armv7l``, or an iterable of tags.  Each build ABI
    is either an ABI tag (``"cp311"``: any platform counts) or a pair
    ``("cp311", "linux_armv7l")``.  Returns the subset of *build_abis* given.
    ``py3-none-any`` serves every ABI; ``cp38-abi3-P`` serves CPython 3.8 and
    newer on P (not free-threaded builds); ``cp311-cp311-P`` only cp311 on P.
    """
    wtags = _wheel_tag_set(wheel_tags)
    wheel_plats = {t.platform for t in wtags}
    served: set[T] = set()
    for build in build_abis:
        if isinstance(build, tuple):
            abi, plats = build[0], {build[1]}
        else:
            abi, plats = build, wheel_plats
        if wtags & supported_tags(abi, plats):
            served.add(build)
    return served


# ------------------------------------------------------------------------ filenames


@dataclass(frozen=True)
class WheelFilename:
    """The parts of a wheel filename (PEP 427)."""

    filename: str
    name: str  # canonical (PEP 503)
    version: str  # as written in the filename
    build_tag: tuple[int, str] | tuple[()]
    tags: frozenset[_tags.Tag]
    python_tag: str  # as written (may be compressed: py2.py3)
    abi_tag: str
    platform_tag: str


def parse_wheel_filename(filename: str) -> WheelFilename:
    """Parse and check a wheel filename; raise :class:`InvalidWheel` naming the problem.

    Refuses path parts, control characters, names over 255 characters and
    anything :mod:`packaging` cannot parse.
    """
    if not isinstance(filename, str):
        raise InvalidWheel(f"wheel filename must be a string, not {type(filename).__name__}")
    return _parse_checked(filename)


@functools.lru_cache(maxsize=1024)
def _parse_checked(filename: str) -> WheelFilename:
    # The master parses each received name several times (EXPECT, ABI checks, the
    # archive check): the answer is immutable, so it is remembered.  Refusals are not.
    shown = repr(filename[:80])
    if not filename:
        raise InvalidWheel("wheel filename is empty")
    if _CONTROL.search(filename):
        raise InvalidWheel(f"wheel filename {shown} contains a NUL or control character")
    if "/" in filename or "\\" in filename or ".." in filename:
        raise InvalidWheel(f"wheel filename {shown} contains path parts")
    if len(filename) > MAX_FILENAME_LENGTH:
        raise InvalidWheel(
            f"wheel filename is {len(filename)} characters long (limit {MAX_FILENAME_LENGTH})"
        )
    if not filename.endswith(".whl"):
        raise InvalidWheel(f"wheel filename {shown} does not end in .whl")
    if not filename.isascii() or not filename.isprintable() or " " in filename:
        raise InvalidWheel(f"wheel filename {shown} contains characters outside printable ASCII")
    try:
        name, _version, build, tagset = _parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion, ValueError) as exc:
        raise InvalidWheel(f"invalid wheel filename {shown}: {exc}")
    parts = filename[:-4].split("-")
    return WheelFilename(
        filename=filename,
        name=str(name),
        version=parts[1],
        build_tag=build,
        tags=tagset,
        python_tag=parts[-3],
        abi_tag=parts[-2],
        platform_tag=parts[-1],
    )


# -------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class WheelInfo:
    """What a checked wheel holds (see :func:`read_wheel`)."""

    filename: str
    name: str  # canonical
    version: str  # as in the filename
    build_tag: tuple[int, str] | tuple[()]
    tags: frozenset[str]  # expanded, e.g. {"py2-none-any", "py3-none-any"}
    python_tag: str
    abi_tag: str
    platform_tag: str
    dist_info: str  # e.g. "foo-1.0.dist-info"
    metadata_name: str  # Name: as written in METADATA
    requires_python: str | None
    requires_dist: tuple[str, ...]  # raw strings, markers kept
    metadata: bytes  # METADATA exactly as stored (PEP 658)
    metadata_sha256: str
    modules: tuple[str, ...]  # top-level importable names
    files: tuple[str, ...]  # every member, in archive order
    size: int
    sha256: str


_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_LOCAL_SIG = b"PK\x03\x04"
#: Bytes read from a member at a time (large reads: fewer calls per MB hashed).
_CHUNK = 1 << 20
#: Archives up to this size are read into memory once and checked from there.
IN_MEMORY_LIMIT = 32 << 20
#: General purpose flags of entries zipfile reads specially: encrypted (0x1), compressed
#: patch data (0x20), strong encryption (0x40).
_NOT_PLAIN = 0x1 | 0x20 | 0x40
_HASHES = {"sha256", "sha384", "sha512"}
# Extension suffixes that make a file importable as a top-level module.
_MODULE_FILE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z0-9_-]+)*\.(py|so|pyd|pyc)$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _bad(filename: str, why: str) -> InvalidWheel:
    return InvalidWheel(f"{filename}: {why}")


def _check_zip_layout(
    fh: BinaryIO, size: int, filename: str, zf: zipfile.ZipFile
) -> dict[str, int]:
    """Refuse archives that different readers could read differently (*fh*: the archive).

    Returns where each entry's data starts (after its local header), for the entries whose
    local header sets no encryption or patch flag (the others are read by zipfile only).
    """
    tail_len = min(size, 65535 + 22)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or len(tail) - pos < 22:
        raise _bad(filename, "no end of central directory record")
    eocd_at = size - tail_len + pos
    (_, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment_len) = struct.unpack(
        "<4sHHHHIIH", tail[pos : pos + 22]
    )
    if eocd_at + 22 + comment_len != size:
        raise _bad(filename, "data after the end of the zip archive")
    if disk != 0 or cd_disk != 0 or n_here != n_total:
        raise _bad(filename, "multi-disk zip archives are not accepted")
    cd_end = eocd_at
    if eocd_at >= 20:
        fh.seek(eocd_at - 20)
        locator = fh.read(20)
        if locator[:4] == _ZIP64_LOCATOR_SIG:
            (z64_at,) = struct.unpack("<Q", locator[8:16])
            fh.seek(z64_at)
            rec = fh.read(56)
            if rec[:4] != _ZIP64_EOCD_SIG:
                raise _bad(filename, "broken zip64 end of central directory")
            cd_size, cd_offset = struct.unpack("<QQ", rec[40:56])
            cd_end = z64_at
    if cd_offset + cd_size != cd_end:
        raise _bad(
            filename,
            "the central directory is not where its end record says "
            "(data added before or inside the archive)",
        )
    # Local headers must start at 0, follow each other without overlap, and
    # name the same file as the central directory.
    infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    expected = 0
    starts: dict[str, int] = {}
    for info in infos:
        if info.header_offset < expected:
            raise _bad(filename, f"entry {info.filename!r} overlaps the previous one")
        if info.header_offset != expected and not (
            expected and info.header_offset - expected in (12, 16, 20, 24)
        ):
            # Gaps other than a data descriptor hide data from some readers.
            raise _bad(filename, f"unexplained data before entry {info.filename!r}")
        fh.seek(info.header_offset)
        header = fh.read(30)
        if len(header) < 30 or header[:4] != _LOCAL_SIG:
            raise _bad(filename, f"entry {info.filename!r} has no local header")
        (local_flags,) = struct.unpack("<H", header[6:8])
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        raw_name = fh.read(name_len)
        central = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if raw_name != central:
            raise _bad(filename, f"local and central names differ for {info.filename!r}")
        data_at = info.header_offset + 30 + name_len + extra_len
        if not local_flags & _NOT_PLAIN:
            starts[info.filename] = data_at
        expected = data_at + info.compress_size
    if infos and expected > cd_offset:
        raise _bad(filename, "the last entry overlaps the central directory")
    if infos and expected != cd_offset and cd_offset - expected not in (12, 16, 20, 24):
        raise _bad(filename, "unexplained data before the central directory")
    return starts


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, data: bytes | None, start: int | None
) -> bytes | memoryview:
    """The contents of member *info*, checked against its CRC and size as zipfile checks them.

    From an archive held in memory (*data*, the member's bytes at *start*) the plain
    cases are taken straight from the bytes: stored, or a deflate stream that ends
    exactly at the recorded size, not encrypted, with the recorded CRC.  Anything else
    (and every member of an archive read from disk) is read through zipfile, which
    reports what is wrong as it always did.  Raises zipfile's and zlib's errors.
    """
    direct = _plain_member(info, data, start)
    if direct is not None:
        return direct
    with zf.open(info) as member:
        return member.read()


def _plain_member(
    info: zipfile.ZipInfo, data: bytes | None, start: int | None
) -> bytes | memoryview | None:
    """A member's bytes taken straight from *data*, or None where zipfile must read it."""
    if data is None or start is None or info.flag_bits & _NOT_PLAIN:
        return None
    if info.file_size > IN_MEMORY_LIMIT or start + info.compress_size > len(data):
        return None  # (a size that large: zipfile reads it in bounded pieces)
    raw = memoryview(data)[start : start + info.compress_size]
    out: bytes | memoryview
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size:
        out = raw
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        stream = zlib.decompressobj(-15)
        try:
            out = stream.decompress(raw, info.file_size + 1)
        except zlib.error:
            return None
        if len(out) != info.file_size or not stream.eof or stream.unused_data:
            return None
    else:
        return None
    return out if zlib.crc32(out) == info.CRC else None


def _check_member_name(filename: str, name: str) -> None:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _bad(filename, f"entry {name!r} has an absolute path")
    if "\\" in name:
        raise _bad(filename, f"entry {name!r} contains a backslash")
    if _CONTROL.search(name):
        raise _bad(filename, f"entry {name!r} contains a control character")
    if any(part in ("..", ".") for part in name.rstrip("/").split("/")):
        raise _bad(filename, f"entry {name!r} has a '..' or '.' path part")


def _hash_b64(algorithm: str, digest: bytes) -> str:
    return f"{algorithm}=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _top_level_modules(files: Iterable[str], dist_info: str) -> tuple[str, ...]:
    """Top-level importable names, from the file list (the truth, unlike top_level.txt)."""
    data_dir = dist_info[: -len(".dist-info")] + ".data"
    found: set[str] = set()
    for name in files:
        if name.endswith("/"):
            continue
        parts = name.split("/")
        if parts[0] in (dist_info, data_dir):
            # Files under .data/purelib and .data/platlib are installed at the top.
            if parts[0] == data_dir and len(parts) > 2 and parts[1] in ("purelib", "platlib"):
                parts = parts[2:]
            else:
                continue
        if len(parts) == 1:
            m = _MODULE_FILE.match(parts[0])
            if m and not parts[0].endswith(".pyc"):
                found.add(m.group(1))
        elif (
            _IDENT.match(parts[0])
            and parts[0] != "__pycache__"
            and (parts[-1].endswith((".py", ".so", ".pyd")))
        ):
            found.add(parts[0])
    return tuple(sorted(found))


def read_wheel(path: str | Path, *, digest: tuple[int, str] | None = None) -> WheelInfo:
    """Check the wheel at *path* on its own and return what it holds.

    Refuses (:class:`InvalidWheel`, one line) a bad filename, an archive that
    is not a zip or is ambiguous (duplicate or unsafe names, data outside the
    entries, mismatched local/central names), a missing or repeated
    ``.dist-info``, a missing ``WHEEL``/``METADATA``/``RECORD``, ``RECORD``
    hashes or sizes that differ from the contents, files missing from
    ``RECORD`` and metadata that names another project or version.

    *digest* is the file's (size, SHA-256 hex) when the caller computed it
    already (the master, while receiving the bytes): the file is then not
    hashed whole again, only its size is checked against it.  Without it the
    file is hashed here.  Either way each member is read once, and its
    ``RECORD`` hash checked.
    """
    path = Path(path)
    fn = parse_wheel_filename(path.name)
    filename = fn.filename
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if digest is not None and digest[0] != size:
                raise _bad(filename, f"is {size} bytes on disk, not the {digest[0]} hashed")
            if size > IN_MEMORY_LIMIT:
                if digest is None:
                    whole = hashlib.sha256()
                    while chunk := fh.read(1 << 20):
                        whole.update(chunk)
                    digest = (size, whole.hexdigest())
                return _read_archive(fn, fh, size, digest[1], None)
            # Most wheels are small: read once, then hash and check the bytes in memory
            # (one open and one read instead of a pass per check).
            data = fh.read()
    except OSError as exc:
        raise _bad(filename, f"cannot read: {exc.strerror}")
    if len(data) != size:
        raise _bad(filename, f"changed while read ({len(data)} bytes, {size} expected)")
    sha256 = hashlib.sha256(data).hexdigest() if digest is None else digest[1]
    return _read_archive(fn, io.BytesIO(data), len(data), sha256, data)


def _read_archive(
    fn: WheelFilename, fh: BinaryIO, size: int, sha256: str, data: bytes | None
) -> WheelInfo:
    """The checks of :func:`read_wheel` on the open archive *fh* of *size* bytes.

    *data* is the whole archive when it is held in memory (members are then taken
    straight from it where zipfile would read them the same way).
    """
    filename = fn.filename
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise _bad(filename, f"not a valid zip archive ({exc})")
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        seen: set[str] = set()
        for name in names:
            _check_member_name(filename, name)
            if name in seen:
                raise _bad(filename, f"duplicate entry {name!r}")
            seen.add(name)
        starts = _check_zip_layout(fh, size, filename, zf)

        dist_infos = sorted(
            {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        )
        if not dist_infos:
            raise _bad(filename, "no .dist-info directory")
        if len(dist_infos) > 1:
            raise _bad(filename, f"several .dist-info directories: {', '.join(dist_infos)}")
        dist_info = dist_infos[0]
        di_name, _, di_version = dist_info[: -len(".dist-info")].rpartition("-")
        if canonicalize(di_name) != fn.name or normalize_version(di_version) != normalize_version(
            fn.version
        ):
            raise _bad(filename, f"{dist_info} does not match the filename")
        for required in ("WHEEL", "METADATA", "RECORD"):
            if f"{dist_info}/{required}" not in seen:
                raise _bad(filename, f"{dist_info}/{required} is missing")

        # RECORD: every file listed once with a good hash and size, and nothing unlisted.
        record_name = f"{dist_info}/RECORD"
        try:
            record_info = zf.getinfo(record_name)
            record_text = str(_read_member(zf, record_info, data, starts.get(record_name)), "utf-8")
            rows = list(csv.reader(io.StringIO(record_text)))
        except (UnicodeDecodeError, csv.Error, zipfile.BadZipFile) as exc:
            raise _bad(filename, f"RECORD is unreadable ({exc})")
        recorded: dict[str, tuple[str, str]] = {}
        for row in rows:
            if not row:
                continue
            if len(row) != 3:
                raise _bad(filename, f"RECORD row {row!r} does not have 3 fields")
            rpath, rhash, rsize = row
            if rpath in recorded:
                raise _bad(filename, f"RECORD lists {rpath!r} twice")
            recorded[rpath] = (rhash, rsize)
        unsigned = {record_name, f"{dist_info}/RECORD.jws", f"{dist_info}/RECORD.p7s"}
        for rpath, (rhash, _size) in recorded.items():
            if rpath not in seen:
                raise _bad(filename, f"RECORD lists {rpath!r}, which is not in the archive")
            if rpath in unsigned:
                continue
            algorithm, _, _ = rhash.partition("=")
            if algorithm not in _HASHES:
                raise _bad(filename, f"RECORD has no acceptable hash for {rpath!r}")
        contents: dict[str, bytes] = {}
        keep = {f"{dist_info}/{n}" for n in ("WHEEL", "METADATA")}
        for info in infos:
            if info.is_dir():
                continue
            name = info.filename
            if name not in recorded:
                if name in unsigned:
                    continue
                raise _bad(filename, f"{name!r} is not listed in RECORD")
            if name in unsigned:
                continue
            rhash, rsize = recorded[name]
            algorithm = rhash.partition("=")[0]
            hasher = hashlib.new(algorithm)
            length = 0
            buf = bytearray() if name in keep else None
            try:
                whole = _plain_member(info, data, starts.get(name))
                if whole is not None:
                    hasher.update(whole)
                    length = len(whole)
                    if buf is not None:
                        buf += whole
                else:
                    with zf.open(info) as member:
                        while chunk := member.read(_CHUNK):
                            hasher.update(chunk)
                            length += len(chunk)
                            if buf is not None:
                                buf += chunk
            except (zipfile.BadZipFile, zlib.error, OSError, NotImplementedError, EOFError) as exc:
                raise _bad(filename, f"cannot read {name!r} ({exc})")
            if _hash_b64(algorithm, hasher.digest()) != rhash:
                raise _bad(filename, f"RECORD hash of {name!r} does not match its contents")
            if rsize and rsize != str(length):
                raise _bad(filename, f"RECORD size of {name!r} is {rsize}, contents are {length}")
            if buf is not None:
                contents[name] = bytes(buf)

    wheel_meta = _parse_headers(filename, "WHEEL", contents[f"{dist_info}/WHEEL"])
    wheel_version = wheel_meta.get("Wheel-Version", "")
    if not wheel_version or wheel_version.split(".")[0] != "1":
        raise _bad(filename, f"unsupported Wheel-Version {wheel_version!r}")
    declared: set[str] = set()
    for tag in wheel_meta.get_all("Tag") or ():
        declared.update(str(t) for t in _tags.parse_tag(tag.strip()))
    tagset = frozenset(str(t) for t in fn.tags)
    if declared and declared != tagset:
        raise _bad(filename, "the tags in WHEEL differ from the filename's")

    metadata = contents[f"{dist_info}/METADATA"]
    meta = _parse_headers(filename, "METADATA", metadata)
    meta_name = (meta.get("Name") or "").strip()
    meta_version = (meta.get("Version") or "").strip()
    if not meta_name or canonicalize(meta_name) != fn.name:
        raise _bad(filename, f"METADATA names project {meta_name!r}, not {fn.name!r}")
    if version_key(meta_version) != version_key(fn.version):
        raise _bad(filename, f"METADATA has version {meta_version!r}, not {fn.version!r}")
    requires_python = meta.get("Requires-Python")
    requires_dist = tuple(" ".join(r.split()) for r in (meta.get_all("Requires-Dist") or ()))
    return WheelInfo(
        filename=filename,
        name=fn.name,
        version=fn.version,
        build_tag=fn.build_tag,
        tags=tagset,
        python_tag=fn.python_tag,
        abi_tag=fn.abi_tag,
        platform_tag=fn.platform_tag,
        dist_info=dist_info,
        metadata_name=meta_name,
        requires_python=" ".join(requires_python.split()) if requires_python else None,
        requires_dist=requires_dist,
        metadata=metadata,
        metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        modules=_top_level_modules(names, dist_info),
        files=tuple(names),
        size=size,
        sha256=sha256,
    )


#: A line that continues the header block (as the standard email parser decides):
#: an envelope line, a field name and colon, or a continuation (space or tab).
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")


class Headers:
    """Header fields of a METADATA or WHEEL file: the first value of a field, or all of them.

    Names match without regard to case; values are text as written (continuation
    lines kept, no RFC 2047 decoding), as :mod:`email` gives them with its
    ``compat32`` policy.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self.fields:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str] | None:
        name = name.lower()
        found = [value for key, value in self.fields if key.lower() == name]
        return found or None


def parse_headers(text: str) -> Headers:
    """The header block of *text*, exactly as the standard email parser reads it.

    ``email.parser.Parser(policy=compat32).parsestr(text, headersonly=True)``
    gives the same fields (tested on hostile input) at a fraction of the cost:
    lines end at CR, LF or CRLF only; the block ends at the first line that is
    neither a field, a continuation nor an envelope (``From ``) line; an
    envelope line, a field with no name, and a continuation with no field
    before it are skipped; a value is the text after the colon without its
    leading blanks, with its continuation lines, without the last line end.
    """
    fields: list[tuple[str, str]] = []
    lines: list[str] = []
    for line in io.StringIO(text, newline="").readlines():
        if not _HEADER_LINE.match(line):
            break
        lines.append(line)
    name = ""
    value: list[str] = []
    for line in lines:
        if line[0] in " \t":
            if name:
                value.append(line)
            continue
        if name:
            fields.append((name, _field_value(value)))
            name, value = "", []
        if line.startswith("From "):
            continue
        colon = line.find(":")
        if colon > 0:
            name, value = line[:colon], [line]
    if name:
        fields.append((name, _field_value(value)))
    return Headers(fields)


def _field_value(lines: list[str]) -> str:
    value = lines[0].split(":", 1)[1].lstrip(" \t") + "".join(lines[1:])
    return value.rstrip("\r\n")


def _parse_headers(filename: str, what: str, data: bytes) -> Headers:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(filename, f"{what} is not UTF-8")
    return parse_headers(text)


def verify_wheel(
    path: str | Path,
    *,
    package: str,
    version: str,
    abi: BuildAbi | None = None,
    digest: tuple[int, str] | None = None,
) -> WheelInfo:
    """The master's check of a received file: is it the wheel it asked for?

    On top of :func:`read_wheel`, refuses a wheel for another *package* or
    *version*, and (when *abi* is given, as ``"cp311"`` or
    ``("cp311", "linux_armv7l")``) one that does not serve that build ABI.
    *digest* (size, SHA-256 hex), when known, spares hashing the file again
    (see :func:`read_wheel`).
    """
    path = Path(path)
    fn = parse_wheel_filename(path.name)
    if fn.name != canonicalize(package):
        raise _bad(fn.filename, f"is a wheel of {fn.name!r}, not {canonicalize(package)!r}")
    if version_key(fn.version) != version_key(version):
        raise _bad(fn.filename, f"is a wheel of version {fn.version!r}, not {version!r}")
    if abi is not None and not abis_served(fn.tags, [abi]):
        shown = abi if isinstance(abi, str) else "-".join(abi)
        raise _bad(fn.filename, f"does not serve ABI {shown}")
    return read_wheel(path, digest=digest)
