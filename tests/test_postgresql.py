"""The PostgreSQL backend against a real server: layout, round trips, options, NUL, concurrency.

Failure behaviour (refused, unknown host, bad password, timeouts, restarts) and SSL live in
test_postgresql_failures.py. Every test writes to a table of its own (`?table=t_<hex>`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydantic_toast
from fixtures.postgresql import connected_backend, sql, with_options
from models import every_type_model, every_type_values, wide_model, wide_values
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageConnectionError,
    StorageValidationError,
    stats,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.backends.postgresql import (
    PostgreSQLBackend,
    _import_driver,
    _keep_session,
    _no_session_reset,
)

pytestmark = pytest.mark.postgresql


def sql_sync(url: str, query: str, *args: Any) -> list[Any]:
    """`sql` from a sync test: on a loop of its own, since no loop runs in this thread."""
    return asyncio.run(sql(url, query, *args))


@pytest.fixture
def table(postgresql_tables: list[str]) -> str:
    """A table name of the test's own, dropped when the session ends."""
    name = f"t_{uuid4().hex[:16]}"
    postgresql_tables.append(name)
    return name


@pytest.fixture
def pg_url(postgresql_url: str, table: str) -> str:
    return with_options(postgresql_url, table=table)


@pytest.fixture
async def backend(pg_url: str) -> AsyncIterator[PostgreSQLBackend]:
    async with connected_backend(pg_url) as instance:
        yield instance


def user_model(
    storage: str,
    storage_name: str = "User",
    *,
    schema_version: int = 1,
    ttl: timedelta | None = None,
    compression: str | None = None,
    compression_min_size: int = 512,
) -> Any:
    class User(ExternalBaseModel):
        name: str
        age: int = 0

        model_config = ExternalConfigDict(
            storage=storage,
            storage_name=storage_name,
            schema_version=schema_version,
            ttl=ttl,
            compression=compression,
            compression_min_size=compression_min_size,
        )

    return User


def record(class_name: str, data: bytes, id: UUID | None = None, **fields: Any) -> StoredRecord:
    now = datetime.now(UTC)
    values: dict[str, Any] = {"schema_version": 1, "created_at": now, "updated_at": now} | fields
    return StoredRecord(id=id or uuid4(), class_name=class_name, payload=data, **values)


# ---------------------------------------------------------------------- round trips


def test_every_field_type_round_trips_through_sync_dump_and_validate(pg_url: str) -> None:
    model = every_type_model(pg_url)
    original = model(**every_type_values())

    reference = original.model_dump()
    restored = model.model_validate(reference)

    assert restored == original
    assert restored.when.utcoffset() == original.when.utcoffset()
    [row] = sql_sync(pg_url, f'SELECT class_name, jsonb_typeof(data) FROM "{table_of(pg_url)}"')
    # A NUL anywhere in the data puts the record in the payload column, with null data.
    assert tuple(row) == ("EveryType", "null" if "\x00" in original.text else "object")


async def test_model_with_120_fields_round_trips_through_the_async_api(pg_url: str) -> None:
    model = wide_model(pg_url)
    original = model(**wide_values())

    reference = await original.save()

    assert await model.load(reference) == original
    [row] = await sql(pg_url, f"SELECT jsonb_typeof(data), data->>'field_001' FROM \"{table_of(pg_url)}\"")
    assert tuple(row) == ("object", "1")  # plain rows stay queryable with jsonb operators


def test_postgres_scheme_alias_works(postgresql_url: str, table: str) -> None:
    url = with_options(postgresql_url.replace("postgresql://", "postgres://", 1), table=table)
    model = user_model(url)
    user = model(name="alias")
    assert model.model_validate(user.model_dump()) == user


