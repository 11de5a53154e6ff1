"""`optimistic_concurrency=True`: a save that would overwrite another writer's change is refused.

No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
"""

import asyncio
import pickle
import sqlite3
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pydantic_core
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import (
    ConcurrentUpdateError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
)
from pydantic_toast._record_state import state_of
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL


def checked_model(storage: str, name: str = "Article", compression: str | None = None) -> Any:
    class Article(ExternalBaseModel):
        title: str
        body: str = ""
        model_config = ExternalConfigDict(
            storage=storage,
            storage_name=f"{name}{uuid4().hex[:8]}",
            optimistic_concurrency=True,
            compression=compression,
        )

    return Article


async def stored_record(storage: str, model: ExternalBaseModel) -> StoredRecord:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        reference = model.external_reference
        assert reference is not None
        [record] = await backend.load_records([(reference.id, reference.class_name)])
    finally:
        await backend.disconnect()
    assert record is not None
    return record


async def stored_revision(storage: str, model: ExternalBaseModel) -> int | None:
    return (await stored_record(storage, model)).revision


def test_the_option_is_validated_at_class_definition(memory_url: str) -> None:
    with pytest.raises(StorageValidationError, match="Wrong: optimistic_concurrency must be True or False"):

        class Wrong(ExternalBaseModel):
            x: int
            model_config = ExternalConfigDict(storage=memory_url, optimistic_concurrency="yes")  # type: ignore[typeddict-item]

    class Default(ExternalBaseModel):
        x: int
        model_config = ExternalConfigDict(storage=memory_url)

    assert Default.__toast_settings__.optimistic_concurrency is False


async def test_the_second_of_two_changed_instances_is_refused(storage_url: str) -> None:
    article_type = checked_model(storage_url)
    reference = article_type(title="secret title", body="v1").model_dump()
    mine = article_type.model_validate(reference)
    theirs = article_type.model_validate(reference)
    theirs.body = "their secret"
    theirs.model_dump()
    mine.body = "my secret"
    with pytest.raises(ConcurrentUpdateError) as caught:
        mine.model_dump()
    error = caught.value
    assert (error.class_name, str(error.id), error.expected, error.found) == (
        reference["class_name"],
        reference["id"],
        1,
        2,
    )
    message = str(error)
    assert "Article" in message
    assert reference["id"] in message
    assert "revision 1" in message
    assert "revision 2" in message
    assert "Load the record again, reapply your change" in message
    for value in ("secret", "v1"):
        assert value not in message
        assert value not in repr(error)
    assert error.__cause__ is None
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.id, copy.expected, copy.found, str(copy)) == (error.id, 1, 2, message)
    assert article_type.model_validate(reference).body == "their secret"
    # The fix the message names: load again, reapply, save.
    again = article_type.model_validate(reference)
    again.body = "my secret"
    again.model_dump()
    assert article_type.model_validate(reference).body == "my secret"


async def test_the_revision_starts_at_1_and_moves_with_every_write_only(storage_url: str) -> None:
    article_type = checked_model(storage_url)
    article = article_type(title="t")
    await article.save()
    assert await stored_revision(storage_url, article) == 1
    article.model_dump()  # unchanged: no write, no revision
    assert await stored_revision(storage_url, article) == 1
    article.body = "changed"
    article.model_dump()
    await article.save()  # save() always writes
    assert await stored_revision(storage_url, article) == 3
    assert state_of(article).revision == 3
    loaded = await article_type.load(article.external_reference)
    assert state_of(loaded).revision == 3
    await article_type.save_many([loaded, article_type(title="other")])
    assert await stored_revision(storage_url, loaded) == 4
    # The instance that did not write knows revision 3 only.
    with pytest.raises(ConcurrentUpdateError):
        await article.save()


async def test_compressed_records_are_checked_like_any_other(storage_url: str) -> None:
    article_type = checked_model(storage_url, compression="zlib")
    article = article_type(title="t", body="long enough to compress " * 40)
    await article.save()
    stored = await stored_record(storage_url, article)
    assert (stored.encoding, stored.revision) == ("json+zlib", 1)
    rival = await article_type.load(article.external_reference)
    article.body = "short"  # below compression_min_size: stored as JSON from now on
    await article.save()
    stored = await stored_record(storage_url, article)
    assert (stored.encoding, stored.revision) == ("json", 2)
    rival.body = "the rival's change " * 40
    with pytest.raises(ConcurrentUpdateError) as caught:
        await rival.save()
    assert (caught.value.expected, caught.value.found) == (1, 2)
    article.body = "compressed again " * 40
    await article_type.save_many([article, article_type(title="new", body="x" * 1000)])
    stored = await stored_record(storage_url, article)
    assert (stored.encoding, stored.revision) == ("json+zlib", 3)
    assert (await article_type.load(article.external_reference)).body == article.body


