"""Fixtures for the access-log tests: an anonymiser, real pip and uv user agents."""

from __future__ import annotations

import pytest

from piwheels.logger.anonymise import Anonymiser
from tests.logger.lines import SECRET


@pytest.fixture
def anonymiser() -> Anonymiser:
    return Anonymiser("hash", SECRET)
