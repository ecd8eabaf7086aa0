"""The throwaway servers the tests run on live in `deploy/local/servers.py`, shared with
`make demo` and the benchmarks."""

from deploy.local.servers import PostgresServer, RedisServer, free_port, running, tempdir, wait_http, wait_port

__all__ = ["PostgresServer", "RedisServer", "free_port", "running", "tempdir", "wait_http", "wait_port"]
