"""Fixtures of the analytics tests: a real chDB store in a temporary directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from livedesk.analytics.schema import migrate
from livedesk.analytics.store import Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open chDB store of its own; closed afterwards (chDB hosts one engine per process)."""
    opened = await Store.open(clickhouse_url=None, chdb_path=str(tmp_path / "chdb"))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def migrated(store: Store) -> Store:
    """``store`` with the schema migrations applied."""
    await migrate(store)
    return store