async def test_rows_carry_schema_version_and_timestamps(pg_url: str) -> None:
    model = user_model(pg_url, schema_version=3)
    started = datetime.now(UTC)
    reference = await model(name="v3").save()

    [row] = await sql(
        pg_url,
        "SELECT id, class_name, schema_version, created_at, updated_at, expires_at "
        f'FROM "{table_of(pg_url)}"',
    )

    assert (row["id"], row["class_name"], row["schema_version"]) == (reference.id, "User", 3)
    assert started - timedelta(seconds=5) < row["created_at"] <= row["updated_at"] < started + timedelta(60)
    assert row["expires_at"] is None


async def test_contract_methods_store_the_envelope(backend: PostgreSQLBackend) -> None:
    id = uuid4()
    envelope = {
        "data": {"name": "Ada", "nested": {"list": [1, 2.5, None, "\x00"]}},
        "schema_version": 2,
        "created_at": "2025-12-23T00:00:00.000000Z",
        "updated_at": "2025-12-23T00:05:00.000000Z",
    }
    await backend.save(id, "Env", envelope)
    assert await backend.load(id, "Env") == envelope
    assert await backend.load(uuid4(), "Env") is None


async def test_a_closed_backend_says_so(pg_url: str) -> None:
    # Idempotent connect/disconnect: the conformance suite (tests/test_conformance.py).
    backend = PostgreSQLBackend(pg_url)
    await backend.connect()
    await backend.disconnect()
    with pytest.raises(StorageConnectionError, match="closed"):
        await backend.load_records([(uuid4(), "User")])


def test_a_backend_used_from_another_event_loop_says_so(pg_url: str) -> None:
    backend = PostgreSQLBackend(pg_url)
    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(backend.connect())
        with pytest.raises(StorageConnectionError, match="another event loop"):
            asyncio.run(backend.load_records([(uuid4(), "User")]))
        home.run_until_complete(backend.disconnect())
    finally:
        home.close()


# ---------------------------------------------------------------------- batches


async def test_batches_take_one_round_trip_each_way(pg_url: str) -> None:
    model = user_model(pg_url)
    users = [model(name=f"user {i}", age=i) for i in range(200)]
    before = stats().get(pg_url, {}).get("round_trips", 0)

    references = await model.save_many(users)
    middle = stats()[pg_url]["round_trips"]
    loaded = await model.load_many(references)

    assert loaded == users
    assert middle - before == 1
    assert stats()[pg_url]["round_trips"] - middle == 1


async def test_calls_leave_no_session_state_so_the_pool_skips_its_reset_round_trip(
    backend: PostgreSQLBackend,
) -> None:
    """asyncpg resets a connection it takes back (advisory locks, cursors, LISTEN, RESET ALL), one
    more round trip per call. The backend skips that, which is only right while its statements
    leave none of these behind: every kind of call runs first, then the session is inspected. (The
    unnamed portal is this query's own; asyncpg's type introspection sets `jit` back to its value.)"""
    first, second = record("A", b'{"n": 1}'), record("A", b'{"n": 2}', revision=1)
    await backend.save_records([first])
    await backend.save_records([first, record("A", b"\x00zipped", encoding="zlib")])
    assert await backend.save_records_checked([second]) == []
    assert (await backend.load_records([first.key]))[0] == first
    assert len(await backend.load_records([first.key, second.key])) == 2
    await backend.scan_records(cursor=None, limit=10)
    await backend.find_record(first.id)
    await backend.purge_expired()
    assert await backend.delete(first.id, "A")
    pool = backend._pool
    async with pool.acquire() as connection:
        left = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
            "(SELECT count(*) FROM pg_cursors WHERE name <> ''), "
            "(SELECT count(*) FROM pg_listening_channels()), "
            "(SELECT count(*) FROM pg_settings WHERE source = 'session' AND setting <> reset_val), "
            "pg_current_xact_id_if_assigned()"
        )
        assert tuple(left) == (0, 0, 0, 0, None)
        await connection.execute("SET application_name = 'left behind'")
    if not _no_session_reset(_import_driver()):
        return  # asyncpg 0.29 resets every connection it takes back
    # The same connection comes back (asyncpg's pool is last in, first out), not reset.
    async with pool.acquire() as connection:
        assert await connection.fetchval("SHOW application_name") == "left behind"