async def test_a_batch_with_one_conflict_writes_nothing(storage_url: str) -> None:
    # Every built-in store here: a single Redis server checks and writes a batch in one script.
    article_type = checked_model(storage_url)
    stale = article_type(title="stale")
    await stale.save()
    newer = await article_type.load(stale.external_reference)
    await newer.save()
    fresh = [article_type(title=f"fresh {i}") for i in range(3)]
    with pytest.raises(ConcurrentUpdateError) as caught:
        await article_type.save_many([*fresh, stale])
    assert caught.value.id == stale.external_reference.id
    assert caught.value.conflicts == [(caught.value.class_name, caught.value.id, 1, 2)]
    with pytest.raises(RecordNotFoundError) as missing:
        await article_type.load_many([article.external_reference for article in fresh])
    assert len(missing.value.ids) == 3


async def test_a_conflict_on_a_child_leaves_the_parent_unwritten(storage_url: str, sqlite_url: str) -> None:
    # The child in the same store as the parent (one atomic batch), and in another store (the
    # parent's batch waits for the child's).
    for parent_storage in (storage_url, sqlite_url):
        child_type = checked_model(storage_url, "Child")

        class Parent(ExternalBaseModel):
            label: str
            child: child_type  # type: ignore[valid-type]
            model_config = ExternalConfigDict(
                storage=parent_storage, storage_name=f"Parent{uuid4().hex[:8]}", optimistic_concurrency=True
            )

        class PlainParent(ExternalBaseModel):
            label: str
            child: child_type  # type: ignore[valid-type]
            model_config = ExternalConfigDict(storage=parent_storage, storage_name=f"Plain{uuid4().hex[:8]}")

        for parent_type in (Parent, PlainParent):
            parent: Any = parent_type(label="v1", child=child_type(title="c1"))
            reference = parent.model_dump()
            other = await child_type.load(parent.child.external_reference)
            other.body = "elsewhere"
            await other.save()
            parent.label = "v2"
            parent.child.body = "here"
            with pytest.raises(ConcurrentUpdateError) as caught:
                parent.model_dump()
            assert caught.value.id == other.external_reference.id
            stored: Any = await parent_type.load(reference)
            assert stored.label == "v1"
            assert stored.child.body == "elsewhere"


async def test_a_record_deleted_meanwhile_is_a_conflict_and_an_own_delete_a_first_save(
    storage_url: str,
) -> None:
    article_type = checked_model(storage_url)
    article = article_type(title="t")
    reference = await article.save()
    await article_type.delete(reference)
    article.body = "after the delete"
    with pytest.raises(ConcurrentUpdateError) as caught:
        await article.save()
    assert caught.value.found is None
    assert "no such record any more" in str(caught.value)
    # Deleted through the instance itself: its next save creates the record again.
    article = article_type(title="t")
    await article.save()
    await article.delete()
    await article.save()
    assert await stored_revision(storage_url, article) == 1


async def test_records_stored_before_the_option_start_at_revision_0(sqlite_url: str) -> None:
    article_type = checked_model(sqlite_url)
    name = article_type.__toast_settings__.storage_name
    backend = backend_class("sqlite")(sqlite_url)
    await backend.connect()
    now = datetime.now(UTC)
    record = StoredRecord(uuid4(), name, pydantic_core.to_json({"title": "old"}), 1, now, now)
    await backend.save_records([record])
    await backend.disconnect()
    first = await article_type.load(record.id)
    second = await article_type.load(record.id)
    assert state_of(first).revision is None
    first.body = "first"
    await first.save()
    assert await stored_revision(sqlite_url, first) == 1
    second.body = "second"
    with pytest.raises(ConcurrentUpdateError) as caught:
        await second.save()
    assert (caught.value.expected, caught.value.found) == (0, 1)


async def test_copies_are_new_records_and_revalidated_instances_the_same_one(memory_url: str) -> None:
    article_type = checked_model(memory_url)
    article = article_type(title="t")
    await article.save()
    copy = article.model_copy(update={"body": "copy"})
    await copy.save()
    assert copy.external_reference != article.external_reference
    assert await stored_revision(memory_url, copy) == 1

    class Holder(BaseModel):
        article: article_type  # type: ignore[valid-type]
        model_config = {"revalidate_instances": "always"}

    held: Any = Holder(article=article).article
    held.body = "revalidated"
    await held.save()
    assert await stored_revision(memory_url, held) == 2


async def test_models_without_the_option_pay_nothing(sqlite_url: str) -> None:
    class Plain(ExternalBaseModel):
        title: str
        model_config = ExternalConfigDict(storage=sqlite_url)

    checked = checked_model(sqlite_url)
    plain, article = Plain(title="p"), checked(title="c")
    await plain.save()
    await article.save()
    before = pydantic_toast.stats()[sqlite_url]["round_trips"]
    await plain.save()
    await article.save()
    assert pydantic_toast.stats()[sqlite_url]["round_trips"] - before == 2
    assert await stored_revision(sqlite_url, plain) is None


