"""Client addresses: a salted hash per UTC day, or a network prefix; never the address."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from piwheels.errors import ConfigError
from piwheels.logger.anonymise import HASH_CHARS, UNKNOWN, Anonymiser, load_secret
from tests.logger.lines import SECRET

DAY = datetime(2021, 10, 1, 0, 0, 1, tzinfo=UTC)


def test_same_day_same_hash() -> None:
    a = Anonymiser("hash", SECRET)
    h1 = a.client("192.0.2.1", DAY)
    h2 = a.client("192.0.2.1", DAY + timedelta(hours=23, minutes=59))
    assert h1 == h2
    assert len(h1) == HASH_CHARS
    int(h1, 16)  # hex
    # A fresh anonymiser with the same secret agrees (the logger may restart).
    assert Anonymiser("hash", SECRET).client("192.0.2.1", DAY) == h1


def test_next_day_different_hash() -> None:
    a = Anonymiser("hash", SECRET)
    assert a.client("192.0.2.1", DAY) != a.client("192.0.2.1", DAY + timedelta(days=1))
    assert a.salt(DAY.date()) != a.salt((DAY + timedelta(days=1)).date())


def test_days_are_utc_days() -> None:
    a = Anonymiser("hash", SECRET)
    before = datetime(2021, 10, 1, 23, 59, 59, tzinfo=UTC)
    after = datetime(2021, 10, 2, 0, 0, 0, tzinfo=UTC)
    assert a.client("192.0.2.1", before) != a.client("192.0.2.1", after)


def test_distinct_addresses_distinct_hashes() -> None:
    a = Anonymiser("hash", SECRET)
    hashes = {a.client(f"10.0.{i // 256}.{i % 256}", DAY) for i in range(5000)}
    assert len(hashes) == 5000


def test_other_secret_other_hash() -> None:
    a = Anonymiser("hash", SECRET)
    b = Anonymiser("hash", SECRET[::-1])
    assert a.client("192.0.2.1", DAY) != b.client("192.0.2.1", DAY)


def test_address_spellings_hash_alike() -> None:
    a = Anonymiser("hash", SECRET)
    assert a.client("2001:DB8::1", DAY) == a.client("2001:db8:0:0::1", DAY)
    assert a.client("::ffff:192.0.2.1", DAY) == a.client("192.0.2.1", DAY)


def test_non_addresses_are_hashed_not_kept() -> None:
    a = Anonymiser("hash", SECRET)
    value = a.client("host.example.org", DAY)
    assert "example" not in value
    assert len(value) == HASH_CHARS


@pytest.mark.parametrize(
    ("addr", "prefix"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("[2001:db8::1]", "2001:db8::/48"),
        ("-", UNKNOWN),
        ("host.example.org", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_prefix_mode(addr: str, prefix: str) -> None:
    assert Anonymiser("prefix").client(addr, DAY) == prefix


def test_prefix_mode_same_every_day() -> None:
    a = Anonymiser("prefix")
    assert a.client("192.0.2.1", DAY) == a.client("192.0.2.200", DAY + timedelta(days=3))


@pytest.mark.parametrize(
    ("mode", "secret"), [("hash", None), ("hash", b"short"), ("raw", SECRET), ("", None)]
)
def test_bad_settings(mode: str, secret: bytes | None) -> None:
    with pytest.raises(ConfigError, match="anonymise"):
        Anonymiser(mode, secret)


def test_load_secret_creates_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = load_secret(path)
    assert len(secret) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(path) == secret  # stable across restarts
    assert load_secret(tmp_path / "other") != secret


def test_load_secret_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_secret(tmp_path / "missing", create=False)
    short = tmp_path / "short"
    short.write_bytes(b"abc\n")
    with pytest.raises(ConfigError, match="at least"):
        load_secret(short)
    assert short.read_bytes() == b"abc\n"  # never overwritten
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret(tmp_path)  # a directory


def test_hash_is_hmac_sha256_of_the_packed_address_under_the_days_salt() -> None:
    """The keyed SHA-256 states give exactly HMAC-SHA256 (as the module docs define it)."""
    import hashlib
    import hmac
    import socket

    a = Anonymiser("hash", SECRET)
    for day in (DAY, DAY + timedelta(days=40)):
        salt = hmac.new(
            SECRET, b"piwheels-client-salt:" + day.date().isoformat().encode(), hashlib.sha256
        ).digest()
        for addr, packed in (
            ("192.0.2.1", socket.inet_pton(socket.AF_INET, "192.0.2.1")),
            ("2001:db8::1", socket.inet_pton(socket.AF_INET6, "2001:db8::1")),
            ("host.example", b"name:host.example"),
        ):
            want = hmac.digest(salt, packed, "sha256").hex()[:HASH_CHARS]
            assert a.client(addr, day) == want
            assert a.hasher(day.date())(packed) == want
