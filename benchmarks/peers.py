"""Other libraries that store pydantic models in the servers we have, run on the flat 10-field model.

Peers are optional: install them into a separate venv (see README.md). Each is reported as
"not installed" when its import fails, and some cannot run here at all (`UNAVAILABLE`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Sequence
from typing import Any, Protocol

from bench_models import FLAT10

__all__ = ["UNAVAILABLE", "Peer", "redis_peers"]

UNAVAILABLE: dict[str, str] = {
    "redis-om JsonModel": "needs the RedisJSON module; the Redis 7 server here is plain (no modules loaded)",
    "redis-om find()/batch get": "needs RediSearch; load_many of HashModel is asyncio.gather of get()",
    "beanie": "stores pydantic models in MongoDB; no MongoDB server here",
    "odmantic": "stores pydantic models in MongoDB; no MongoDB server here",
}


class Peer(Protocol):
    """A peer library's operations on the flat 10-field model."""

    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def make(self, values: dict[str, Any]) -> Any: ...
    async def save(self, model: Any) -> None: ...
    async def load(self, key: Any) -> Any: ...
    def key_of(self, model: Any) -> Any: ...
    async def save_many(self, models: Sequence[Any]) -> None: ...
    async def load_many(self, keys: Sequence[Any]) -> list[Any]: ...


class RedisOmHashPeer:
    """redis-om-python's async `HashModel` (one Redis hash per model)."""

    name = "redis-om HashModel"

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self._client: Any = None
        self._cls: Any = None

    async def start(self) -> None:
        aredis_om = importlib.import_module("aredis_om")  # optional: imported only when installed
        self._client = aredis_om.get_redis_connection(url=self._url)
        client, prefix = self._client, self._prefix
        annotations = dict(FLAT10)

        class Meta:
            database = client
            global_key_prefix = prefix
            model_key_prefix = "flat10"

        namespace = {"__annotations__": annotations, "__module__": __name__, "Meta": Meta}
        # index=True only lets a model build its key; no index is created (that needs RediSearch).
        self._cls = type("RedisOmFlat10", (aredis_om.HashModel,), namespace, index=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def make(self, values: dict[str, Any]) -> Any:
        return self._cls(**values)

    def key_of(self, model: Any) -> Any:
        return model.pk

    async def save(self, model: Any) -> None:
        await model.save()

    async def load(self, key: Any) -> Any:
        return await self._cls.get(key)

    async def save_many(self, models: Sequence[Any]) -> None:
        await self._cls.add(models)

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        # No batch read without RediSearch: concurrent gets, at most 50 at once (redis-py's pool
        # refuses 1,000 connections; pydantic-toast's Redis backend also caps at 50).
        limit = asyncio.Semaphore(50)

        async def get(key: Any) -> Any:
            async with limit:
                return await self._cls.get(key)

        return list(await asyncio.gather(*(get(key) for key in keys)))


class PydanticRedisPeer:
    """pydantic-redis (sopherapps): async `Model.insert` / `Model.select(ids=...)`."""

    name = "pydantic-redis"

    def __init__(self, host: str, port: int, db: int, prefix: str) -> None:
        self._config = (host, port, db)
        self._prefix = prefix
        self._store: Any = None
        self._cls: Any = None

    async def start(self) -> None:
        library = importlib.import_module("pydantic_redis.asyncio")  # optional: imported only when installed
        host, port, db = self._config
        config = library.RedisConfig(host=host, port=port, db=db)
        self._store = library.Store(name=self._prefix, redis_config=config)
        namespace = {"__annotations__": dict(FLAT10), "__module__": __name__, "_primary_key_field": "email"}
        self._cls = type(f"{self._prefix}_flat10", (library.Model,), namespace)
        self._store.register_model(self._cls)

    async def close(self) -> None:
        store = self._store
        if store is not None:
            client = getattr(store, "redis_store", None)
            close = getattr(client, "aclose", None) or getattr(client, "close", None)
            if close is not None:
                await close()
            self._store = None

    def make(self, values: dict[str, Any]) -> Any:
        return self._cls(**values)

    def key_of(self, model: Any) -> Any:
        return model.email

    async def save(self, model: Any) -> None:
        await self._cls.insert(model)

    async def load(self, key: Any) -> Any:
        [found] = await self._cls.select(ids=[key])
        return found

    async def save_many(self, models: Sequence[Any]) -> None:
        await self._cls.insert(list(models))

    async def load_many(self, keys: Sequence[Any]) -> list[Any]:
        return list(await self._cls.select(ids=list(keys)))


def redis_peers(url: str, host: str, port: int, db: int, prefix: str) -> tuple[list[Peer], dict[str, str]]:
    """The Redis peers importable here, and the reason each other one did not run."""
    peers: list[Peer] = []
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("aredis_om") is not None:
        peers.append(RedisOmHashPeer(url, f"{prefix}_om"))
    else:
        skipped["redis-om HashModel"] = "not installed (pip install redis-om; see benchmarks/README.md)"
    if importlib.util.find_spec("pydantic_redis") is not None:
        peers.append(PydanticRedisPeer(host, port, db, f"{prefix}_pr"))
    else:
        skipped["pydantic-redis"] = "not installed (pip install pydantic-redis; see benchmarks/README.md)"
    return peers, skipped
