"""Batches and nesting cost O(1) round trips per backend for writes and O(depth) for reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, Field

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordNotFoundError
from pydantic_toast.url import StorageURL


class RoundTrips:
    def __init__(self) -> None:
        self.by_url: dict[str, int] = {}


@contextmanager
def counting(*urls: str) -> Iterator[RoundTrips]:
    """Round trips each storage URL made inside the block, from the backends' own counters."""
    masked = [StorageURL.parse(url).masked for url in urls]

    def totals() -> list[int]:
        snapshot = pydantic_toast.stats()
        return [snapshot.get(url, {}).get("round_trips", 0) for url in masked]

    counts = RoundTrips()
    before = totals()
    yield counts
    counts.by_url = {url: after - start for url, start, after in zip(urls, before, totals(), strict=True)}


def tree_models(storage: str, child_storage: str | None = None) -> tuple[Any, Any]:
    class Child(ExternalBaseModel):
        index: int
        payload: str
        model_config = ExternalConfigDict(storage=child_storage or storage)

    class Parent(ExternalBaseModel):
        name: str
        children: list[Child]
        model_config = ExternalConfigDict(storage=storage)

    return Parent, Child


async def test_save_many_and_load_many_are_one_round_trip_each(storage_url: str) -> None:
    _, child_type = tree_models(storage_url)
    children = [child_type(index=i, payload="x" * 100) for i in range(100)]
    await child_type.save_many(children[:1])  # connect outside the counted block

    with counting(storage_url) as saving:
        references = await child_type.save_many(children)
    with counting(storage_url) as loading:
        loaded = await child_type.load_many(references)

    assert loaded == children
    assert [child.external_reference for child in loaded] == references
    assert saving.by_url[storage_url] == 1
    assert loading.by_url[storage_url] == 1


async def test_parent_with_100_children_saves_in_one_and_loads_in_two_round_trips(storage_url: str) -> None:
    parent_type, child_type = tree_models(storage_url)
    parent = parent_type(name="p", children=[child_type(index=i, payload="y" * 50) for i in range(100)])
    await child_type(index=-1, payload="warm-up").save()

    with counting(storage_url) as saving:
        reference = await parent.save()
    with counting(storage_url) as loading:
        loaded = await parent_type.load(reference)
    with counting(storage_url) as sync_loading:
        sync_loaded = parent_type.model_validate(reference.model_dump())

    assert loaded == parent
    assert sync_loaded == parent
    assert saving.by_url[storage_url] == 1
    assert loading.by_url[storage_url] == 2
    # The sync path batches per level too (its first call also connects the I/O thread's backend).
    assert sync_loading.by_url[storage_url] == 2


async def test_sync_dump_of_an_external_tree_is_one_round_trip(storage_url: str) -> None:
    parent_type, child_type = tree_models(storage_url)
    child_type(index=0, payload="warm-up").model_dump()
    parent = parent_type(name="p", children=[child_type(index=i, payload="z") for i in range(100)])

    with counting(storage_url) as saving:
        reference = parent.model_dump()

    assert saving.by_url[storage_url] == 1
    assert parent_type.model_validate(reference) == parent


async def test_three_levels_load_in_three_round_trips(storage_url: str) -> None:
    class Leaf(ExternalBaseModel):
        value: int
        model_config = ExternalConfigDict(storage=storage_url)

    class Branch(ExternalBaseModel):
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=storage_url)

    class Root(ExternalBaseModel):
        branches: list[Branch]
        model_config = ExternalConfigDict(storage=storage_url)

    root = Root(branches=[Branch(leaves=[Leaf(value=b * 10 + i) for i in range(10)]) for b in range(10)])
    reference = await root.save()
    with counting(storage_url) as loading:
        loaded = await Root.load(reference)
    assert loaded == root
    assert loading.by_url[storage_url] == 3


async def test_models_on_different_backends_nest_with_one_round_trip_each(
    memory_url: str, sqlite_url: str
) -> None:
    parent_type, child_type = tree_models(memory_url, child_storage=sqlite_url)
    parent = parent_type(name="p", children=[child_type(index=i, payload="w") for i in range(20)])
    await child_type(index=-1, payload="warm-up").save()

    with counting(memory_url, sqlite_url) as saving:
        reference = await parent.save()
    with counting(memory_url, sqlite_url) as loading:
        loaded = await parent_type.load(reference)

    assert loaded == parent
    assert saving.by_url == {memory_url: 1, sqlite_url: 1}
    assert loading.by_url == {memory_url: 1, sqlite_url: 1}


async def test_load_many_reports_every_missing_id_at_once(storage_url: str) -> None:
    _, child_type = tree_models(storage_url)
    present = await child_type.save_many([child_type(index=1, payload="p")])
    missing = [uuid4(), uuid4()]
    with pytest.raises(RecordNotFoundError) as caught:
        await child_type.load_many([missing[0], present[0], missing[1]])
    assert caught.value.ids == tuple(missing)
    assert caught.value.class_name == "Child"


async def test_load_many_keeps_order_and_duplicates(storage_url: str) -> None:
    _, child_type = tree_models(storage_url)
    references = await child_type.save_many([child_type(index=i, payload="p") for i in range(3)])
    loaded = await child_type.load_many([references[2], references[0], references[2]])
    assert [child.index for child in loaded] == [2, 0, 2]
    assert await child_type.load_many([]) == []


