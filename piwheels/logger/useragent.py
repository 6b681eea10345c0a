"""Decode a User-Agent header: installer facts from pip and uv, bots from the rest.

pip and uv send ``<installer>/<version> <json>`` where the JSON says which
distro, libc, OS, CPU, Python and setuptools the client runs.  Agents send
whatever they like, so decoding never raises: truncated or non-object JSON,
wrong types and huge strings all give a result with the unknown fields set to
``None``, and every text field is capped at :data:`MAX_FIELD` characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "AGENT_BOT",
    "AGENT_DIRECT",
    "AGENT_OTHER_INSTALLER",
    "AGENT_PIP",
    "AGENT_UV",
    "INSTALLERS",
    "MAX_FIELD",
    "MAX_UA",
    "UserAgent",
    "decode_user_agent",
    "is_bot",
]

#: Longest text kept for any decoded field.
MAX_FIELD = 100
#: Longest user agent looked at (a log line is at most this long anyway; pip sends < 1000).
MAX_UA = 16384

# Who made a request, as the classifier splits downloads.
AGENT_PIP = "pip"
AGENT_UV = "uv"
AGENT_OTHER_INSTALLER = "other-installer"
AGENT_DIRECT = "direct"
AGENT_BOT = "bot"

#: Product tokens of programs that install or mirror packages (lower case).
INSTALLERS = frozenset(
    {
        "pip",
        "uv",
        "poetry",
        "pdm",
        "pipenv",
        "pex",
        "hatch",
        "rye",
        "pixi",
        "micropip",
        "bandersnatch",
        "devpi",
        "devpi-server",
        "setuptools",
        "distribute",
    }
)

# Common crawler and monitoring markers, matched anywhere in a non-installer UA.
_BOT = re.compile(
    r"bot\b|bot/|bot;|bot-|robot|crawl|spider|slurp|scrapy|archiver|facebookexternalhit"
    r"|mediapartners|feedfetcher|headlesschrome|lighthouse|pingdom|httrack|checker|validator",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class UserAgent:
    """What a User-Agent says about its client; ``None`` where it says nothing."""

    agent: str  # one of the AGENT_* values
    product: str  # first product token, lower case ("pip", "mozilla", "curl", "")
    installer_name: str | None = None
    installer_version: str | None = None
    installer_subcommand: str | None = None  # uv: "pip install"
    distro_name: str | None = None
    distro_version: str | None = None
    distro_id: str | None = None
    libc_lib: str | None = None
    libc_version: str | None = None
    os_name: str | None = None
    os_version: str | None = None
    arch: str | None = None
    py_impl: str | None = None
    py_impl_version: str | None = None
    py_version: str | None = None
    setuptools_version: str | None = None
    ci: bool = False

    @property
    def is_installer(self) -> bool:
        return self.agent in (AGENT_PIP, AGENT_UV, AGENT_OTHER_INSTALLER)


def _text(value: Any) -> str | None:
    """A capped string from a JSON value; numbers become text, anything else None."""
    if isinstance(value, str):
        value = value.replace("\x00", "").strip()
        return value[:MAX_FIELD] or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)[:MAX_FIELD]
    return None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_bot(ua: str) -> bool:
    """True if *ua* looks like a crawler or a monitoring probe."""
    return _BOT.search(ua[:MAX_UA]) is not None


def _decode_json(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        return {}
    try:
        data = json.loads(text[start:])
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


@lru_cache(maxsize=8192)
def decode_user_agent(ua: str) -> UserAgent:
    """Decode *ua*; never raises.  Cached: a few thousand agents make most traffic."""
    ua = ua[:MAX_UA]
    head, _, rest = ua.partition(" ")
    name, _, version = head.partition("/")
    product = name.replace("\x00", "").strip().lower()[:MAX_FIELD]
    if product not in INSTALLERS:
        agent = AGENT_BOT if is_bot(ua) else AGENT_DIRECT
        return UserAgent(agent=agent, product=product)
    data = _decode_json(rest)
    installer = _obj(data.get("installer"))
    inst_name = (_text(installer.get("name")) or product).lower()
    inst_version = _text(version) or _text(installer.get("version"))
    sub = installer.get("subcommand")
    subcommand = None
    if isinstance(sub, list) and all(isinstance(s, str) for s in sub):
        subcommand = _text(" ".join(sub))
    elif isinstance(sub, str):
        subcommand = _text(sub)
    if inst_name == "pip":
        agent = AGENT_PIP
    elif inst_name == "uv":
        agent = AGENT_UV
    else:
        agent = AGENT_OTHER_INSTALLER
    distro = _obj(data.get("distro"))
    libc = _obj(distro.get("libc"))
    system = _obj(data.get("system"))
    impl = _obj(data.get("implementation"))
    py_version = _text(data.get("python"))
    impl_name = _text(impl.get("name"))
    return UserAgent(
        agent=agent,
        product=product,
        installer_name=inst_name[:MAX_FIELD],
        installer_version=inst_version,
        installer_subcommand=subcommand,
        distro_name=_text(distro.get("name")),
        distro_version=_text(distro.get("version")),
        distro_id=_text(distro.get("id")),
        libc_lib=_text(libc.get("lib")),
        libc_version=_text(libc.get("version")),
        os_name=_text(system.get("name")),
        os_version=_text(system.get("release")),
        arch=_text(data.get("cpu")),
        # Only claim CPython when the agent said something about Python at all.
        py_impl=impl_name or ("CPython" if py_version else None),
        py_impl_version=_text(impl.get("version")) or py_version,
        py_version=py_version,
        setuptools_version=_text(data.get("setuptools_version")),
        ci=data.get("ci") is True,
    )
