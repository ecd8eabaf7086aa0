"""Fixtures of the remediator tests: a `Site` per test and the real app, started in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from remediator.config import Setup
from remediator.server import make_app
from tests.conftest import Database
from tests.remediator.kit import Client, Site, StartApp
from tests.services import PostgresServer


@pytest.fixture
def site(tmp: Path, db: Database, pg: PostgresServer, redis_url: str) -> Site:
    return Site(tmp=tmp, cape=db, journal=Database(pg, pg.create_database("journal")), redis_url=redis_url)


@pytest.fixture
def r(site: Site) -> Iterator[redis.Redis]:
    """A client of the site's Redis (bytes replies), closed at the end of the test."""
    client = redis.Redis.from_url(site.redis_url)
    yield client
    client.close()


@pytest.fixture
async def start(aiohttp_client: Any) -> AsyncIterator[StartApp]:
    """Start the real app (webhook + worker) for a setup; stopped at the end of the test."""

    async def started(setup: Setup, run_worker: bool = True) -> Client:
        client: Client = await aiohttp_client(make_app(setup, run_worker=run_worker))
        return client

    yield started


