"""Shared fixtures. Emulator fixtures live in ``tests/fixtures_emulator.py``."""

from __future__ import annotations

import os

import pytest
from django.db import connection

pytest_plugins = [
    "tests.fixtures_emulator",
    "tests.fixtures_redis",
    "tests.committed_db",
    "tests.scanned_corpus",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres`` need row locks or triggers; on SQLite they wait for the PostgreSQL pass."""
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL; `make test` runs it in the PostgreSQL pass")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def on_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture(scope="session")
def require_browser() -> bool:
    return os.environ.get("REQUIRE_BROWSER") == "1"