def test_the_pool_resets_connections_where_asyncpg_cannot_skip_it() -> None:
    """asyncpg before 0.30 has no `reset` argument: its pool then resets as it always did."""

    def create_pool(dsn: str, *, min_size: int = 10, max_size: int = 10) -> None: ...

    older = types.SimpleNamespace(create_pool=create_pool)
    assert _no_session_reset(older) == {}  # type: ignore[arg-type]
    driver = _import_driver()
    major, minor = (int(part) for part in driver.__version__.split(".")[:2])
    expected = {"reset": _keep_session} if (major, minor) >= (0, 30) else {}
    assert _no_session_reset(driver) == expected


async def test_concurrent_saves_of_one_record_last_write_wins(pg_url: str) -> None:
    model = user_model(pg_url)
    reference = await model(name="start").save()
    [before] = await sql(pg_url, f'SELECT created_at FROM "{table_of(pg_url)}"')

    async def writer(i: int) -> None:
        copy = await model.load(reference)
        copy.name, copy.age = f"writer {i}", i
        await copy.save()

    await asyncio.gather(*(writer(i) for i in range(40)))

    final = await model.load(reference)
    assert final.name == f"writer {final.age}"  # one writer's whole record, never a mix
    [row] = await sql(pg_url, f'SELECT created_at, count(*) OVER () FROM "{table_of(pg_url)}"')
    assert tuple(row) == (before["created_at"], 1)
    final.name = "settled"
    await final.save()
    assert (await model.load(reference)).name == "settled"


async def test_many_processes_starting_at_once_create_the_table_once(postgresql_url: str, table: str) -> None:
    url = with_options(postgresql_url, table=table, schema=f"s_{table}")
    backends = [PostgreSQLBackend(url) for _ in range(8)]
    try:
        await asyncio.gather(*(b.connect() for b in backends))
        await asyncio.gather(*(b.save_records([record("User", b"{}")]) for b in backends))
    finally:
        await asyncio.gather(*(b.disconnect() for b in backends))
        await sql(postgresql_url, f'DROP SCHEMA IF EXISTS "s_{table}" CASCADE')


# ---------------------------------------------------------------------- NUL and any text


@pytest.fixture(scope="module")
def text_model(postgresql_url: str, postgresql_tables: list[str]) -> Any:
    table = f"t_{uuid4().hex[:16]}"
    postgresql_tables.append(table)

    class Texts(ExternalBaseModel):
        text: str
        keyed: dict[str, str]
        raw: bytes
        items: list[str]

        # bytes as UTF-8 text (not the default base64) so a zero byte becomes \u0000 in JSON.
        model_config = ExternalConfigDict(
            storage=with_options(postgresql_url, table=table), ser_json_bytes="utf8", val_json_bytes="utf8"
        )

    return Texts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text() | st.text().map(lambda s: s + "\x00" + s),
    key=st.text(max_size=8),
    raw=st.text(max_size=20).map(str.encode),
    items=st.lists(st.text(alphabet=st.sampled_from("\x00\\u0\"'{}")), max_size=4),
)
def test_strings_holding_any_character_round_trip_exactly(
    text_model: Any, text: str, key: str, raw: bytes, items: list[str]
) -> None:
    original = text_model(text=text, keyed={key: text}, raw=raw, items=items)
    restored = text_model.model_validate(original.model_dump())
    assert restored == original