def test_sqlite_tables_of_older_versions_gain_the_revision_column(tmp_path: Any) -> None:
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    # The DDL of the version before revisions and the codec stage: it gains both columns.
    connection.execute(
        "CREATE TABLE external_models (id TEXT PRIMARY KEY, class_name TEXT NOT NULL, data TEXT NOT NULL, "
        "schema_version INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
        "expires_at TEXT)"
    )
    url = f"sqlite:///{path}"
    article_type = checked_model(url, compression="zlib")
    name = article_type.__toast_settings__.storage_name
    record_id = uuid4()
    now = "2025-01-01T00:00:00.000000Z"
    connection.execute(
        "INSERT INTO external_models VALUES (?, ?, ?, 1, ?, ?, NULL)",
        (str(record_id), name, '{"title":"old"}', now, now),
    )
    connection.commit()
    connection.close()
    article = article_type.model_validate({"class_name": name, "id": str(record_id)})
    assert article.title == "old"
    rival = article_type.model_validate({"class_name": name, "id": str(record_id)})
    article.body = "new " * 200
    article.model_dump()
    rival.body = "rival"
    with pytest.raises(ConcurrentUpdateError):
        rival.model_dump()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute(
            "SELECT revision, encoding, typeof(data) FROM external_models"
        ).fetchall() == [(1, "json+zlib", "blob")]
    finally:
        connection.close()
    assert article_type.model_validate({"class_name": name, "id": str(record_id)}) == article


@pytest.mark.postgresql
async def test_postgresql_tables_of_older_versions_gain_the_revision_column(postgresql_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    table = f"old_{uuid4().hex[:12]}"
    connection = await asyncpg.connect(postgresql_url)
    try:
        # The contract's DDL (DESIGN.md), from before expiry, the codec stage and revisions.
        await connection.execute(
            f"CREATE TABLE {table} (id UUID PRIMARY KEY, class_name TEXT NOT NULL, data JSONB NOT NULL, "
            "schema_version INTEGER NOT NULL DEFAULT 1, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        url = f"{postgresql_url}{'&' if '?' in postgresql_url else '?'}table={table}"
        article_type = checked_model(url, compression="zlib")
        name = article_type.__toast_settings__.storage_name
        record_id = uuid4()
        await connection.execute(
            f"INSERT INTO {table} (id, class_name, data) VALUES ($1, $2, $3)",
            record_id,
            name,
            '{"title":"old"}',
        )
        article = await article_type.load(record_id)
        assert article.title == "old"
        rival = await article_type.load(record_id)
        article.body = "new " * 200
        await article.save()
        row = await connection.fetchrow(f"SELECT revision, encoding, data, payload IS NOT NULL FROM {table}")
        assert tuple(row) == (1, "json+zlib", "null", True)
        rival.body = "rival"
        with pytest.raises(ConcurrentUpdateError):
            await rival.save()
        assert await article_type.load(record_id) == article
    finally:
        await pydantic_toast.aclose()
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()


# --------------------------------------------------------------------------- FastAPI


def build_app(storage: str) -> tuple[FastAPI, Any]:
    article_type = checked_model(storage)

    class Edit(BaseModel):
        body: str

    app = FastAPI()
    app.state.after_load = None

    @app.exception_handler(ConcurrentUpdateError)
    async def conflict(request: Request, exc: ConcurrentUpdateError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the article was changed meanwhile; reload it and apply your edit again"},
            status_code=409,
        )

    @app.get("/articles/{article_id}")
    async def read(article_id: str) -> article_type:  # type: ignore[valid-type]
        return await article_type.load(article_id)  # type: ignore[no-any-return]

    @app.put("/articles/{article_id}")
    async def edit(article_id: str, change: Edit) -> dict[str, str]:
        article = await article_type.load(article_id)
        if app.state.after_load is not None:
            await app.state.after_load()
        article.body = change.body
        await article.save()
        return {"body": article.body}

    return app, article_type


async def test_fastapi_a_put_race_answers_409_to_the_loser(storage_url: str) -> None:
    app, article_type = build_app(storage_url)
    reference = await article_type(title="t", body="v1").save()
    both_loaded = asyncio.Barrier(2)
    app.state.after_load = both_loaded.wait
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        url = f"/articles/{reference.id}"
        answers = await asyncio.gather(
            client.put(url, json={"body": "first"}), client.put(url, json={"body": "second"})
        )
        assert sorted(answer.status_code for answer in answers) == [200, 409]
        [winner] = [answer.json()["body"] for answer in answers if answer.status_code == 200]
        [loser] = [answer.json() for answer in answers if answer.status_code == 409]
        assert "reload" in loser["detail"]
        assert (await article_type.load(reference)).body == winner
        # A GET returns the model (a dump) and writes nothing: a later PUT is not refused.
        app.state.after_load = None
        assert (await client.get(url)).status_code == 200
        assert (await client.put(url, json={"body": "third"})).status_code == 200
