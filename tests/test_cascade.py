"""Cascade delete: a record and every external model it refers to, parents first, batched per level."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, Field

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordNotFoundError, StorageValidationError
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.lifecycle import references_in


def tree(storage: str, leaf_storage: str | None = None) -> tuple[Any, Any, Any]:
    """Root -> Branch (in a list, a dict, an optional field, a plain model) -> Leaf."""

    class Leaf(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=leaf_storage or storage)

    class Branch(ExternalBaseModel):
        leaves: list[Leaf]
        model_config = ExternalConfigDict(storage=storage)

    class Holder(BaseModel):
        branch: Branch

    class Root(ExternalBaseModel):
        name: str
        branches: list[Branch]
        by_name: dict[str, Leaf]
        maybe: Leaf | None = None
        held: Holder | None = None
        # Looks like a reference, but the schema says it is plain data: never followed.
        note: dict[str, Any] = Field(default_factory=dict)
        text: str = ""
        model_config = ExternalConfigDict(storage=storage)

    return Root, Branch, Leaf


def build(root_type: Any, branch_type: Any, leaf_type: Any) -> tuple[Any, list[Any]]:
    leaves = [leaf_type(text=f"leaf {i}") for i in range(6)]
    branches = [branch_type(leaves=leaves[0:2]), branch_type(leaves=leaves[2:3])]
    held = branch_type(leaves=[leaves[3]])
    root = root_type(
        name="root",
        branches=branches,
        by_name={"a": leaves[4]},
        maybe=leaves[5],
        held={"branch": held},
    )
    return root, [*leaves, *branches, held]


async def test_cascade_deletes_every_external_model_the_record_refers_to(storage_url: str) -> None:
    root_type, branch_type, leaf_type = tree(storage_url)
    root, parts = build(root_type, branch_type, leaf_type)
    bystander = leaf_type(text="not referenced")
    await root.save()
    await bystander.save()

    assert await root.delete(cascade=True) is True

    for model in [root, *parts]:
        with pytest.raises(RecordNotFoundError):
            await type(model).load(model.external_reference)
    assert (await leaf_type.load(bystander.external_reference)).text == "not referenced"
    # The root is gone: a second cascade finds nothing and deletes nothing.
    assert await root_type.delete(root.external_reference, cascade=True) is False


async def test_without_cascade_the_children_stay(storage_url: str) -> None:
    root_type, branch_type, leaf_type = tree(storage_url)
    root, parts = build(root_type, branch_type, leaf_type)
    await root.save()
    assert await root.delete() is True
    for model in parts:
        assert await type(model).load(model.external_reference) == model


async def test_references_are_read_by_the_schema_not_by_the_look_of_the_data(memory_url: str) -> None:
    root_type, _, leaf_type = tree(memory_url)
    kept = leaf_type(text="kept")
    reference = await kept.save()
    root = root_type(
        name="r",
        branches=[],
        by_name={},
        note=reference.as_dict(),
        text=reference.model_dump_json(),
    )
    await root.save()
    assert await root.delete(cascade=True) is True
    assert (await leaf_type.load(reference)).text == "kept"


async def test_references_in_lists_each_reference_once() -> None:
    storage = f"memory://{uuid4().hex}"
    root_type, _, leaf_type = tree(storage)
    leaf = leaf_type(text="shared")
    root = root_type(name="r", branches=[], by_name={"a": leaf, "b": leaf}, maybe=leaf)
    await root.save()
    [record] = await _load_records(root)
    assert record is not None
    found = references_in(root_type, record)
    assert [(item.class_name, item.id, item.shared) for item in found] == [
        ("Leaf", leaf.external_reference.id, False)
    ]
    # A leaf's records hold no references; a root's do.
    assert references_in(leaf_type, record) == []


async def _load_records(model: Any) -> list[StoredRecord | None]:
    from pydantic_toast import runtime

    settings = type(model).__toast_settings__
    key = [(model.external_reference.id, settings.storage_name)]
    return await runtime.execute(settings.url, 5, lambda backend: backend.load_records(key))


async def test_cascade_across_two_stores(memory_url: str, sqlite_url: str) -> None:
    root_type, branch_type, leaf_type = tree(sqlite_url, leaf_storage=memory_url)
    root, parts = build(root_type, branch_type, leaf_type)
    await root.save()
    assert await root.delete(cascade=True) is True
    for model in parts:
        with pytest.raises(RecordNotFoundError):
            await type(model).load(model.external_reference)


async def test_one_read_and_one_delete_per_backend_and_level(
    memory_url: str, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    root_type, branch_type, leaf_type = tree(sqlite_url, leaf_storage=memory_url)
    root, _ = build(root_type, branch_type, leaf_type)
    await root.save()
    with caplog.at_level(logging.DEBUG, logger="pydantic_toast"):
        await root.delete(cascade=True)
    operations = [
        (record.toast_system, record.toast_operation, record.toast_records)  # type: ignore[attr-defined]
        for record in caplog.records
        if hasattr(record, "toast_operation")
    ]
    # Level 0: the root; level 1: three branches (sqlite) and two leaves (memory); level 2: four
    # leaves (memory). Parents are deleted before their children are read.
    assert operations[:2] == [("sqlite", "load", 1), ("sqlite", "delete", 1)]
    level_1 = sorted(operations[2:6])
    assert level_1 == [
        ("memory", "delete", 2),
        ("memory", "load", 2),
        ("sqlite", "delete", 3),
        ("sqlite", "load", 3),
    ]
    assert operations[6:] == [("memory", "load", 4), ("memory", "delete", 4)]


def test_sync_cascade_delete(sqlite_url: str) -> None:
    root_type, branch_type, leaf_type = tree(sqlite_url)
    root, parts = build(root_type, branch_type, leaf_type)
    reference = root.model_dump()
    assert pydantic_toast.delete(root_type, reference, cascade=True) is True
    for model in [root, *parts]:
        with pytest.raises(RecordNotFoundError):
            type(model).model_validate(model.external_reference)
    assert pydantic_toast.delete(root, cascade=True) is False


async def test_sync_cascade_delete_inside_a_running_loop(sqlite_url: str) -> None:
    root_type, branch_type, leaf_type = tree(sqlite_url)
    root, parts = build(root_type, branch_type, leaf_type)
    root.model_dump()
    asyncio.get_running_loop()  # the sync API runs on the library's I/O thread, not this loop
    assert pydantic_toast.delete(root, cascade=True) is True
    for model in parts:
        with pytest.raises(RecordNotFoundError):
            await type(model).load(model.external_reference)


async def test_instances_held_by_a_cascade_deleted_model_are_written_again(storage_url: str) -> None:
    root_type, branch_type, leaf_type = tree(storage_url)
    root, _ = build(root_type, branch_type, leaf_type)
    await root.save()
    await root.delete(cascade=True)
    # Unchanged, but deleted from the store: saving the root must store its children again, or it
    # would point at records that no longer exist.
    await root.save()
    assert await root_type.load(root.external_reference) == root


def test_delete_refuses_what_is_not_a_model() -> None:
    with pytest.raises(StorageValidationError, match="delete"):
        pydantic_toast.delete("not a model")