@pytest.fixture(scope="module")
def number_model(postgresql_url: str, postgresql_tables: list[str]) -> Any:
    table = f"t_{uuid4().hex[:16]}"
    postgresql_tables.append(table)

    class Numbers(ExternalBaseModel):
        floats: list[float]
        ints: list[int]

        model_config = ExternalConfigDict(storage=with_options(postgresql_url, table=table))

    return Numbers


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(floats=st.lists(st.floats(), max_size=5), ints=st.lists(st.integers(), max_size=5))
def test_numbers_survive_jsonb_normalization(number_model: Any, floats: list[float], ints: list[int]) -> None:
    # jsonb rewrites 1e300 as 1000...0 and drops -0.0's sign; typed fields still get their values.
    original = number_model(floats=floats, ints=ints)
    restored = number_model.model_validate(original.model_dump())
    assert restored.ints == ints
    assert [repr(x) for x in restored.floats] == [repr(abs(x) if x == 0 else x) for x in floats]


async def test_nul_records_go_to_the_payload_column_and_others_stay_objects(
    backend: PostgreSQLBackend, pg_url: str
) -> None:
    nul, escaped, plain = (
        record("T", b'{"s":"a\\u0000b"}'),
        record("T", b'{"s":"\\\\u0000"}'),  # a backslash then "u0000": no NUL, still exact
        record("T", b'{"s":"plain"}'),
    )
    await backend.save_records([nul, escaped, plain])

    found = await backend.load_records([nul.key, escaped.key, plain.key])

    assert [r.payload if r else None for r in found] == [
        nul.payload,
        escaped.payload,
        b'{"s": "plain"}',
    ]
    rows = await sql(pg_url, f'SELECT id, jsonb_typeof(data), payload, encoding FROM "{table_of(pg_url)}"')
    assert {row[0]: tuple(row[1:]) for row in rows} == {
        nul.id: ("null", nul.payload, "json"),
        escaped.id: ("null", escaped.payload, "json"),
        plain.id: ("object", None, "json"),
    }


async def test_compressed_payloads_are_bytea_and_json_stays_queryable(
    backend: PostgreSQLBackend, pg_url: str
) -> None:
    packed = record("T", zlib.compress(b'{"s":"x"}'), encoding="json+zlib")
    plain = record("T", b'{"s":"plain"}')
    await backend.save_records([packed])
    await backend.save_records([plain])
    rows = await sql(pg_url, f"SELECT id, data->>'s', payload, encoding FROM \"{table_of(pg_url)}\"")
    assert {row[0]: tuple(row[1:]) for row in rows} == {
        packed.id: (None, packed.payload, "json+zlib"),
        plain.id: ("plain", None, "json"),
    }
    # Saving JSON over a compressed record clears its payload column.
    await backend.save_records([record("T", b'{"s":"now json"}', id=packed.id)])
    [row] = await sql(
        pg_url, f"SELECT data->>'s', payload, encoding FROM \"{table_of(pg_url)}\" WHERE id = $1", packed.id
    )
    assert tuple(row) == ("now json", None, "json")


OLD_DDL = (
    'CREATE TABLE "{table}" (id UUID PRIMARY KEY, class_name TEXT NOT NULL, data JSONB NOT NULL, '
    "schema_version INTEGER NOT NULL DEFAULT 1, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
    "updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), expires_at TIMESTAMPTZ)"
)
"""The table the version before the codec stage created."""


