"""The Redis harness starts a real redis-server, restarts it on the same port, and can
bring it back empty (the data files removed) or keep its data (AOF)."""

from __future__ import annotations

import redis

from sidecar.testing.redis import RedisServer


def test_restart_keeps_port_and_aof_data_and_empty_restart_loses_it() -> None:
    with RedisServer(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        port = server.port
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert server.port == port
        assert client.get("k") == b"v"
        server.restart(empty=True)
        client = redis.Redis.from_url(server.url)
        assert client.get("k") is None
        client.close()


def test_password_is_required() -> None:
    with RedisServer(password="s3cret") as server:
        client = redis.Redis(host="127.0.0.1", port=server.port, password="s3cret")
        assert client.ping()
        client.close()
        wrong = redis.Redis(host="127.0.0.1", port=server.port, password="wrong")
        try:
            wrong.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("a wrong password was accepted")
        finally:
            wrong.close()
