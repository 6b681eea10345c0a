"""The access-log side of piw-logger: parse, decode agents, classify, anonymise, read.

``main.py`` (the executable) sits on top of these::

    anonymiser = Anonymiser("hash", load_secret(path))
    reader = LogReader(anonymiser)
    for record in reader.read_files(paths):   # or read_stream / follow
        ...                                   # batch with records_to_rows()
"""

from __future__ import annotations

from piwheels.logger.anonymise import Anonymiser, load_secret
from piwheels.logger.classify import (
    KINDS,
    ROW_FIELDS,
    AccessRecord,
    Classifier,
    agent_of,
    canonicalize_name,
    record_from_dict,
    record_from_row,
    records_to_dicts,
    records_to_rows,
)
from piwheels.logger.parse import LogParser, MalformedLine, ParsedLine, parse_line
from piwheels.logger.reader import LogReader, ReadStats, follow_lines, iter_lines, open_log
from piwheels.logger.useragent import UserAgent, decode_user_agent, is_bot

__all__ = [
    "KINDS",
    "ROW_FIELDS",
    "AccessRecord",
    "Anonymiser",
    "Classifier",
    "LogParser",
    "LogReader",
    "MalformedLine",
    "ParsedLine",
    "ReadStats",
    "UserAgent",
    "agent_of",
    "canonicalize_name",
    "decode_user_agent",
    "follow_lines",
    "is_bot",
    "iter_lines",
    "load_secret",
    "open_log",
    "parse_line",
    "record_from_dict",
    "record_from_row",
    "records_to_dicts",
    "records_to_rows",
]
