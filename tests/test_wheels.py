"""Names, versions, ABIs, wheel filenames and wheel archive checks (piwheels.wheels)."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import itertools
import random
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
from packaging.tags import Tag, sys_tags
from packaging.version import Version

from piwheels.errors import InvalidName, InvalidWheel
from piwheels.wheels import (
    abi_key,
    abis_served,
    canonicalize,
    is_prerelease,
    normalize_version,
    parse_abi,
    parse_headers,
    parse_wheel_filename,
    read_wheel,
    validate_name,
    validate_version,
    verify_wheel,
    version_key,
)

# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("Foo_Bar", "foo-bar"), ("foo.bar", "foo-bar"), ("FOO--BAR", "foo-bar"), ("a", "a")],
)
def test_canonicalize(name: str, canonical: str) -> None:
    assert canonicalize(name) == canonical
    assert validate_name(name) == canonical


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 201, "201 characters long (limit 200)"),
        ("foo bar", "contains ' '"),
        ("foo/bar", "contains '/'"),
        ("foo\x00", "contains '\\x00'"),
        ("-foo", "must start and end with a letter or digit"),
        ("foo.", "must start and end with a letter or digit"),
        ("naïve", "contains 'ï'"),
    ],
)
def test_validate_name_refuses(name: str, reason: str) -> None:
    with pytest.raises(InvalidName) as err:
        validate_name(name)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_name_limit_is_inclusive() -> None:
    assert validate_name("a" * 200) == "a" * 200


@pytest.mark.parametrize("version", ["", " ", "1.0 beta", "1.0\n", "a/b", "x" * 201])
def test_validate_version_refuses(version: str) -> None:
    with pytest.raises(InvalidName):
        validate_version(version)


def test_validate_version_accepts_legacy() -> None:
    assert validate_version("2004d") == "2004d"


# -------------------------------------------------------------------------- versions

ORDERED = [
    "0.9",
    "1.0.dev0",
    "1.0a1.dev1",
    "1.0a1",
    "1.0b2.post3",
    "1.0rc1",
    "1.0",
    "1.0+abc",
    "1.0+abc.5",
    "1.0+5",
    "1.0.post1.dev0",
    "1.0.post1",
    "1.0.1",
    "2.0.0",
    "10.0",
    "1!0.1",
]


def test_version_key_orders_pep440() -> None:
    shuffled = ORDERED[:]
    random.Random(1).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == ORDERED


def test_version_key_equal_versions_equal_keys() -> None:
    assert version_key("1.0") == version_key("1.0.0") == version_key("1.0.0.0")
    assert version_key("1.0a1") == version_key("1.0alpha1")
    assert version_key("1.0") != version_key("1.0.1")


def test_version_key_legacy_below_valid_and_by_string() -> None:
    versions = ["1.0", "latest", "2004d", "0.0.dev0", "1.0-foo", "1.0.0-SNAPSHOT"]
    assert sorted(versions, key=version_key) == [
        "1.0-foo",
        "1.0.0-SNAPSHOT",
        "2004d",
        "latest",
        "0.0.dev0",
        "1.0",
    ]


def _random_version(rng: random.Random) -> str:
    text = ""
    if rng.random() < 0.1:
        text += f"{rng.randint(0, 2)}!"
    text += ".".join(str(rng.choice([0, 0, 1, 2, 9, 10, 300])) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.3:
        text += rng.choice(["a", "b", "rc"]) + str(rng.randint(0, 3))
    if rng.random() < 0.3:
        text += f".post{rng.randint(0, 3)}"
    if rng.random() < 0.3:
        text += f".dev{rng.randint(0, 3)}"
    if rng.random() < 0.2:
        text += "+" + ".".join(rng.choice(["1", "abc", "2", "z9", "10"]) for _ in range(2))
    return text


def test_version_key_matches_packaging_on_random_versions() -> None:
    rng = random.Random(440)
    versions = [_random_version(rng) for _ in range(3000)]
    by_key = sorted(versions, key=version_key)
    # Equal versions may sort in either order; compare the parsed sequence.
    assert [Version(v) for v in by_key] == sorted(Version(v) for v in versions)
    for a, b in itertools.pairwise(versions):
        assert (version_key(a) == version_key(b)) == (Version(a) == Version(b))


def test_is_prerelease() -> None:
    assert is_prerelease("1.0a1")
    assert is_prerelease("1.0.dev3")
    assert not is_prerelease("1.0")
    assert not is_prerelease("1.0.post1")
    assert not is_prerelease("2004d")  # legacy: unknown, treated as final


def test_normalize_version() -> None:
    assert normalize_version("1.0ALPHA1") == "1.0a1"
    assert normalize_version("2004d") == "2004d"


# ------------------------------------------------------------------------------ ABIs


def test_abi_order_is_numeric() -> None:
    tags = ["cp313", "cp39", "cp311", "cp310", "none", "abi3", "cp313t", "pypy310_pp73", "cp38"]
    assert sorted(tags, key=abi_key) == [
        "none",
        "abi3",
        "cp38",
        "cp39",
        "cp310",
        "pypy310_pp73",
        "cp311",
        "cp313",
        "cp313t",
    ]


def test_parse_abi() -> None:
    assert parse_abi("cp311").python == (3, 11)
    assert parse_abi("cp313t").flags == "t"
    assert parse_abi("pypy310_pp73").python_tag == "pp310"
    assert parse_abi("abi3").python is None
    with pytest.raises(InvalidName):
        parse_abi("cp3-11")


BUILDS = ["cp37", "cp39", "cp311", "cp313", "cp313t"]


@pytest.mark.parametrize(
    ("tags", "served"),
    [
        ("py3-none-any", set(BUILDS)),
        ("py2.py3-none-any", set(BUILDS)),
        ("cp38-abi3-linux_armv7l", {"cp39", "cp311", "cp313"}),
        ("cp311-cp311-linux_armv7l", {"cp311"}),
        ("cp313-cp313t-linux_armv7l", {"cp313t"}),
        ("cp39.cp311-cp39.cp311-linux_armv7l", {"cp39", "cp311"}),
        ("py2-none-any", set()),
        ("cp311-none-any", {"cp311"}),
        ("py310-none-any", {"cp311", "cp313", "cp313t"}),
    ],
)
def test_abis_served(tags: str, served: set[str]) -> None:
    assert abis_served(tags, BUILDS) == served


def test_abis_served_with_platforms() -> None:
    builds = [("cp39", "linux_armv7l"), ("cp311", "linux_armv7l"), ("cp311", "linux_aarch64")]
    assert abis_served("cp38-abi3-linux_armv7l", builds) == {
        ("cp39", "linux_armv7l"),
        ("cp311", "linux_armv7l"),
    }
    assert abis_served("py3-none-any", builds) == set(builds)
    assert abis_served("foo-1.0-cp311-cp311-linux_aarch64.whl", builds) == {
        ("cp311", "linux_aarch64")
    }


def test_abis_served_agrees_with_this_interpreter() -> None:
    import sys

    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    plat = "linux_x86_64"
    supported = set(sys_tags())
    if Tag(here, here, plat) not in supported:
        pytest.skip("this interpreter does not report the linux_x86_64 platform")
    candidates = [
        Tag(py, abi, p)
        for py in ("py3", "py2", "py39", "py312", "cp38", "cp39", here, "cp313", "pp310")
        for abi in ("none", "abi3", here, "cp313")
        for p in ("any", plat)
    ]
    for tag in candidates:
        expected = {(here, plat)} if tag in supported else set()
        assert abis_served([tag], [(here, plat)]) == expected, str(tag)


# -------------------------------------------------------------------------- filenames


def test_parse_wheel_filename() -> None:
    fn = parse_wheel_filename("Foo_Bar-1.0-1-py2.py3-none-any.whl")
    assert fn.name == "foo-bar"
    assert fn.version == "1.0"
    assert fn.build_tag == (1, "")
    assert fn.python_tag == "py2.py3"
    assert fn.abi_tag == "none"
    assert fn.platform_tag == "any"
    assert {str(t) for t in fn.tags} == {"py2-none-any", "py3-none-any"}


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("../foo-1.0-py3-none-any.whl", "path parts"),
        ("dir/foo-1.0-py3-none-any.whl", "path parts"),
        ("dir\\foo-1.0-py3-none-any.whl", "path parts"),
        ("foo-1.0-py3-none-any.whl\x00.txt", "control character"),
        ("foo-1.0-py3-none-any.whl\n", "control character"),
        ("foo-1.0-py3-none-any.zip", "does not end in .whl"),
        ("f" * 240 + "-1.0-py3-none-any.whl", "limit 255"),
        ("foo-1.0.whl", "invalid wheel filename"),
        ("foo-notaversion!-py3-none-any.whl", "invalid wheel filename"),
        ("", "empty"),
    ],
)
def test_parse_wheel_filename_refuses(filename: str, reason: str) -> None:
    with pytest.raises(InvalidWheel) as err:
        parse_wheel_filename(filename)
    assert reason in str(err.value)


# ---------------------------------------------------------------------------- archives


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    name: str = "demo_pkg",
    version: str = "1.0",
    tag: str = "py3-none-any",
    *,
    files: dict[str, bytes] | None = None,
    metadata_name: str | None = None,
    metadata_version: str | None = None,
    wheel_tags: list[str] | None = None,
    record_override: dict[str, tuple[str, str]] | None = None,
    unrecorded: dict[str, bytes] | None = None,
    duplicate: str | None = None,
    omit: tuple[str, ...] = (),
    extra_dist_info: str | None = None,
    filename: str | None = None,
    metadata_text: str | None = None,
) -> Path:
    """A wheel written by hand, with knobs to break it in each way verify_wheel refuses."""
    files = dict(files or {f"{name}/__init__.py": b"VALUE = 1\n", f"{name}/core.py": b"pass\n"})
    di = f"{name}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {metadata_name or name}\n"
        f"Version: {metadata_version or version}\nRequires-Python: >=3.8\n"
        'Requires-Dist: requests>=2; extra == "http"\n'
        'Requires-Dist: colorama; os_name == "nt"\n\nA description.\n'
    ).encode()
    if metadata_text is not None:
        metadata = metadata_text.encode()
    wheel_text = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n" + "".join(
        f"Tag: {t}\n" for t in (wheel_tags or [tag])
    )
    members = dict(files)
    members[f"{di}/METADATA"] = metadata
    members[f"{di}/WHEEL"] = wheel_text.encode()
    if extra_dist_info:
        members[f"{extra_dist_info}/METADATA"] = metadata
    for key in omit:
        members.pop(f"{di}/{key}", None)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    for path, data in members.items():
        h, s = (record_override or {}).get(path, (_hash(data), str(len(data))))
        writer.writerow([path, h, s])
    writer.writerow([f"{di}/RECORD", "", ""])
    if "RECORD" not in omit:
        members[f"{di}/RECORD"] = rows.getvalue().encode()
    members.update(unrecorded or {})
    out = folder / (filename or f"{name}-{version}-{tag}.whl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate on purpose
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, data in members.items():
                zf.writestr(path, data)
            if duplicate:
                zf.writestr(duplicate, members[duplicate])
    return out


def test_verify_good_wheel(tmp_path: Path) -> None:
    path = make_wheel(tmp_path)
    info = verify_wheel(path, package="Demo.Pkg", version="1.0.0", abi="cp311")
    assert info.name == "demo-pkg"
    assert info.version == "1.0"
    assert info.tags == frozenset({"py3-none-any"})
    assert info.requires_python == ">=3.8"
    assert info.requires_dist == ('requests>=2; extra == "http"', 'colorama; os_name == "nt"')
    assert info.metadata.startswith(b"Metadata-Version: 2.1\nName: demo_pkg\n")
    assert info.metadata_sha256 == hashlib.sha256(info.metadata).hexdigest()
    assert info.modules == ("demo_pkg",)
    assert info.size == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.dist_info == "demo_pkg-1.0.dist-info"


def test_modules_from_file_list(tmp_path: Path) -> None:
    path = make_wheel(
        tmp_path,
        files={
            "alpha/__init__.py": b"",
            "beta.py": b"",
            "gamma.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
            "nspkg/sub/mod.py": b"",
            "demo_pkg-1.0.data/purelib/delta.py": b"",
            "demo_pkg-1.0.data/scripts/tool": b"#!python\n",
            "README.txt": b"",
        },
    )
    assert read_wheel(path).modules == ("alpha", "beta", "delta", "gamma", "nspkg")


BAD_WHEELS = {
    "wrong package": (
        dict(name="other_pkg"),
        "is a wheel of 'other-pkg', not 'demo-pkg'",
    ),
    "wrong version": (dict(version="2.0"), "is a wheel of version '2.0', not '1.0'"),
    "wrong abi": (dict(tag="cp39-cp39-linux_x86_64"), "does not serve ABI cp311"),
    "bad RECORD hash": (
        dict(record_override={"demo_pkg/core.py": (_hash(b"other"), "5")}),
        "RECORD hash of 'demo_pkg/core.py' does not match",
    ),
    "bad RECORD size": (
        dict(record_override={"demo_pkg/core.py": (_hash(b"pass\n"), "99")}),
        "RECORD size of 'demo_pkg/core.py' is 99",
    ),
    "weak RECORD hash": (
        dict(record_override={"demo_pkg/core.py": ("md5=abc", "5")}),
        "no acceptable hash",
    ),
    "file not in RECORD": (
        dict(unrecorded={"demo_pkg/evil.py": b"import os\n"}),
        "'demo_pkg/evil.py' is not listed in RECORD",
    ),
    "duplicate entry": (dict(duplicate="demo_pkg/core.py"), "duplicate entry 'demo_pkg/core.py'"),
    "path traversal": (
        dict(unrecorded={"../../evil.py": b"x"}),
        "'../../evil.py' has a '..' or '.' path part",
    ),
    "absolute path": (dict(unrecorded={"/etc/evil": b"x"}), "'/etc/evil' has an absolute path"),
    "missing dist-info": (
        dict(files={"demo_pkg/__init__.py": b""}, omit=("METADATA", "WHEEL", "RECORD")),
        "no .dist-info directory",
    ),
    "two dist-infos": (
        dict(extra_dist_info="other-1.0.dist-info"),
        "several .dist-info directories",
    ),
    "missing METADATA": (dict(omit=("METADATA",)), "METADATA is missing"),
    "missing WHEEL": (dict(omit=("WHEEL",)), "WHEEL is missing"),
    "missing RECORD": (dict(omit=("RECORD",)), "RECORD is missing"),
    "METADATA names another project": (
        dict(metadata_name="other"),
        "METADATA names project 'other'",
    ),
    "METADATA has another version": (
        dict(metadata_version="1.1"),
        "METADATA has version '1.1'",
    ),
    "WHEEL tags differ": (dict(wheel_tags=["cp311-cp311-linux_x86_64"]), "tags in WHEEL differ"),
}


@pytest.mark.parametrize("kind", sorted(BAD_WHEELS))
def test_verify_refuses(tmp_path: Path, kind: str) -> None:
    knobs, reason = BAD_WHEELS[kind]
    path = make_wheel(tmp_path, **knobs)  # type: ignore[arg-type]
    with pytest.raises(InvalidWheel) as err:
        verify_wheel(path, package="demo-pkg", version="1.0", abi="cp311")
    assert reason in str(err.value)
    assert "\n" not in str(err.value)


def _every_bad_wheel_refused(tmp_path: Path, *, with_digest: bool = False) -> None:
    """Each wheel of BAD_WHEELS is refused for its reason (given its true size and hash)."""
    for kind, (knobs, reason) in BAD_WHEELS.items():
        folder = tmp_path / kind.replace(" ", "_")
        folder.mkdir()
        path = make_wheel(folder, **knobs)  # type: ignore[arg-type]
        digest = None
        if with_digest:
            digest = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
        with pytest.raises(InvalidWheel) as err:
            verify_wheel(path, package="demo-pkg", version="1.0", abi="cp311", digest=digest)
        assert reason in str(err.value), kind


def test_large_wheel_checked_streamed_like_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over IN_MEMORY_LIMIT the archive is read from disk: same facts, same refusals."""
    from piwheels import wheels

    good = make_wheel(tmp_path)
    in_memory = read_wheel(good)
    monkeypatch.setattr(wheels, "IN_MEMORY_LIMIT", 0)
    assert read_wheel(good) == in_memory
    with_tail = tmp_path / "tail" / good.name
    with_tail.parent.mkdir()
    with_tail.write_bytes(good.read_bytes() + b"junk")
    with pytest.raises(InvalidWheel, match="data after the end of the zip archive"):
        read_wheel(with_tail)
    _every_bad_wheel_refused(tmp_path)


