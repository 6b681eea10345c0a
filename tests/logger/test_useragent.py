"""Decoding pip and uv user agents, spotting bots, and surviving garbage."""

from __future__ import annotations

import json
import random

import pytest

from piwheels.logger.useragent import MAX_FIELD, decode_user_agent, is_bot
from tests.logger.lines import BOT_UA, BROWSER_UA, PIP_UA, UV_UA


def test_pip_agent() -> None:
    ua = decode_user_agent(PIP_UA)
    assert ua.agent == "pip"
    assert (ua.installer_name, ua.installer_version) == ("pip", "23.2.1")
    assert (ua.distro_name, ua.distro_version, ua.distro_id) == (
        "Raspbian GNU/Linux",
        "11",
        "bullseye",
    )
    assert (ua.libc_lib, ua.libc_version) == ("glibc", "2.31")
    assert (ua.os_name, ua.os_version, ua.arch) == ("Linux", "6.1.21-v7l+", "armv7l")
    assert (ua.py_impl, ua.py_impl_version, ua.py_version) == ("CPython", "3.9.2", "3.9.2")
    assert ua.setuptools_version == "52.0.0"
    assert ua.ci is False
    assert ua.is_installer


def test_uv_agent() -> None:
    ua = decode_user_agent(UV_UA)
    assert ua.agent == "uv"
    assert (ua.installer_name, ua.installer_version) == ("uv", "0.13.8")
    assert ua.installer_subcommand == "pip install"
    assert (ua.distro_name, ua.distro_version, ua.distro_id) == (
        "Debian GNU/Linux",
        "12",
        "bookworm",
    )
    assert (ua.arch, ua.py_version) == ("aarch64", "3.11.2")
    assert ua.setuptools_version is None  # uv sends null


def test_real_pip_agent_from_the_installed_pip() -> None:
    # The UA the pip in this environment sends, computed by pip itself.
    from pip._internal.network.session import user_agent

    real = user_agent()
    ua = decode_user_agent(real)
    assert ua.agent == "pip"
    data = json.loads(real.partition(" ")[2])
    assert ua.installer_version == data["installer"]["version"]
    assert ua.py_version == data["python"]
    assert ua.arch == data["cpu"]
    assert ua.distro_name == (data.get("distro") or {}).get("name")


def test_ci_flag() -> None:
    data = json.loads(PIP_UA.partition(" ")[2])
    data["ci"] = True
    assert decode_user_agent("pip/23.2.1 " + json.dumps(data)).ci is True


@pytest.mark.parametrize(
    ("text", "agent"),
    [
        (BROWSER_UA, "direct"),
        ("curl/7.88.1", "direct"),
        ("Wget/1.21.3", "direct"),
        ("python-requests/2.31.0", "direct"),
        ("", "direct"),
        ("-", "direct"),
        ("poetry/1.8.3", "other-installer"),
        ("pdm/2.19.1 CPython/3.11.2 Linux/6.1", "other-installer"),
        (BOT_UA, "bot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.example.com/bingbot.htm)", "bot"),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0)", "bot"),
        ("Sogou web spider/4.0", "bot"),
        ("facebookexternalhit/1.1", "bot"),
        ("Mozilla/5.0 (compatible; Yahoo! Slurp)", "bot"),
        ("some-crawler/1.0", "bot"),
    ],
)
def test_agent_kinds(text: str, agent: str) -> None:
    ua = decode_user_agent(text)
    assert ua.agent == agent
    if agent in ("direct", "bot"):
        assert ua.installer_name is None
        assert ua.py_version is None


def test_installer_is_never_a_bot() -> None:
    # "Robotics" in a distro name must not turn a pip download into a bot.
    ua = decode_user_agent(PIP_UA.replace("Raspbian GNU/Linux", "Robotics OS"))
    assert ua.agent == "pip"
    assert is_bot("Robotics OS crawler")


def test_other_installer_keeps_its_name() -> None:
    ua = decode_user_agent("poetry/1.8.3")
    assert (ua.installer_name, ua.installer_version, ua.distro_name) == ("poetry", "1.8.3", None)


@pytest.mark.parametrize(
    "text",
    [
        "pip/23.2.1",
        "pip/23.2.1 ",
        "pip/23.2.1 {",
        'pip/23.2.1 {"cpu":"armv7l","distro":{"name":"Rasp',
        "pip/23.2.1 [1, 2, 3]",
        'pip/23.2.1 "a string"',
        "pip/23.2.1 null",
        "pip/23.2.1 " + "[" * 10000,
        "pip/23.2.1 {" + '"a":{' * 3000 + "}" * 3001,
        'pip/23.2.1 {"distro":"bullseye","installer":[1],"implementation":7,"system":null}',
        'pip/23.2.1 {"cpu":{"x":1},"python":["3.9"],"setuptools_version":true,"ci":"yes"}',
        "uv/ {}",
        "uv",
        "pip/\x00\x00 {}",
    ],
)
def test_garbage_never_raises(text: str) -> None:
    ua = decode_user_agent(text)
    assert ua.agent in ("pip", "uv")
    # Wrong types are dropped, not turned into text.
    assert ua.arch is None
    assert ua.distro_name is None
    assert ua.ci is False


def test_numbers_become_text() -> None:
    ua = decode_user_agent('pip/9.0.1 {"distro":{"name":"Debian","version":9},"python":3.5}')
    assert (ua.distro_version, ua.py_version) == ("9", "3.5")


def test_huge_fields_are_capped() -> None:
    data = json.loads(PIP_UA.partition(" ")[2])
    data["distro"]["name"] = "D" * 5000
    data["cpu"] = "c" * 1000
    ua = decode_user_agent(f"pip/{'9' * 500} " + json.dumps(data))
    for value in (ua.distro_name, ua.arch, ua.installer_version):
        assert value is not None
        assert len(value) <= MAX_FIELD
    # The whole UA beyond a limit is ignored, so a 10 MB agent costs nothing.
    assert decode_user_agent("pip/1.0 " + "x" * 10_000_000).agent == "pip"


def test_nul_bytes_removed() -> None:
    data = json.loads(PIP_UA.partition(" ")[2])
    data["cpu"] = "arm\x00v7l"
    assert decode_user_agent("pip/23.2.1 " + json.dumps(data)).arch == "armv7l"


def test_random_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = '{}[]":,\\ abcpipuv/0123456789\x00\u00fcnull'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        for prefix in ("", "pip/1 ", "uv/1 "):
            ua = decode_user_agent(prefix + text)
            assert ua.agent in ("pip", "uv", "other-installer", "direct", "bot")
