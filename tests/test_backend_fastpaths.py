"""The network backends' fast paths give exactly what their general paths give, and fall back.

PostgreSQL: a batch load of one class reads timestamps as integers (server 14+), and falls back
to the general query for mixed classes, an older server, and timestamps with no integer or no
datetime form. Redis: decoding reuses the previous value's metadata only when its tail is the
same bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from fixtures.postgresql import connected_backend, sql
from pydantic_toast import StorageConnectionError, StoredDataError
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.postgresql import PostgreSQLBackend
from pydantic_toast.backends.redis._values import _decode, _encode


@pytest.fixture
async def pg_backend(postgresql_table_url: str) -> AsyncIterator[PostgreSQLBackend]:
    async with connected_backend(postgresql_table_url) as instance:
        yield instance


def _record(class_name: str, moment: datetime, **changes: object) -> StoredRecord:
    fields: dict[str, object] = {
        "id": uuid4(),
        "class_name": class_name,
        "payload": b'{"n": 1}',
        "schema_version": 2,
        "created_at": moment,
        "updated_at": moment,
    }
    fields.update(changes)
    return StoredRecord(**fields)  # type: ignore[arg-type]


async def _general(backend: PostgreSQLBackend, keys: list[tuple[UUID, str]]) -> list[StoredRecord | None]:
    """What the general query reads for `keys`."""
    lean, backend._load_class = backend._load_class, None
    try:
        return await backend.load_records(keys)
    finally:
        backend._load_class = lean


@pytest.mark.postgresql
async def test_postgresql_one_class_batch_load_equals_the_general_query(
    pg_backend: PostgreSQLBackend,
) -> None:
    assert pg_backend._load_class is not None, "the test server is PostgreSQL 14 or later"
    shared = datetime(2026, 11, 27, 19, 20, 1, 123457, tzinfo=UTC)
    records = [
        _record("A", shared),
        _record("A", shared, updated_at=shared + timedelta(microseconds=1), revision=3),
        _record("A", datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        _record("A", datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
        _record("A", datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        _record("A", shared, payload=b"\x00compressed", encoding="zlib"),
        _record("A", shared, payload=b'{"s": "\\u0000"}'),
        _record("A", shared, expires_at=shared + timedelta(days=3650)),
        _record("A", shared, expires_at=shared - timedelta(days=1)),
    ]
    other = _record("B", shared)
    await pg_backend.save_records([*records, other])
    keys = [r.key for r in records]
    keys += [(other.id, "A"), (uuid4(), "A"), records[0].key]
    loaded = await pg_backend.load_records(keys)
    assert loaded == await _general(pg_backend, keys)
    assert loaded[:8] == records[:8]
    assert loaded[8:11] == [None, None, None]
    assert loaded[11] == records[0]
    assert all(r is None or r.created_at.tzinfo is UTC for r in loaded)


@pytest.mark.postgresql
async def test_postgresql_batch_load_of_mixed_classes_takes_the_general_query(
    pg_backend: PostgreSQLBackend,
) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    a, b = _record("A", moment), _record("B", moment)
    await pg_backend.save_records([a, b])
    keys = [a.key, b.key, (a.id, "B")]
    assert await pg_backend.load_records(keys) == [a, b, None]


_MOMENT = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


async def _two_saved_then(backend: PostgreSQLBackend, url: str, assignment: str) -> list[StoredRecord]:
    """Two records of one class saved together, then `assignment` made to the second one in SQL."""
    records = [_record("A", _MOMENT), _record("A", _MOMENT)]
    await backend.save_records(records)
    await sql(url, f"UPDATE {backend._settings.qualified} SET {assignment} WHERE id = $1", records[1].id)
    return records


@pytest.mark.postgresql
@pytest.mark.parametrize("stored", ["infinity", "-infinity"])
async def test_postgresql_batch_load_falls_back_for_timestamps_without_an_integer(
    pg_backend: PostgreSQLBackend, postgresql_table_url: str, stored: str
) -> None:
    records = await _two_saved_then(pg_backend, postgresql_table_url, f"updated_at = '{stored}'")
    keys = [r.key for r in records]
    loaded = await pg_backend.load_records(keys)
    assert loaded == await _general(pg_backend, keys)
    assert loaded[0] == records[0]
    assert loaded[1] is not None
    assert loaded[1].updated_at != _MOMENT


@pytest.mark.postgresql
async def test_postgresql_batch_load_falls_back_for_timestamps_past_datetime(
    pg_backend: PostgreSQLBackend, postgresql_table_url: str
) -> None:
    """A year past 9999 has an integer but no datetime: the general query decides what happens."""
    records = await _two_saved_then(
        pg_backend, postgresql_table_url, "created_at = '20000-01-01 00:00:00+00'"
    )
    keys = [r.key for r in records]
    with pytest.raises(StorageConnectionError) as lean:
        await pg_backend.load_records(keys)
    with pytest.raises(StorageConnectionError) as general:
        await _general(pg_backend, keys)
    assert str(lean.value) == str(general.value)


@pytest.mark.postgresql
async def test_postgresql_loads_read_updated_at_only_where_it_differs(pg_backend: PostgreSQLBackend) -> None:
    """The server sends NULL for an updated_at equal to created_at, single load or batch, general
    query or lean: each gives back the record as saved either way."""
    same = _record("A", _MOMENT)
    later = _record("A", _MOMENT, updated_at=_MOMENT + timedelta(seconds=5))
    await pg_backend.save_records([same, later])
    for saved in (same, later):
        assert await pg_backend.load_records([saved.key]) == [saved]
    keys = [same.key, later.key]
    assert await pg_backend.load_records(keys) == [same, later]
    assert await _general(pg_backend, keys) == [same, later]


def test_postgresql_batch_records_are_built_as_their_constructor_builds_them() -> None:
    """The batch loader sets a StoredRecord's nine fields itself, without the Python frame of its
    __init__: that holds only while these are all its fields and its __init__ just stores them.
    (Records it built are compared with constructed ones above, every field read.)"""
    names = [field.name for field in dataclasses.fields(StoredRecord)]
    assert names == [
        "id",
        "class_name",
        "payload",
        "schema_version",
        "created_at",
        "updated_at",
        "expires_at",
        "encoding",
        "revision",
    ]
    assert StoredRecord.__slots__ == tuple(names)
    assert not hasattr(StoredRecord, "__post_init__")


# --------------------------------------------------------------------------- Redis values


def _full_parse(id: UUID, class_name: str, value: bytes) -> StoredRecord:
    """What the envelope parse gives for a value, without the Redis decoder's shortcuts (with the
    data as the decoder slices it: the parse re-encodes it)."""
    envelope = json.loads(value)
    parsed = StoredRecord.from_envelope(id, class_name, envelope)
    assert json.loads(parsed.payload) == envelope["data"]
    parsed.payload = value[len(b'{"data":') : value.rfind(b',"schema_version":')]
    return parsed


def test_redis_decode_reuses_a_tail_only_when_it_is_byte_for_byte_the_same() -> None:
    moment = datetime(2026, 11, 27, 19, 20, 1, 123457, tzinfo=UTC)
    later = moment + timedelta(seconds=1)
    records = [
        _record("A", moment),
        _record("A", moment, payload=b'{"n": 2, "schema_version": 9}'),
        _record("A", moment, updated_at=later),
        _record("A", moment, updated_at=later, revision=4),
        _record("A", moment, updated_at=later, revision=5),
        _record("A", moment, schema_version=3),
        _record("A", later),
        _record("A", moment),
    ]
    for record in records + records[::-1]:
        value = _encode(record)
        decoded = _decode(record.id, "A", value, b"key")
        assert decoded == record
        assert decoded == _full_parse(record.id, "A", value)


def test_redis_decode_checks_every_value_before_reusing_a_tail() -> None:
    """A value with the previous value's tail but no object before it is not decoded by the tail."""
    moment = datetime(2026, 11, 27, 19, 20, 1, 123457, tzinfo=UTC)
    record = _record("A", moment)
    value = _encode(record)
    assert _decode(record.id, "A", value, b"key") == record
    tail = value[value.rfind(b',"schema_version":') :]
    not_an_object = b'{"data":[1, {}]' + tail
    with pytest.raises(StoredDataError):
        _decode(record.id, "A", b'{"data":1}' + tail[:-1], b"key")
    decoded = _decode(record.id, "A", not_an_object, b"key")
    # Taken apart by the full parse, which re-encodes the data: not sliced by the shortcut.
    assert decoded == StoredRecord.from_envelope(record.id, "A", json.loads(not_an_object))
    assert decoded.payload == b"[1,{}]"