@pytest.fixture(params=[False, True], ids=["in_memory", "streamed"])
def either_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with the archive checked in memory, then read from disk as a large
    one is (IN_MEMORY_LIMIT 0)."""
    from piwheels import wheels

    if request.param:
        monkeypatch.setattr(wheels, "IN_MEMORY_LIMIT", 0)


@pytest.mark.usefixtures("either_way")
def test_known_digest_is_not_recomputed(tmp_path: Path) -> None:
    """A caller's (size, sha256) is taken as the file's; the members are still checked."""
    good = make_wheel(tmp_path)
    size = good.stat().st_size
    # Not the file's real hash: taken as given, so the file was not hashed again.
    told = "ab" * 32
    info = verify_wheel(good, package="demo-pkg", version="1.0", digest=(size, told))
    assert info.sha256 == told
    assert info.size == size
    # Without a digest the file is hashed here; otherwise the facts are the same.
    alone = read_wheel(good)
    assert alone.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert dataclasses.replace(info, sha256=alone.sha256) == alone
    with pytest.raises(InvalidWheel, match=rf"is {size} bytes on disk, not the {size + 1} hashed"):
        read_wheel(good, digest=(size + 1, told))
    _every_bad_wheel_refused(tmp_path, with_digest=True)


@pytest.mark.usefixtures("either_way")
def test_each_member_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member is read exactly once: straight from memory or through zipfile."""
    from piwheels import wheels

    path = make_wheel(tmp_path, files={"demo_pkg/__init__.py": b"x = 1\n" * 500})
    read: list[str] = []
    real_open = zipfile.ZipFile.open
    real_plain = wheels._plain_member

    def counting_open(self: zipfile.ZipFile, name: object, *args: object, **kw: object) -> object:
        read.append(name if isinstance(name, str) else name.filename)  # type: ignore[attr-defined]
        return real_open(self, name, *args, **kw)  # type: ignore[arg-type]

    def counting_plain(info: zipfile.ZipInfo, *args: object) -> object:
        out = real_plain(info, *args)  # type: ignore[arg-type]
        if out is not None:
            read.append(info.filename)
        return out

    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    monkeypatch.setattr(wheels, "_plain_member", counting_plain)
    read_wheel(path)
    with zipfile.ZipFile(path) as zf:
        members = sorted(i.filename for i in zf.infolist() if not i.is_dir())
    assert sorted(read) == members