async def test_a_table_of_the_previous_version_gains_the_codec_columns_in_place(
    postgresql_url: str, table: str
) -> None:
    await sql(postgresql_url, OLD_DDL.format(table=table))
    plain, wrapped = uuid4(), uuid4()
    # As that version wrote them: JSON as an object, JSON holding a NUL escape as a jsonb string.
    await sql(
        postgresql_url,
        f"INSERT INTO \"{table}\" (id, class_name, data) VALUES ($1, 'User', $2::jsonb), "
        "($3, 'User', to_jsonb($4::text))",
        plain,
        '{"name": "old", "age": 1}',
        wrapped,
        '{"name":"nul \\u0000 inside","age":2}',
    )
    url = with_options(postgresql_url, table=table)
    model = user_model(url)
    packed_model = user_model(url, "Packed", compression="zlib", compression_min_size=0)
    try:
        assert (await model.load(plain)).name == "old"
        assert (await model.load(wrapped)).name == "nul \x00 inside"
        columns = await sql(
            postgresql_url,
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = $1 AND column_name IN ('payload', 'encoding') ORDER BY column_name",
            table,
        )
        assert [tuple(c) for c in columns] == [
            ("encoding", "text", "NO", "'json'::text"),
            ("payload", "bytea", "YES", None),
        ]
        packed = packed_model(name="compressed " * 50, age=3)
        reference = await packed.save()
        assert await packed_model.load(reference) == packed
        [row] = await sql(
            postgresql_url, f'SELECT jsonb_typeof(data), encoding FROM "{table}" WHERE id = $1', reference.id
        )
        assert tuple(row) == ("null", "json+zlib")
        # A process of the previous version updating the compressed record writes `data` only
        # (its upsert knows no other columns); that update is what a reader gets.
        await sql(
            postgresql_url,
            f"INSERT INTO \"{table}\" AS t (id, class_name, data) VALUES ($1, 'Packed', $2::jsonb) "
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
            reference.id,
            '{"name": "old writer", "age": 4}',
        )
        assert (await packed_model.load(reference)).name == "old writer"
    finally:
        await pydantic_toast.aclose()


# ---------------------------------------------------------------------- options and layout


