"""The shipped conformance suite (pydantic_toast.testing) against every backend the project has.

Built-ins on real servers, a class with exactly the four documented methods that subclasses
nothing, and the README's FileBackend taken verbatim from the README.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest
from redis.cluster import RedisCluster as SyncRedisCluster

from conftest import delete_redis_keys
from pydantic_toast import register_backend
from pydantic_toast.testing import BackendConformance
from pydantic_toast.url import StorageURL

ROOT = Path(__file__).resolve().parents[1]


class PlainBackend:
    """The contract's four async methods and nothing else; no base class."""

    stores: ClassVar[dict[str, dict[tuple[UUID, str], str]]] = {}

    def __init__(self, url: str) -> None:
        self.name = urlsplit(url).netloc
        self.records: dict[tuple[UUID, str], str] | None = None

    async def connect(self) -> None:
        self.records = self.stores.setdefault(self.name, {})

    async def disconnect(self) -> None:
        self.records = None

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        assert self.records is not None
        self.records[(id, class_name)] = json.dumps(data)

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        assert self.records is not None
        text = self.records.get((id, class_name))
        return None if text is None else dict(json.loads(text))


def readme_file_backend() -> type:
    """The FileBackend class exactly as the README's custom-backend section writes it."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    [block] = [block for block in blocks if "class FileBackend" in block]
    namespace: dict[str, Any] = {}
    exec(compile(block.split("register_backend(")[0], "README.md", "exec"), namespace)
    backend: type = namespace["FileBackend"]
    return backend


register_backend("plain", PlainBackend)  # type: ignore[arg-type]
register_backend("readme-file", readme_file_backend())


class TestMemory(BackendConformance):
    @pytest.fixture
    def backend_url(self, memory_url: str) -> str:
        return memory_url


class TestSQLite(BackendConformance):
    @pytest.fixture
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url


@pytest.mark.postgresql
class TestPostgreSQL(BackendConformance):
    @pytest.fixture
    def backend_url(self, postgresql_table_url: str) -> str:
        return postgresql_table_url


@pytest.mark.redis
class TestRedis(BackendConformance):
    @pytest.fixture
    def backend_url(self, redis_url: str) -> Iterator[str]:
        prefix = f"t_{uuid4().hex[:12]}"
        yield f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={prefix}"
        delete_redis_keys(redis_url, prefix)


@pytest.mark.redis
class TestRedisCluster(BackendConformance):
    @pytest.fixture
    def backend_url(self, redis_cluster_url: str) -> Iterator[str]:
        prefix = f"t_{uuid4().hex[:12]}"
        yield f"{redis_cluster_url}{'&' if '?' in redis_cluster_url else '?'}prefix={prefix}"
        seed = StorageURL.parse(redis_cluster_url)
        client = SyncRedisCluster(host=seed.host or "127.0.0.1", port=seed.port or 6379)
        try:
            for name in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
                client.delete(name)
        finally:
            client.close()


@pytest.mark.s3
class TestS3(BackendConformance):
    @pytest.fixture
    def backend_url(self, s3_url: str) -> str:
        return s3_url


@pytest.mark.azure
class TestAzure(BackendConformance):
    @pytest.fixture
    def backend_url(self, azure_url: str) -> str:
        return azure_url


class TestFile(BackendConformance):
    @pytest.fixture
    def backend_url(self, file_url: str) -> str:
        return file_url


class TestPlainFourMethodClass(BackendConformance):
    @pytest.fixture
    def backend_url(self) -> Iterator[str]:
        name = uuid4().hex
        yield f"plain://{name}"
        PlainBackend.stores.pop(name, None)


class TestReadmeFileBackend(BackendConformance):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"readme-file://{tmp_path}"
