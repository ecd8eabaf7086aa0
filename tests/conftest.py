"""Session-wide real PostgreSQL and Redis servers; each test gets its own database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.services import PostgresServer, RedisServer, tempdir

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = tempdir("taskmedic-tests-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(workdir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(workdir / "pg")
    server.init()
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    server.start()
    yield server
    server.stop()


@dataclass
class Database:
    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def sql(self, statement: str) -> str:
        return self.server.psql(statement, db=self.name)

    def load(self, fixture: str) -> None:
        self.server.psql_file(FIXTURES / fixture, db=self.name)


@pytest.fixture
def db(pg: PostgresServer) -> Database:
    return Database(pg, pg.create_database())


def flushed(server: RedisServer, db: int) -> Iterator[str]:
    """The URL of one of the session server's databases, empty before and after the test."""
    url = server.url(db)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    yield from flushed(redis_server, 0)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path