async def test_schema_and_table_options_create_a_quoted_qualified_table(postgresql_url: str) -> None:
    schema, table = f"S_{uuid4().hex[:8]}", f"Models_{uuid4().hex[:8]}"  # mixed case: must be quoted
    url = with_options(postgresql_url, schema=schema, table=table, min_size="0", max_size="2")
    model = user_model(url)
    try:
        user = model(name="in a schema")
        assert await model.load(await user.save()) == user
        rows = await sql(
            postgresql_url,
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
            schema,
            table,
        )
        assert {r[0] for r in rows} == {f"idx_{table}_class_name", f"idx_{table}_expires_at", f"{table}_pkey"}
    finally:
        await pydantic_toast.aclose()
        await sql(postgresql_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_contract_table_without_expires_at_is_upgraded_in_place(
    postgresql_url: str, table: str
) -> None:
    await sql(
        postgresql_url,
        f'CREATE TABLE "{table}" (id UUID PRIMARY KEY, class_name TEXT NOT NULL, data JSONB NOT NULL, '
        "schema_version INTEGER NOT NULL DEFAULT 1, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
        "updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    old = uuid4()
    await sql(
        postgresql_url,
        f'INSERT INTO "{table}" (id, class_name, data) VALUES ($1, \'User\', \'{{"name": "old"}}\')',
        old,
    )
    model = user_model(with_options(postgresql_url, table=table))

    assert (await model.load(old)).name == "old"
    [column] = await sql(
        postgresql_url,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = $1 AND column_name = 'expires_at'",
        table,
    )
    assert column[0] == "timestamp with time zone"


async def test_expired_rows_are_never_returned_and_can_be_purged(
    pg_url: str, backend: PostgreSQLBackend
) -> None:
    model = user_model(pg_url, ttl=timedelta(hours=1))
    reference = await model(name="short-lived").save()
    [row] = await sql(pg_url, f'SELECT expires_at - updated_at FROM "{table_of(pg_url)}"')
    assert row[0] == timedelta(hours=1)
    assert (await model.load(reference)).name == "short-lived"

    await sql(pg_url, f"UPDATE \"{table_of(pg_url)}\" SET expires_at = now() - interval '1 second'")

    with pytest.raises(RecordNotFoundError):
        await model.load(reference)
    assert await backend.load_records([(reference.id, "User"), (reference.id, "User")]) == [None, None]
    assert await backend.purge_expired() == 1
    assert await sql(pg_url, f'SELECT 1 FROM "{table_of(pg_url)}"') == []


async def test_application_name_and_server_options_reach_the_server(pg_url: str) -> None:
    name = f"toast_{uuid4().hex[:8]}"
    url = with_options(
        pg_url, application_name=name, options="-c statement_timeout=12345", connect_timeout="5"
    )
    backend = PostgreSQLBackend(url)
    await backend.connect()
    try:
        rows = await sql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
        assert rows[0][0] >= 1
        assert await backend._pool.fetchval("SHOW statement_timeout") == "12345ms"
    finally:
        await backend.disconnect()


async def test_pool_bounds_and_statement_cache_off_for_pgbouncer(pg_url: str) -> None:
    name = f"toast_{uuid4().hex[:8]}"
    url = with_options(pg_url, application_name=name, min_size="2", max_size="2", statement_cache_size="0")
    model = user_model(url)
    users = [model(name=f"u{i}") for i in range(20)]

    references = await asyncio.gather(*(user.save() for user in users))
    assert await asyncio.gather(*(model.load(reference) for reference in references)) == users

    [row] = await sql(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name)
    assert row[0] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table": "bad-name"}, "not a plain identifier"),
        ({"table": 'x"; DROP TABLE users; --'}, "not a plain identifier"),
        ({"schema": "a.b"}, "not a plain identifier"),
        ({"tabel": "typo"}, "unknown postgresql option"),
        ({"keepalives": "1"}, "unknown postgresql option"),
        ({"sslmode": "required"}, "must be one of"),
        ({"min_size": "5", "max_size": "2"}, "exceeds max_size"),
        ({"command_timeout": "0"}, "waiting forever"),
        ({"connect_timeout": "-1"}, "must be a number"),
        ({"statement_cache_size": "lots"}, "must be an integer"),
    ],
)
def test_bad_options_are_refused_at_class_definition(options: dict[str, str], message: str) -> None:
    url = with_options("postgresql://app:s3cret-sentinel@db.example:5432/app", **options)
    with pytest.raises(StorageValidationError, match=message) as caught:
        user_model(url, f"Bad{uuid4().hex}")
    assert "s3cret-sentinel" not in str(caught.value)
    assert "User" in str(caught.value)  # the class is named


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:secret@db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
        "postgresql://app@db/app?schema=toast&table=models&max_size=20&command_timeout=5",
        "postgres://app@db/app?statement_cache_size=0&application_name=worker&connect_timeout=2.5",
        "postgresql:///app?host=/var/run/postgresql",
        "postgresql://app@/app?host=h1,h2&port=5432,5433&target_session_attrs=read-write",
        "postgresql://app@db/app?options=-c%20statement_timeout%3D5000",
    ],
)
def test_documented_urls_are_accepted_at_class_definition(url: str) -> None:
    user_model(url, f"Doc{uuid4().hex}")


@pytest.mark.parametrize("secret", ["password", "sslpassword"])
def test_secrets_in_the_query_string_are_masked_in_option_errors(secret: str) -> None:
    url = f"postgresql://app@db.example/app?{secret}=q-sentinel-secret&table=bad-name"
    with pytest.raises(StorageValidationError, match="not a plain identifier") as caught:
        user_model(url, f"Bad{uuid4().hex}")
    assert "q-sentinel-secret" not in str(caught.value)
    assert "q-sentinel-secret" not in repr(PostgreSQLBackend(url.replace("bad-name", "good")))


def test_the_module_imports_without_asyncpg_and_connect_names_the_extra() -> None:
    code = (
        "import sys, asyncio\n"
        "sys.modules['asyncpg'] = None\n"
        "from pydantic_toast.backends.postgresql import PostgreSQLBackend\n"
        "from pydantic_toast import MissingDependencyError\n"
        "backend = PostgreSQLBackend('postgresql://u@localhost/db')\n"
        "try:\n"
        "    asyncio.run(backend.connect())\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'pydantic-toast[postgresql]'" in result.stdout


def table_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["table"]
