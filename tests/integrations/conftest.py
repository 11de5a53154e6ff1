"""Fixtures for the framework adapters: brokers found on their ports, worker processes started
and stopped here. Under CI=true a missing broker fails the tests instead of skipping them."""

from __future__ import annotations

from fixtures.servers import port_open, unavailable

RABBITMQ = ("127.0.0.1", 5672)
REDIS = ("127.0.0.1", 6379)
NATS = ("127.0.0.1", 4222)


def require_server(name: str, address: tuple[str, int], how_to: str) -> None:
    if not port_open(*address):
        unavailable(f"{name} on {address[0]}:{address[1]}", how_to)