async def test_missing_child_record_is_reported(storage_url: str) -> None:
    parent_type, child_type = tree_models(storage_url)
    child = child_type(index=1, payload="gone")
    reference = await parent_type(name="p", children=[child]).save()
    await child.delete()
    # A dangling reference inside stored data is the server's problem, not the caller's.
    with pytest.raises(
        pydantic_toast.StoredDataError, match=r"children\.0: no stored Child record"
    ) as caught:
        await parent_type.load(reference)
    assert caught.value.class_name == "Parent"
    assert caught.value.errors[0]["loc"] == ("children", 0)


def test_contract_only_backend_batches_fall_back_to_single_calls(tmp_path: Path) -> None:
    import test_custom_backends  # registers the contract-only FileBackend as 'jsondir'

    assert test_custom_backends.FileBackend.__name__ == "FileBackend"
    parent_type, child_type = tree_models(f"jsondir://{tmp_path}")
    parent = parent_type(name="p", children=[child_type(index=i, payload="f") for i in range(5)])
    assert parent_type.model_validate(parent.model_dump()) == parent


def test_plain_parent_dump_writes_each_external_child(storage_url: str) -> None:
    _, child_type = tree_models(storage_url)

    class Holder(BaseModel):
        items: list[child_type] = Field(default_factory=list)  # type: ignore[valid-type]

    holder = Holder(items=[child_type(index=i, payload="h") for i in range(3)])
    child_type(index=-1, payload="warm-up").model_dump()
    with counting(storage_url) as saving:
        dumped = holder.model_dump()
    assert saving.by_url[storage_url] == 3
    assert Holder.model_validate(dumped) == holder


async def test_dump_helpers_batch_a_plain_parent(storage_url: str) -> None:
    _, child_type = tree_models(storage_url)

    class Holder(BaseModel):
        items: list[child_type]  # type: ignore[valid-type]
        by_key: dict[str, child_type]  # type: ignore[valid-type]

    items = [child_type(index=i, payload="h") for i in range(100)]
    holder = Holder(items=items, by_key={"a": child_type(index=0, payload="k")})
    await child_type(index=-1, payload="warm-up").save()
    child_type(index=-2, payload="warm-up").model_dump()

    with counting(storage_url) as async_saving:
        dumped = await pydantic_toast.adump(holder)
    # Changed since the dump above, so written again (unchanged models are not).
    for child in items:
        child.payload += "!"
    with counting(storage_url) as sync_saving:
        as_json = pydantic_toast.dump(holder, mode="json")
    items[0].index = -3
    with counting(storage_url) as list_saving:
        listed = pydantic_toast.dump(holder.items)

    assert async_saving.by_url[storage_url] == 1
    assert sync_saving.by_url[storage_url] == 1
    assert list_saving.by_url[storage_url] == 1
    assert dumped == as_json
    assert listed == dumped["items"]
    assert Holder.model_validate(dumped) == holder


def test_dump_helper_raises_the_library_error_for_plain_parents(tmp_path: Path) -> None:
    _, child_type = tree_models(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")

    class Holder(BaseModel):
        item: child_type  # type: ignore[valid-type]

    holder = Holder(item=child_type(index=1, payload="p"))
    with pytest.raises(pydantic_toast.StorageConnectionError):
        pydantic_toast.dump(holder)


@pytest.mark.redis
async def test_round_trip_counts_agree_with_the_redis_servers_own_view(redis_servers: Any) -> None:
    """A batch is one round trip: check it, and the commands sent, against INFO commandstats.

    On one server the 100 records without expiry go as one MSET (docs/backends/redis.md)."""
    import redis

    server = redis_servers()
    _, child_type = tree_models(server.url)
    children = [child_type(index=i, payload="r") for i in range(100)]
    await child_type(index=-1, payload="warm-up").save()
    admin = redis.Redis.from_url(server.url)

    def calls(command: str) -> int:
        stats: dict[str, Any] = admin.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    try:
        sets, msets, mgets = calls("set"), calls("mset"), calls("mget")
        with counting(server.url) as saving:
            references = await child_type.save_many(children)
        with counting(server.url) as loading:
            await child_type.load_many(references)
        assert saving.by_url[server.url] == 1
        assert (calls("set") - sets, calls("mset") - msets) == (0, 1)
        assert loading.by_url[server.url] == 1
        assert calls("mget") - mgets == 1
    finally:
        admin.close()


@pytest.mark.postgresql
async def test_round_trip_counts_agree_with_the_postgresql_servers_own_log(
    postgresql_server_factory: Any,
) -> None:
    """Every statement the server executes is logged: one per batch, whatever its size."""
    server = postgresql_server_factory()
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write("log_statement = 'all'\n")
    server.restart()
    log = server.directory / "server.log"
    _, child_type = tree_models(server.url)
    children = [child_type(index=i, payload="p") for i in range(100)]
    # Warm-up: asyncpg introspects the array types of a batch statement the first time it runs.
    warm = await child_type.save_many([child_type(index=-i, payload="w") for i in range(1, 3)])
    await child_type.load_many(warm)

    def executed() -> int:
        return sum(1 for line in log.read_text(errors="replace").splitlines() if "LOG:  execute" in line)

    before = executed()
    with counting(server.url) as saving:
        references = await child_type.save_many(children)
    with counting(server.url) as loading:
        await child_type.load_many(references)
    await asyncio.sleep(0.2)  # the server writes its log asynchronously
    assert saving.by_url[server.url] == 1
    assert loading.by_url[server.url] == 1
    statements = executed() - before
    assert statements == 2, log.read_text(errors="replace")[-3000:]


async def test_save_many_refuses_what_is_not_an_external_model(memory_url: str) -> None:
    _, child_type = tree_models(memory_url)
    with pytest.raises(pydantic_toast.StorageValidationError, match="save_many\\(\\) takes external models"):
        await child_type.save_many([child_type(index=1, payload="ok"), {"index": 2}])
