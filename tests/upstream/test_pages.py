"""Parsing the simple API: names, file names, root and project pages."""

from __future__ import annotations

import json

import pytest

from piwheels.errors import InvalidName
from piwheels.upstream.faults import InvalidResponse
from piwheels.upstream.pages import (
    canonical_name,
    classify_filename,
    group_releases,
    parse_info,
    parse_project,
    parse_root,
)


def test_canonical_name() -> None:
    assert canonical_name("Foo.Bar__baz") == "foo-bar-baz"
    assert canonical_name("a") == "a"


@pytest.mark.parametrize(
    "bad", ["", "-foo", "foo-", "foo/bar", "../etc", "foo bar", "x" * 201, "caf\u00e9", "a\nb"]
)
def test_canonical_name_refuses(bad: str) -> None:
    with pytest.raises(InvalidName, match="invalid project name"):
        canonical_name(bad)


@pytest.mark.parametrize(
    ("filename", "project", "expected"),
    [
        ("foo-1.0.tar.gz", "foo", ("sdist", "1.0", "")),
        ("Foo_Bar-2.0rc1.zip", "foo-bar", ("sdist", "2.0rc1", "")),
        ("foo-bar-1.0.tar.gz", "foo-bar", ("sdist", "1.0", "")),
        ("foo-1.0-py3-none-any.whl", "foo", ("wheel", "1.0", "py3-none-any")),
        (
            "foo-1.0-1-cp311-cp311-manylinux_2_17_aarch64.whl",
            "foo",
            ("wheel", "1.0", "cp311-cp311-manylinux_2_17_aarch64"),
        ),
        ("foo-1.0-py2.7.egg", "foo", ("other", "1.0", "")),
        ("foo-1.0.win32.exe", "foo", ("other", "1.0", "")),
    ],
)
def test_classify_filename(filename: str, project: str, expected: tuple[str, str, str]) -> None:
    assert classify_filename(filename, project) == expected


@pytest.mark.parametrize(
    "bad", ["../foo-1.0.tar.gz", "foo/1.0.tar.gz", "bar-1.0.tar.gz", "foo-.tar.gz", "foo-1.0.whl"]
)
def test_classify_filename_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        classify_filename(bad, "foo")


def _root(projects: list[object], serial: int = 10) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1", "_last-serial": serial}, "projects": projects}
    ).encode()


def test_parse_root_keeps_good_and_rejects_bad() -> None:
    body = _root(
        [
            {"name": "Foo", "_last-serial": 3},
            {"name": "x" * 500, "_last-serial": 4},
            {"name": "bad/name", "_last-serial": 5},
            {"name": "good", "_last-serial": "not a number"},
            {"name": 42, "_last-serial": 6},
            "just a string",
            {"_last-serial": 7, "name": "bar"},
        ]
    )
    root = parse_root(body)
    assert root.serial == 10
    assert root.projects == {"foo": 3, "bar": 7}
    assert root.spellings == {"foo": "Foo"}
    assert len(root.rejected) == 5


def test_parse_root_header_serial_wins() -> None:
    assert parse_root(_root([]), header_serial=99).serial == 99


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"meta": {}}',
        json.dumps({"meta": {"api-version": "2.0"}, "projects": []}).encode(),
    ],
)
def test_parse_root_invalid(body: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_root(body)


def test_parse_project() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.4", "_last-serial": 12},
            "name": "foo",
            "versions": ["1.0", "2.0", "3.0"],
            "files": [
                {
                    "filename": "foo-1.0.tar.gz",
                    "url": "x",
                    "hashes": {"sha256": "ab"},
                    "requires-python": ">=3.8",
                    "yanked": "broken",
                    "size": 10,
                    "upload-time": "2024-02-03T04:05:06.789Z",
                },
                {"filename": "foo-1.0.0-py3-none-any.whl", "url": "y", "hashes": {}},
                {"filename": "../../evil-1.0.tar.gz", "url": "z", "hashes": {}},
                {"filename": "foo-2.0.tar.gz", "url": "z", "hashes": {}, "yanked": True},
            ],
            "project-status": {"status": "archived", "reason": "done"},
        }
    ).encode()
    page = parse_project(body, "foo")
    assert page.serial == 12
    assert page.status == "archived" and page.status_reason == "done"
    assert [f.filename for f in page.files] == [
        "foo-1.0.tar.gz",
        "foo-1.0.0-py3-none-any.whl",
        "foo-2.0.tar.gz",
    ]
    first = page.files[0]
    assert first.yanked and first.yank_reason == "broken"
    assert first.requires_python == ">=3.8" and first.size == 10
    assert first.upload_time is not None and first.upload_time.microsecond == 789000
    assert page.files[2].yanked and page.files[2].yank_reason is None
    assert page.rejected == ("../../evil-1.0.tar.gz",)
    # 1.0 and 1.0.0 are one release; 3.0 has no files but exists (PEP 700).
    releases = group_releases(page)
    assert {v: [f.filename for f in fs] for v, fs in releases.items()} == {
        "1.0": ["foo-1.0.tar.gz", "foo-1.0.0-py3-none-any.whl"],
        "2.0": ["foo-2.0.tar.gz"],
        "3.0": [],
    }


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"files": 3}', b'{"files": [], "meta": {"api-version": "3"}}']
)
def test_parse_project_invalid(body: bytes) -> None:
    with pytest.raises(InvalidResponse, match="foo"):
        parse_project(body, "foo")


def test_parse_info() -> None:
    info = parse_info(b'{"info": {"name": "Foo", "summary": "  two\\n lines "}, "last_serial": 5}')
    assert (info.name, info.summary, info.serial) == ("Foo", "two lines", 5)
    with pytest.raises(InvalidResponse):
        parse_info(b'{"info": {}}')
