"""Fixtures shared by every test module.

Server fixtures live in `tests/fixtures/`: each finds a running server (env URL, default port) or
starts a throwaway one from local binaries, and fails under CI=true when none can be had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

import pydantic_toast
from pydantic_toast.backends.memory import MemoryBackend

pytest_plugins = ["fixtures.postgresql", "fixtures.redis", "fixtures.s3", "fixtures.azure"]


@pytest.fixture
def memory_url() -> Iterator[str]:
    name = f"test-{uuid4().hex}"
    yield f"memory://{name}"
    MemoryBackend.clear(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'toast.db'}"


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("s3", marks=pytest.mark.s3),
        "file",
    ]
)
def storage_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The same test against every built-in backend; servers are found or started on demand.

    Server backends get a table or key prefix of the test's own, removed afterwards.
    """
    if request.param == "postgresql":
        yield request.getfixturevalue("postgresql_table_url")
    elif request.param == "redis":
        prefix = f"t_{uuid4().hex[:12]}"
        url: str = request.getfixturevalue("redis_url")
        yield url + ("&" if "?" in url else "?") + f"prefix={prefix}"
        delete_redis_keys(url, prefix)
    else:
        yield request.getfixturevalue(f"{request.param}_url")


def delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@pytest.fixture(autouse=True)
async def _close_backends() -> AsyncIterator[None]:
    """Every test starts and ends with no open connection, so nothing leaks between tests."""
    yield
    await pydantic_toast.aclose()