def _set_crc(path: Path, member: str, crc: int) -> None:
    """Write *crc* into *member*'s local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    packed = crc.to_bytes(4, "little")
    data[info.header_offset + 14 : info.header_offset + 18] = packed
    at = data.index(b"PK\x01\x02")  # the central directory: walk its entries
    while True:
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28 : at + 34])
        if data[at + 46 : at + 46 + name_len] == member.encode():
            break
        at += 46 + name_len + extra_len + comment_len
    data[at + 16 : at + 20] = packed
    path.write_bytes(bytes(data))


@pytest.mark.usefixtures("either_way")
def test_verify_refuses_bad_crc(tmp_path: Path) -> None:
    """A member whose CRC is wrong (the RECORD hash right) is refused, as pip would fail."""
    path = make_wheel(tmp_path)
    with zipfile.ZipFile(path) as zf:
        crc = zf.getinfo("demo_pkg/core.py").CRC
    _set_crc(path, "demo_pkg/core.py", crc ^ 1)
    with pytest.raises(InvalidWheel, match=r"cannot read 'demo_pkg/core\.py' \(Bad CRC-32"):
        read_wheel(path)


def test_verify_refuses_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    path.write_bytes(b"this is not a zip archive\n" * 10)
    with pytest.raises(InvalidWheel, match="not a valid zip archive"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    path.write_bytes(b"")
    with pytest.raises(InvalidWheel, match="not a valid zip archive"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_trailing_data(tmp_path: Path) -> None:
    path = make_wheel(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b"hidden payload")
    with pytest.raises(InvalidWheel, match="data after the end of the zip archive"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_prepended_data(tmp_path: Path) -> None:
    path = make_wheel(tmp_path)
    path.write_bytes(b"#!/bin/sh\necho hidden\n" + path.read_bytes())
    with pytest.raises(InvalidWheel, match="central directory is not where its end record says"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_local_name_mismatch(tmp_path: Path) -> None:
    path = make_wheel(tmp_path)
    data = bytearray(path.read_bytes())
    # Rename the first local header's file name only (the central directory keeps it).
    name_len = int.from_bytes(data[26:28], "little")
    assert data[30 : 30 + name_len] == b"demo_pkg/__init__.py"
    data[30:38] = b"evil_pkg"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidWheel, match="local and central names differ"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_corrupt_member(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, files={"demo_pkg/__init__.py": b"A" * 5000})
    data = bytearray(path.read_bytes())
    name_len = int.from_bytes(data[26:28], "little")
    extra_len = int.from_bytes(data[28:30], "little")
    start = 30 + name_len + extra_len
    data[start + 2] ^= 0xFF  # flip bits inside the compressed data
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidWheel, match=r"cannot read 'demo_pkg/__init__\.py'|RECORD hash"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_bad_filename(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, filename="demo_pkg-1.0.whl")
    with pytest.raises(InvalidWheel, match="invalid wheel filename"):
        verify_wheel(path, package="demo-pkg", version="1.0")


def test_verify_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidWheel, match="cannot read"):
        verify_wheel(tmp_path / "demo_pkg-1.0-py3-none-any.whl", package="demo-pkg", version="1.0")


def test_verify_abi3_wheel_for_newer_abi(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, tag="cp38-abi3-linux_armv7l")
    info = verify_wheel(path, package="demo-pkg", version="1.0", abi=("cp313", "linux_armv7l"))
    assert info.abi_tag == "abi3"
    with pytest.raises(InvalidWheel, match="does not serve ABI cp313-linux_aarch64"):
        verify_wheel(path, package="demo-pkg", version="1.0", abi=("cp313", "linux_aarch64"))


# ----------------------------------------------------------------------------- headers

_PIECES = [
    "Name", "name", "NAME", "Requires-Dist", "Tag", "Version", "X", ":", "::", " ", "\t",
    "\n", "\r", "\r\n", "\n\n", "From ", "From:", "é", "ü", "\x0c", "\x0b", "\x1c",
    "\x85", "\u2028", "\u2029", "\x00", "=?utf-8?q?x?=", "a b", ">=3.8", ";", "(", ")",
]  # fmt: skip


def test_parse_headers_equals_email_parser_on_hostile_input() -> None:
    """The small parser gives the fields the standard email parser gives, on any text."""
    from email.parser import Parser
    from email.policy import compat32

    rng = random.Random(20261121)
    cases = [
        "",
        "\n",
        "Name: foo\nVersion: 1.0\n\nbody: not a header\n",
        "Name: foo\r\n  continued\r\n\tmore\r\nVersion:1\r\n",
        " leading continuation\nName: x\n",
        "From someone\nName: x\nFrom inside\nVersion: 2\nFrom last",
        ":no name\n continued\nName: y",
        "Name : spaced colon\nVersion: 1\n",
        "Name: a\x0cb\u2028c\x85d\nVersion: 1",
        "Name: a\rVersion: 2\rTag: t\r\r",
        "Requires-Dist: b\u00e4r; extra == 'x'\nrequires-dist: two\n",
    ]
    cases += ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 40))) for _ in range(4000)]
    for text in cases:
        ours = parse_headers(text)
        msg = Parser(policy=compat32).parsestr(text, headersonly=True)
        assert ours.fields == list(msg.items()), repr(text)
        for name in {k for k, _ in ours.fields} | {"Name", "requires-dist", "Missing"}:
            assert ours.get(name) == msg.get(name), (repr(text), name)
            assert ours.get_all(name) == msg.get_all(name), (repr(text), name)


def test_non_ascii_metadata_values_are_text(tmp_path: Path) -> None:
    """Non-ASCII header values (a marker, a summary) are read as text, not refused or mangled."""
    path = make_wheel(
        tmp_path,
        metadata_text=(
            "Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\nSummary: Café\n"
            'Requires-Python: >=3.8\nRequires-Dist: bär; extra == "ü"\n\nDescription\n'
        ),
    )
    info = read_wheel(path)
    assert info.requires_dist == ('bär; extra == "ü"',)
    assert info.requires_python == ">=3.8"
