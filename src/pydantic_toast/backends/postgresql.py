"""PostgreSQL through asyncpg (`pip install 'pydantic-toast[postgresql]'`); see docs/backends/postgresql.md.

    postgresql://[user[:password]@][host][:port][/database][?param=value&...]     (or postgres://)

Query parameters (`PostgreSQLOptions` below) are either libpq connection parameters, handed to
asyncpg unchanged (`sslmode`, `sslrootcert`, `application_name`, ...), or this library's own
options (`table`, `schema`, pool sizes, timeouts). Anything else is refused when the model class
is defined, so a typo never reaches the server.

Layout: the contract's table (DESIGN.md) plus a nullable `expires_at TIMESTAMPTZ` for `ttl`, a
nullable `payload BYTEA` and `encoding TEXT NOT NULL DEFAULT 'json'` (the codec stage's tag), and a
nullable `revision BIGINT` (optimistic concurrency; NULL counts as revision 0). A
"json" record's text goes to the server cast to `jsonb` and comes back as text, so the data is
never parsed or re-serialized in Python, and stays searchable with jsonb operators.

Payloads `jsonb` cannot hold go to `payload` as bytes, with JSON `null` in `data` (model data is
always an object, so that is unambiguous): other encodings (compressed bytes), and JSON text
holding a `\\u0000` escape, which `jsonb` refuses inside strings. Rows written before the codec
stage hold the latter as a jsonb *string* wrapping the JSON text; they are still read (`data #>>
'{}'`). A non-null `data` is the record whatever `encoding` says: a process of an earlier version
updating a compressed record writes `data` and leaves the other two columns alone.

asyncpg is imported by `connect()`, never at module import, so the core works without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import operator
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlencode, urlsplit
from uuid import UUID

from pydantic import Field, model_validator

from .. import observability, runtime
from ..exceptions import MissingDependencyError, StorageConnectionError, StorageValidationError
from ..url import StorageURL, mask_secrets
from ._errors import ErrorRow, ErrorTable, map_driver_errors
from ._options import BackendOptions, Identifier, secret
from .base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
    check_revision,
    last_per_id,
    refuse_other_class,
)

__all__ = ["PostgreSQLBackend"]

T = TypeVar("T")

_INSTALL_HINT = "pip install 'pydantic-toast[postgresql]'"
_CLOSE_TIMEOUT = 5.0
# While the server has no free connection slot, a call tries again after a pause growing from
# 10 ms to 250 ms (with jitter): a pooled connection released meanwhile is reused at once, and a
# saturated server gets a few connection attempts per second per waiting call, not a storm.
_FULL_PAUSE_BASE = 0.01
_FULL_PAUSE_CAP = 0.25
# The last attempt starts at least this long before the call's deadline, so that the caller
# gets the precise error rather than a bare timeout even when a connection attempt is slow.
_FULL_MARGIN = 0.25

_NUL_ESCAPE = b"\\u0000"
# Which of `data` and `payload` holds the record is decided in Python (`_content`), from the first
# character of the text, not by `CASE jsonb_typeof(data)` on the server: that reads (detoasts) a
# large `data` value once more per CASE (a 5 MB load took 1.3-1.4x hand-written code). `encoding`
# only comes back with a payload: a JSON row sends no text for it.
_PAYLOAD = "payload, CASE WHEN payload IS NOT NULL THEN encoding END"
_COLUMNS = (
    f"id, class_name, data::text, schema_version, created_at, updated_at, expires_at, {_PAYLOAD}, revision"
)
_LIVE = "(expires_at IS NULL OR expires_at > now())"
# A batch's `data` text as jsonb, or JSON null where the record goes to `payload` as bytes.
_INPUT_DATA = "COALESCE(data::jsonb, 'null'::jsonb)"
# A timestamp as microseconds since the epoch, exact from PostgreSQL 14 on (`extract` returns
# numeric; before, float8). asyncpg builds a datetime per timestamptz value at ~6,000
# instructions; the records of a batch mostly share their timestamps (one save_many, one `now`),
# so a batch load converts each distinct value once. 'infinity' (and a year past 292,000)
# fails the cast: the general query reads such rows.
_MICROS = "(extract(epoch from {0}) * 1000000)::int8"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A load's `updated_at`, or NULL where it is `created_at` (a record saved once): the reader then
# reuses the created_at it has, and neither side converts the same instant twice.
_UPDATED = "CASE WHEN updated_at = created_at THEN NULL ELSE {0} END"
_IDS = "id = ANY($1::uuid[])"


_DRIVER = "libpq"


def _libpq(description: str, *, hidden: bool = False) -> Any:
    """A libpq connection parameter: asyncpg receives it unchanged (`hidden`: a secret)."""
    return Field(
        None, description=description, json_schema_extra={_DRIVER: True, **(secret() if hidden else {})}
    )


class PostgreSQLOptions(BackendOptions):
    """Every query option of a postgresql:// URL: this library's own, then libpq's that asyncpg takes.

    Other libpq parameters (keepalives, client_encoding...) would reach the server as unknown
    settings and fail at connect, so they are not declared: refused up front instead.
    """

    backend = "postgresql"

    table: Identifier = Field("external_models", description="table name, a plain identifier")
    # `schema` would shadow a BaseModel attribute: the field has another name, the URL keeps `schema`.
    schema_name: Identifier | None = Field(
        None, alias="schema", description="schema of the table, a plain identifier; created if missing"
    )
    min_size: int = Field(0, ge=0, description="connections kept open while idle")
    max_size: int = Field(10, ge=1, description="most connections one pool opens")
    command_timeout: float = Field(
        30.0, gt=0, description="seconds one statement may take; waiting forever is not supported"
    )
    statement_cache_size: int = Field(100, ge=0, description="prepared statements kept per connection")
    # A libpq name, but read here: asyncpg would send it to the server as a setting.
    connect_timeout: float = Field(
        10.0, gt=0, description="seconds to wait for a connection; waiting forever is not supported"
    )

    host: str | None = _libpq("server host name(s) or socket directory")
    port: str | None = _libpq("server port(s)")
    dbname: str | None = _libpq("database name")
    database: str | None = _libpq("database name")
    user: str | None = _libpq("user name")
    password: str | None = _libpq("password", hidden=True)
    passfile: str | None = _libpq("password file")
    service: str | None = _libpq("service name")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = _libpq(
        "TLS mode"
    )
    sslrootcert: str | None = _libpq("CA certificate file")
    sslcert: str | None = _libpq("client certificate file")
    sslkey: str | None = _libpq("client key file")
    sslcrl: str | None = _libpq("certificate revocation list file")
    sslpassword: str | None = _libpq("client key password", hidden=True)
    sslnegotiation: str | None = _libpq("TLS negotiation")
    ssl_min_protocol_version: str | None = _libpq("lowest TLS version")
    ssl_max_protocol_version: str | None = _libpq("highest TLS version")
    target_session_attrs: str | None = _libpq("required server role")
    krbsrvname: str | None = _libpq("Kerberos service name")
    gsslib: str | None = _libpq("GSS library")
    application_name: str | None = _libpq("name shown in pg_stat_activity")
    options: str | None = _libpq("server settings for every connection")

    @model_validator(mode="after")
    def _pool_bounds(self) -> Self:
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size={self.min_size} exceeds max_size={self.max_size}; keep min_size <= max_size"
            )
        return self

    @classmethod
    def driver_parameters(cls) -> frozenset[str]:
        """The options asyncpg receives in the DSN."""
        return frozenset(
            name
            for name, field in cls.option_fields().items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(_DRIVER)
        )


@dataclass(frozen=True, slots=True)
class _Settings:
    dsn: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    shown: str
    where: str
    options: PostgreSQLOptions = field(repr=False)

    @property
    def table(self) -> str:
        return self.options.table

    @property
    def schema(self) -> str | None:
        return self.options.schema_name

    @property
    def qualified(self) -> str:
        return f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'

    def index(self, suffix: str) -> str:
        """An index name that stays unique when the table name is long (PostgreSQL truncates at 63)."""
        name = f"idx_{self.table}_{suffix}"
        if len(name) > 63:
            digest = hashlib.sha256(self.table.encode()).hexdigest()[:8]
            name = f"idx_{self.table[: 63 - len(suffix) - 14]}_{digest}_{suffix}"
        return name


class PostgreSQLBackend(RecordStorageBackend):
    """One asyncpg pool per instance; the runtime keeps one instance per (URL, event loop)."""

    options_model = PostgreSQLOptions
    declared_capabilities = frozenset({Capability.TTL, Capability.UNIQUE_IDS})

    def __init__(self, url: str, *, create: bool = True) -> None:
        """`create=False` connects only to a table that exists, creating nothing: the CLI's
        read-only commands use it, so that a mistyped table name is an error, not a new table."""
        super().__init__(url)
        self._settings = _settings(StorageURL.parse(url))
        self._create = create
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: ModuleType | None = None
        self._retryable: tuple[type[BaseException], ...] = ()
        self._deadlock: tuple[type[BaseException], ...] = ()
        self._full: tuple[type[BaseException], ...] = ()
        table = self._settings.qualified
        # `excluded` holds the column defaults where an INSERT leaves columns out: a JSON save
        # resets payload and encoding without sending them. The revision is stored as given.
        upsert = (
            "ON CONFLICT (id) DO UPDATE SET data = excluded.data, schema_version = excluded.schema_version, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at, "
            "expires_at = excluded.expires_at, payload = excluded.payload, encoding = excluded.encoding, "
            "revision = excluded.revision WHERE t.class_name = excluded.class_name"
        )
        columns = "id, class_name, data, schema_version, created_at, updated_at, expires_at, revision"
        insert = f"INSERT INTO {table} AS t ({columns}) "
        self._save_one = f"{insert}VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8) {upsert}"
        self._save_one_bytes = (
            f"INSERT INTO {table} AS t ({columns}, payload, encoding) "
            f"VALUES ($1, $2, 'null'::jsonb, $3, $4, $5, $6, $7, $8, $9) {upsert}"
        )
        # One statement for the whole batch, all or nothing: a row whose id belongs to another
        # class is skipped by the ON CONFLICT filter, so fewer rows come back than were sent, and
        # the final cast then fails the statement, which undoes every row it wrote. (A NOT EXISTS
        # join checking every id first cost a tenth of the statement's server time at 1,000 rows.)
        # Batches of JSON records (the usual case) send no payload or encoding arrays.
        # A batch whose records share everything but id and data (one class, one `now`, no
        # expiry or the same one: what save_many of new models sends) goes as two arrays and six
        # scalars. asyncpg encodes every array element on its own, so this halves the encoding.
        self._save_many_shared = _all_or_nothing(
            f"INSERT INTO {table} AS t ({columns}) SELECT id, $3::text, data::jsonb, $4::int4, "
            "$5::timestamptz, $6::timestamptz, $7::timestamptz, $8::int8 "
            f"FROM unnest($1::uuid[], $2::text[]) AS u(id, data) {upsert}",
            "$9",
        )
        self._save_many, self._save_many_bytes = (
            _all_or_nothing(
                f"INSERT INTO {table} AS t ({columns}{names}) SELECT id, class_name, {data}, schema_version, "
                f"created_at, updated_at, expires_at, revision{names} "
                "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], "
                f"$5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::int8[]{arrays}) "
                f"AS u({columns}{names}) {upsert}",
                count,
            )
            for arrays, names, data, count in (
                ("", "", "data::jsonb", "$9"),
                (", $9::bytea[], $10::text[]", ", payload, encoding", _INPUT_DATA, "$11"),
            )
        )
        self._load_one = (
            f"SELECT data::text, schema_version, created_at, {_UPDATED.format('updated_at')}, expires_at, "
            f"{_PAYLOAD}, revision FROM {table} WHERE id = $1 AND class_name = $2 AND {_LIVE}"
        )
        # A batch load: the general query, and the one for a batch of one class (what load_many
        # sends) on a server where _MICROS is exact (set at connect). Both read the same columns,
        # in the order `_records` takes them. No `class_name = $2` filter: with it the planner scans
        # the class's index instead of the primary key (4.8 ms instead of 2.9 ms for 1,000 of 2,000
        # rows); the class is checked per row instead.
        self._load_many, self._load_class_lean = (
            f"SELECT id, class_name, data::text, schema_version, {created}, {_UPDATED.format(updated)}, "
            f"expires_at, {_PAYLOAD}, revision FROM {table} WHERE {_IDS} AND {_LIVE}"
            for created, updated in (
                ("created_at", "updated_at"),
                (_MICROS.format("created_at"), _MICROS.format("updated_at")),
            )
        )
        self._load_class: str | None = None
        # Removes an expired leftover too, but answers like a load would: was a live record there?
        self._delete = (
            f"WITH gone AS (DELETE FROM {table} WHERE id = $1 AND class_name = $2 RETURNING expires_at) "
            "SELECT count(*) FROM gone WHERE expires_at IS NULL OR expires_at > now()"
        )
        self._owners = f"SELECT id, class_name FROM {table} WHERE id = ANY($1::uuid[])"
        self._save_checked, self._revisions = _checked_statements(table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings.shown!r})"

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        _settings(url)

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        if self._pool is not None:
            return
        driver = _import_driver()
        self._driver = driver
        self._deadlock = (driver.DeadlockDetectedError,)
        self._full = (driver.TooManyConnectionsError,)
        self._retryable = (
            driver.PostgresConnectionError,
            driver.InterfaceError,
            driver.AdminShutdownError,
            driver.CrashShutdownError,
            driver.CannotConnectNowError,
            driver.DeadlockDetectedError,
            # asyncpg's protocol state machine out of step: a connection the server terminated
            # (pg_terminate_backend, an idle timeout) whose end asyncpg has not processed yet.
            driver.InternalClientError,
            ConnectionError,
        )
        settings = self._settings
        pool: Any = None
        wait = _SlotWait(settings.options.connect_timeout)
        try:
            # Every failure becomes one library error (and a cancellation stays one).
            with map_driver_errors((Exception,), lambda exc: self._error("connect", exc, waited=wait.waited)):
                async with asyncio.timeout(
                    settings.options.connect_timeout + settings.options.command_timeout
                ):
                    pool = await driver.create_pool(
                        settings.dsn,
                        min_size=settings.options.min_size,
                        max_size=settings.options.max_size,
                        command_timeout=settings.options.command_timeout,
                        statement_cache_size=settings.options.statement_cache_size,
                        timeout=settings.options.connect_timeout,
                        **_no_session_reset(driver),
                    )
                    while True:
                        try:
                            await self._prepare_table(pool)
                            break
                        except self._full:
                            pause = wait.next_pause()
                            if pause is None:
                                raise
                        await asyncio.sleep(pause)
        except BaseException:
            # No half-prepared pool may outlive this call, whatever stopped it.
            if pool is not None:
                pool.terminate()
            raise
        self._pool = pool
        self._loop = asyncio.get_running_loop()

    async def _prepare_table(self, pool: Any) -> None:
        driver = self._driver
        assert driver is not None
        races = (
            driver.UniqueViolationError,
            driver.DuplicateTableError,
            driver.DuplicateObjectError,
            driver.DuplicateSchemaError,
        )
        try:
            await self._create_table(pool)
        except races:
            # Another process created it at the same moment without our advisory lock (an older
            # version or a migration tool); everything now exists, so one more pass only checks.
            await self._create_table(pool)

    async def _create_table(self, pool: Any) -> None:
        settings = self._settings
        table = settings.qualified
        schema = f'"{settings.schema}"' if settings.schema else None
        key = int.from_bytes(
            hashlib.sha256(f"pydantic_toast:{table}".encode()).digest()[:8], "big", signed=True
        )
        async with pool.acquire() as connection, connection.transaction():
            # Serializes concurrent first starts: CREATE ... IF NOT EXISTS alone can still fail
            # with a unique violation on pg_type when two sessions create the same table.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", key)
            # Checked before creating anything, so that a role without CREATE privilege can use
            # tables a DBA prepared (IF NOT EXISTS still checks the privilege).
            row = await connection.fetchrow(
                "SELECT $1::text IS NULL OR to_regnamespace($1) IS NOT NULL, to_regclass($2) IS NOT NULL, "
                "(SELECT count(*) = 4 FROM pg_attribute WHERE attrelid = to_regclass($2) "
                "AND attname IN ('expires_at', 'payload', 'encoding', 'revision') AND NOT attisdropped), "
                "to_regclass($3) IS NOT NULL, to_regclass($4) IS NOT NULL",
                schema,
                table,
                self._index_name("class_name"),
                self._index_name("expires_at"),
            )
            has_schema, has_table, has_columns, has_class_index, has_expiry_index = row
            if connection.get_server_version().major >= 14:
                self._load_class = self._load_class_lean
            if not self._create:
                self._refuse_missing(has_schema and has_table)
                # Without the TTL, codec and revision columns no record can be read, so a table
                # of an older version still gains them below; indexes only speed up writes' scans.
                has_class_index = has_expiry_index = True
            if not has_schema:
                await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            if not has_table:
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (id UUID PRIMARY KEY, class_name TEXT NOT NULL, "
                    "data JSONB NOT NULL, schema_version INTEGER NOT NULL DEFAULT 1, "
                    "created_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
                    "updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), expires_at TIMESTAMPTZ, "
                    "payload BYTEA, encoding TEXT NOT NULL DEFAULT 'json', revision BIGINT)"
                )
            elif not has_columns:
                # Tables created by the contract's DDL (or older versions) gain the TTL, codec and
                # revision columns (rows without a revision count as revision 0). A constant default
                # adds a column without rewriting the table. Checked first: an ALTER takes the
                # table's strongest lock even when it has nothing to do.
                await connection.execute(
                    f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ, "
                    "ADD COLUMN IF NOT EXISTS payload BYTEA, "
                    "ADD COLUMN IF NOT EXISTS encoding TEXT NOT NULL DEFAULT 'json', "
                    "ADD COLUMN IF NOT EXISTS revision BIGINT"
                )
            if not has_class_index:
                await connection.execute(
                    f'CREATE INDEX IF NOT EXISTS "{settings.index("class_name")}" ON {table} (class_name)'
                )
            if not has_expiry_index:
                await connection.execute(
                    f'CREATE INDEX IF NOT EXISTS "{settings.index("expires_at")}" ON {table} (expires_at) '
                    "WHERE expires_at IS NOT NULL"
                )

    def _refuse_missing(self, found: bool) -> None:
        if found:
            return
        settings = self._settings
        raise StorageConnectionError(
            f"PostgreSQL table {settings.qualified} does not exist on {settings.where}, so it holds no "
            "pydantic-toast records; check the database in the URL and its '?table=' and '?schema=' "
            "options. This command only reads, so it does not create the table",
            url=settings.shown,
        )

    def _index_name(self, suffix: str) -> str:
        name = f'"{self._settings.index(suffix)}"'
        return f'"{self._settings.schema}".{name}' if self._settings.schema else name

    async def disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001 - closing must not fail; connections are cut instead
            pool.terminate()

    async def _run(self, action: str, call: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run one pool call, retrying it once when the connection it used turned out dead, and
        as often as the call's time allows while the server has no free connection slot.

        Only idempotent statements come here (upserts, reads, a delete by key), so a retry after
        a server restart or a failover cannot write anything twice. A refused connection attempt
        wrote nothing either.
        """
        # The first attempt without the retry loop's closure and error-mapping context manager
        # (~4,000 instructions a call): a failure goes to `_recover`, which treats it as the loop's
        # own first failure.
        try:
            return await call(*args)
        except Exception as exc:  # noqa: BLE001 - every failure is handled or translated there
            failure: Exception | None = exc
        return await self._recover(action, call, args, failure)

    async def _recover(
        self,
        action: str,
        call: Callable[..., Awaitable[T]],
        args: tuple[object, ...],
        failure: Exception | None,
    ) -> T:
        retried = False
        wait: _SlotWait | None = None

        def translate(exc: BaseException) -> StorageConnectionError:
            return self._error(action, exc, waited=None if wait is None else wait.waited)

        with map_driver_errors((Exception,), translate):
            while True:
                pause: float | None = None
                try:
                    if failure is not None:
                        first, failure = failure, None
                        raise first
                    return await call(*args)
                except self._full:
                    # The pool wanted one more connection and the server is at max_connections:
                    # wait for one of the pool's own connections to come free, or a server slot.
                    wait = wait or _SlotWait(self._settings.options.connect_timeout)
                    pause = wait.next_pause()
                    if pause is None:
                        raise
                except self._retryable as exc:
                    if retried:
                        raise
                    retried = True
                    observability.retrying("postgresql", action, exc)
                    if self._pool is not None and not isinstance(exc, self._deadlock):
                        # Every pooled connection predates the failure: replace them all, not one
                        # per call.
                        await self._pool.expire_connections()
                self.stats.add()
                if pause:
                    await asyncio.sleep(pause)

    def _pool_or_raise(self) -> Any:
        pool = self._pool
        if pool is None:
            shown = self._settings.shown
            raise StorageConnectionError(f"the PostgreSQL backend for {shown!r} is closed", url=shown)
        if self._loop is not asyncio.get_running_loop():
            # asyncpg would fail with a misleading "another operation is in progress".
            raise StorageConnectionError(
                f"the PostgreSQL backend for {self._settings.shown!r} was connected on another event "
                "loop; asyncpg pools are bound to the loop that created them (use one backend per loop, "
                "as pydantic_toast's own runtime does)",
                url=self._settings.shown,
            )
        return pool

    # ------------------------------------------------------------------ records
    # The batch methods; RecordStorageBackend builds the contract's save and load on them.

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        pool = self._pool_or_raise()
        if len(records) == 1:
            r = records[0]
            text = _stored_text(r)
            if text is not None:
                arguments: tuple[object, ...] = (self._save_one, r.id, r.class_name, text)
                arguments += (r.schema_version, r.created_at, r.updated_at, r.expires_at, r.revision)
            else:
                arguments = (self._save_one_bytes, r.id, r.class_name, r.schema_version)
                arguments += (r.created_at, r.updated_at, r.expires_at, r.revision, r.payload, r.encoding)
            status = await self._run("save", pool.execute, *arguments)
            written = _row_count(status) == 1
            unique: Sequence[StoredRecord] = records
        else:
            unique = _deduplicated(records)
            texts = [_stored_text(r) for r in unique]
            shared = None if None in texts else _shared(unique)
            if shared is not None:
                ids = [r.id for r in unique]
                arguments = (self._save_many_shared, ids, texts, *shared, len(unique))
            else:
                columns = _columns(unique, texts)
                statement = self._save_many
                if None in texts:
                    statement = self._save_many_bytes
                    columns.append(
                        [r.payload if text is None else None for r, text in zip(unique, texts, strict=True)]
                    )
                    columns.append([r.encoding for r in unique])
                arguments = (statement, *columns, len(unique))
            driver = self._driver
            assert driver is not None

            async def write() -> bool:
                try:
                    await pool.execute(*arguments)
                except driver.InvalidTextRepresentationError as exc:
                    if _OTHER_CLASS_MARKER not in str(exc):
                        raise
                    return False  # the statement failed as a whole: nothing of the batch was written
                return True

            written = await self._run("save", write)
        self.stats.add(written=len(unique))
        if not written:
            # The refused path only: one more query to name the class that owns the id.
            rows = await self._run("save", pool.fetch, self._owners, [r.id for r in unique])
            owners = {row[0]: row[1] for row in rows}
            for r in unique:
                owner = owners.get(r.id, r.class_name)
                if owner != r.class_name:
                    raise refuse_other_class(r.id, owner, r.class_name, batch=len(records) > 1)
            raise StorageValidationError(
                f"a concurrent writer saved some of these ids under another class in "
                f"{self._settings.where} table {self._settings.qualified}; "
                + ("it was not saved" if len(unique) == 1 else "nothing in this batch was saved"),
                expected=sorted({r.class_name for r in unique}),
            )

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        if not records:
            return []
        pool = self._pool_or_raise()
        unique = _deduplicated(records)
        texts = [_stored_text(r) for r in unique]
        arguments = (
            *_columns(unique, texts),
            [r.payload if text is None else None for r, text in zip(unique, texts, strict=True)],
            [r.encoding for r in unique],
            len(unique),
        )
        driver = self._driver
        assert driver is not None

        async def write() -> bool:
            try:
                await pool.execute(self._save_checked, *arguments)
            except driver.InvalidTextRepresentationError as exc:
                if _CONFLICT_MARKER not in str(exc):
                    raise
                return False  # the statement failed as a whole: nothing of the batch was written
            return True

        for _ in range(_CHECKED_ATTEMPTS):
            if await self._run("save", write):
                self.stats.add(written=len(unique))
                return []
            # The refused path only: read what the store holds to say why.
            rows = await self._run("save", pool.fetch, self._revisions, [r.id for r in unique])
            stored = {row[0]: (row[1], row[2]) for row in rows}
            conflicts: list[RevisionConflict] = []
            for r in unique:
                owner, found = stored.get(r.id, (r.class_name, None))
                if owner != r.class_name:
                    raise refuse_other_class(r.id, owner, r.class_name, batch=len(records) > 1)
                conflict = check_revision(r, found)
                if conflict is not None:
                    conflicts.append(conflict)
            if conflicts:
                return conflicts
            # What refused the write is gone already (a record deleted meanwhile): try again.
        raise StorageConnectionError(
            f"PostgreSQL save failed on {self._settings.where}: the records kept changing while "
            f"being saved with revision checks ({_CHECKED_ATTEMPTS} attempts); try again",
            url=self._settings.shown,
        )

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        if not keys:
            return []
        pool = self._pool_or_raise()
        if len(keys) == 1:
            id, class_name = keys[0]
            row = await self._run("load", pool.fetchrow, self._load_one, id, class_name)
            self.stats.add(read=row is not None)
            if row is None:
                return [None]
            data, version, created, updated, expires, payload, encoding, revision = row
            content, encoding = _content(data, payload, encoding)
            updated = created if updated is None else updated
            return [
                StoredRecord(id, class_name, content, version, created, updated, expires, encoding, revision)
            ]
        # A repeated id is sent again: the server matches its row once, and it is rare.
        ids = [id for id, _ in keys]
        lean = self._load_class
        if lean is not None and len({class_name for _, class_name in keys}) == 1:
            records = await self._load_lean(pool, lean, keys, ids)
            if records is not None:
                return records
        rows = await self._run("load", pool.fetch, self._load_many, ids)
        self.stats.add(read=len(rows))
        return _records(keys, rows, _same)

    async def _load_lean(
        self, pool: Any, query: str, keys: Sequence[RecordKey], ids: list[UUID]
    ) -> list[StoredRecord | None] | None:
        """load_records with timestamps read as integers; None when a row's timestamp has no
        integer or no datetime form ('infinity', out of range): the general query reads it."""
        driver = self._driver
        assert driver is not None

        async def read() -> list[Any] | None:
            try:
                rows: list[Any] = await pool.fetch(query, ids)
            except (driver.FeatureNotSupportedError, driver.NumericValueOutOfRangeError):
                return None
            return rows

        rows = await self._run("load", read)
        if rows is None:
            return None
        try:
            records = _records(keys, rows, _from_micros)
        except OverflowError:
            return None
        self.stats.add(read=len(rows))
        return records

    async def delete(self, id: UUID, class_name: str) -> bool:
        pool = self._pool_or_raise()
        live: int = await self._run("delete", pool.fetchval, self._delete, id, class_name)
        self.stats.add()
        return live > 0

    # ------------------------------------------------------------------ operator commands

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        pool = self._pool_or_raise()
        after: UUID | None = None
        if cursor:
            try:
                after = UUID(cursor)
            except ValueError:
                raise StorageValidationError(
                    f"scan cursor {cursor!r} is not one this backend produced", actual=cursor
                ) from None
        conditions = ["($1::uuid IS NULL OR id > $1)", "($2::text IS NULL OR class_name = $2)"]
        if not include_expired:
            conditions.append(_LIVE)
        query = (
            f"SELECT {_COLUMNS} FROM {self._settings.qualified} "
            f"WHERE {' AND '.join(conditions)} ORDER BY id LIMIT $3"
        )
        rows = await self._run("scan", pool.fetch, query, after, class_name, limit)
        self.stats.add(read=len(rows))
        page = [_record(row) for row in rows]
        return page, (str(page[-1].id) if len(page) == limit else None)

    async def find_record(self, id: UUID) -> StoredRecord | None:
        pool = self._pool_or_raise()
        query = f"SELECT {_COLUMNS} FROM {self._settings.qualified} WHERE id = $1"
        row = await self._run("load", pool.fetchrow, query, id)
        self.stats.add(read=row is not None)
        return None if row is None else _record(row)

    async def purge_expired(self) -> int:
        pool = self._pool_or_raise()
        query = f"DELETE FROM {self._settings.qualified} WHERE expires_at IS NOT NULL AND expires_at <= now()"
        status = await self._run("purge", pool.execute, query)
        self.stats.add()
        return _row_count(status)

    # ------------------------------------------------------------------ errors

    def _error(
        self, action: str, exc: BaseException, *, waited: float | None = None
    ) -> StorageConnectionError:
        """One library error per driver failure, naming the server and never the password."""
        settings = self._settings
        reason = self._error_table(waited).hint(exc)
        secrets = settings.secrets
        message = mask_secrets(f"PostgreSQL {action} failed on {settings.where}: {reason}", *secrets)
        return StorageConnectionError(message, url=settings.shown)

    def _error_table(self, waited: float | None) -> ErrorTable:
        """asyncpg's failures (and the network's), most specific first, with the cause and fix
        to name. Built per failure: the full-server hint says how long the call waited."""
        settings = self._settings
        options = settings.options
        driver = self._driver

        def plain(exc: BaseException) -> str:
            return f"{type(exc).__name__}: {exc}"

        def certificate(exc: BaseException) -> str:
            verify_message = getattr(exc, "verify_message", "")
            return (
                f"the server's certificate was not accepted ({verify_message}); check sslrootcert "
                "and that the host name matches the certificate (sslmode=verify-ca / verify-full)"
            )

        rows = [
            ErrorRow(
                (TimeoutError,),
                lambda exc: (
                    f"no answer within the time limit (connect_timeout={options.connect_timeout:g} s, "
                    f"command_timeout={options.command_timeout:g} s); check that the server is up and "
                    "not blocked by a lock, or raise the limits in the URL"
                ),
            ),
            ErrorRow(
                (socket.gaierror,),
                lambda exc: (
                    f"the host name could not be resolved ({getattr(exc, 'strerror', exc)}); "
                    "check the host in the URL"
                ),
            ),
            ErrorRow(
                (ConnectionRefusedError,),
                lambda exc: (
                    "connection refused; check that PostgreSQL is running and listens on that host and port"
                ),
                words=("Connect call failed",),
            ),
            ErrorRow((ssl.SSLCertVerificationError,), certificate),
        ]
        if driver is not None:

            def server(fix: str) -> Callable[[BaseException], str]:
                return lambda exc: f"{type(exc).__name__} [{getattr(exc, 'sqlstate', None)}]: {exc}{fix}"

            full = (
                "; every connection slot of the server is taken"
                + (f" and none came free within {waited:.1f} s" if waited is not None else "")
                + ". Raise max_connections on the server (or lower its superuser_reserved_connections "
                f"/ reserved_connections), lower max_size in the URL (now {settings.options.max_size}, per "
                "event loop and process), or share connections through PgBouncer"
            )
            broken = (
                "; the connection broke in the middle of a statement (terminated by the server, or "
                "a network failure) and the retry on a new connection failed too"
            )
            rows += [
                ErrorRow(
                    (driver.InvalidPasswordError,), server("; check the user name and password in the URL")
                ),
                ErrorRow(
                    (driver.InvalidAuthorizationSpecificationError,),
                    server("; check the user name, and that pg_hba.conf allows this client"),
                ),
                ErrorRow(
                    (driver.InvalidCatalogNameError,),
                    server("; create the database (createdb) or fix its name in the URL"),
                ),
                ErrorRow(
                    (driver.QueryCanceledError,),
                    server("; the statement hit the server's statement_timeout or was cancelled"),
                ),
                ErrorRow(
                    (driver.InsufficientPrivilegeError,),
                    server(f"; grant this user access to {settings.qualified} (or to CREATE it)"),
                ),
                ErrorRow((driver.TooManyConnectionsError,), server(full)),
                ErrorRow((driver.PostgresError,), server("")),
                ErrorRow(
                    (driver.InternalClientError,),
                    lambda exc: plain(exc) + broken,
                ),
            ]
        return ErrorTable(rows, default=plain)


# ---------------------------------------------------------------------- helpers


class _SlotWait:
    """How long a call may keep trying while the server has no free connection slot.

    Until just before the call's own deadline (the model's `timeout`) when it runs under the
    runtime, else for `fallback` seconds.
    """

    def __init__(self, fallback: float) -> None:
        loop = asyncio.get_running_loop()
        left = runtime.time_left()
        self._loop = loop
        self._started = loop.time()
        self._until = self._started + (fallback if left is None else left - _FULL_MARGIN)
        self._attempt = 0

    @property
    def waited(self) -> float:
        return self._loop.time() - self._started

    def next_pause(self) -> float | None:
        """Seconds to pause before the next attempt, or None when the time is used up."""
        ceiling = min(_FULL_PAUSE_CAP, _FULL_PAUSE_BASE * 2.0**self._attempt)
        self._attempt += 1
        pause = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not secrecy
        return pause if self._loop.time() + pause < self._until else None


async def _keep_session(connection: Any) -> None:
    """What the pool runs on a connection it takes back: nothing.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`,
    and waits for the answer, after every pooled call: a second round trip per statement. This
    backend's statements leave no session state behind (no SET, LISTEN, cursor or session-level
    lock; the table set-up's lock is held by its transaction), and nothing else runs on its pool.
    asyncpg itself still rolls back a transaction left open before calling this.
    """


def _no_session_reset(driver: ModuleType) -> dict[str, Any]:
    """create_pool's argument for `_keep_session`, on asyncpg versions that take it (0.30 on)."""
    if "reset" in inspect.signature(driver.create_pool).parameters:
        return {"reset": _keep_session}
    return {}


def _import_driver() -> ModuleType:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDependencyError(
            f"the PostgreSQL backend needs asyncpg; install it with: {_INSTALL_HINT}",
            package="asyncpg",
            extra="postgresql",
        ) from None
    module: ModuleType = asyncpg
    return module


def _stored_text(record: StoredRecord) -> str | None:
    """The text sent for `data`, or None when the payload goes to the `payload` column instead."""
    # The NUL escape may also be an escaped backslash followed by 'u0000'; storing that as bytes
    # too is harmless: the text comes back exactly as it was.
    if record.encoding != "json" or _NUL_ESCAPE in record.payload:
        return None
    return record.payload.decode()


# The id's int: UUID's own comparison runs in Python (measured: most of a 1,000-record batch's
# Python time in this module). attrgetter: no Python-level call per record.
_ID_NUMBER = operator.attrgetter("id.int")


def _deduplicated(records: Sequence[StoredRecord]) -> list[StoredRecord]:
    """The last record per id, sorted by id so concurrent batches lock rows in the same order."""
    return sorted(last_per_id(records), key=_ID_NUMBER)


def _shared(records: Sequence[StoredRecord]) -> tuple[object, ...] | None:
    """What every record of the batch has in common beyond id and data, or None if they differ."""
    first = records[0]
    shared = (
        first.class_name,
        first.schema_version,
        first.created_at,
        first.updated_at,
        first.expires_at,
        first.revision,
    )
    for r in records:
        if (r.class_name, r.schema_version, r.created_at, r.updated_at, r.expires_at, r.revision) != shared:
            return None
    return shared


def _columns(records: Sequence[StoredRecord], texts: list[str | None]) -> list[list[Any]]:
    """The per-column arrays a batch statement unnests, in the table's column order."""
    return [
        [r.id for r in records],
        [r.class_name for r in records],
        texts,
        [r.schema_version for r in records],
        [r.created_at for r in records],
        [r.updated_at for r in records],
        [r.expires_at for r in records],
        [r.revision for r in records],
    ]


_CONFLICT_MARKER = "pydantic_toast_revision_conflict"
_CHECKED_ATTEMPTS = 3
_OTHER_CLASS_MARKER = "pydantic_toast_other_class"


def _all_or_nothing(insert: str, count: str) -> str:
    """`insert` (an upsert whose conflict filter may skip rows) as one statement that fails, and
    so writes nothing, unless it wrote `count` rows."""
    return (
        f"WITH written AS ({insert} RETURNING 1) "
        f"SELECT CAST(CASE WHEN count(*) = {count}::int8 THEN '0' ELSE '{_OTHER_CLASS_MARKER}' END "
        "AS integer) FROM written"
    )


# The stored revision as a check sees it: an expired record counts as missing, one stored
# without a revision (before optimistic concurrency was used) as revision 0.
_FOUND = (
    "CASE WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN NULL ELSE coalesce(t.revision, 0) END"
)


def _checked_statements(table: str) -> tuple[str, str]:
    """(the checked batch write, the read that explains a refusal) for `save_records_checked`.

    One statement, so all or nothing: records based on revision r > 0 are UPDATEd only where the
    row still has revision r (an UPDATE re-checks a row a concurrent writer changed, and finds no
    row that was deleted); first saves (r = 0) and unchecked records are INSERTed, and update an
    existing row only where it holds no revision or an expired one. A row that already holds
    exactly this write (revision and updated_at) is the same batch retried after a lost reply.
    When fewer rows were written than given, the final cast fails with a marker, and PostgreSQL
    undoes the whole statement.
    """
    columns = "id, class_name, data, schema_version, created_at, updated_at, expires_at, revision, "
    columns += "payload, encoding"
    assign = (
        "data = {s}.data, schema_version = {s}.schema_version, created_at = {s}.created_at, "
        "updated_at = {s}.updated_at, expires_at = {s}.expires_at, revision = {s}.revision, "
        "payload = {s}.payload, encoding = {s}.encoding"
    )
    retried = "(t.revision = {s}.revision AND t.updated_at = {s}.updated_at)"
    save = (
        "WITH input AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], "
        "$5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::bytea[], $10::text[]) "
        f"AS u({columns})), "
        f"updated AS (UPDATE {table} AS t SET {assign.format(s='i')} "
        f"FROM (SELECT id, class_name, {_INPUT_DATA} AS data, schema_version, created_at, updated_at, "
        "expires_at, revision, payload, encoding FROM input WHERE revision > 1) AS i "
        f"WHERE t.id = i.id AND t.class_name = i.class_name AND ({_FOUND} = i.revision - 1 "
        f"OR {retried.format(s='i')}) RETURNING 1), "
        f"inserted AS (INSERT INTO {table} AS t ({columns}) "
        f"SELECT id, class_name, {_INPUT_DATA}, schema_version, created_at, updated_at, expires_at, "
        "revision, payload, encoding FROM input WHERE revision IS NULL OR revision <= 1 "
        f"ON CONFLICT (id) DO UPDATE SET {assign.format(s='excluded')} "
        "WHERE t.class_name = excluded.class_name AND (excluded.revision IS NULL "
        f"OR coalesce({_FOUND}, 0) = 0 OR {retried.format(s='excluded')}) RETURNING 1) "
        "SELECT CAST(CASE WHEN (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted) = $11 "
        f"THEN '0' ELSE '{_CONFLICT_MARKER}' END AS integer)"
    )
    revisions = f"SELECT t.id, t.class_name, {_FOUND} FROM {table} AS t WHERE t.id = ANY($1::uuid[])"
    return save, revisions


def _row_count(status: str) -> int:
    # asyncpg returns the command tag: 'INSERT 0 3', 'DELETE 1'.
    return int(status.rsplit(" ", 1)[-1])


def _record(row: Any) -> StoredRecord:
    uuid, class_name, data, version, created, updated, expires, payload, encoding, revision = row
    content, encoding = _content(data, payload, encoding)
    return StoredRecord(
        UUID(int=uuid.int), class_name, content, version, created, updated, expires, encoding, revision
    )


def _same(moment: datetime) -> datetime:
    return moment


def _from_micros(micros: int) -> datetime:
    """A `_MICROS` value as a datetime; OverflowError past year 9999."""
    return _EPOCH + timedelta(microseconds=micros)


def _records(
    keys: Sequence[RecordKey], rows: Sequence[Any], moment: Callable[[Any], datetime]
) -> list[StoredRecord | None]:
    """load_records' answer from a batch query's rows (the columns of `_load_many`), one per key.

    `moment` makes a row's timestamp a datetime (the lean query sends integers). It runs once per
    distinct value: a batch's records mostly share their timestamps (one save_many, one `now`).
    """
    # Keyed by the ids' integers: a uuid.UUID hashes in Python code, its `int` is a slot.
    found = {row[0].int: row for row in rows}
    moments: dict[Any, datetime] = {}
    records: list[StoredRecord | None] = []
    append = records.append
    for id, class_name in keys:
        row = found.get(id.int)
        if row is None or row[1] != class_name:
            append(None)
            continue
        created = row[4]
        created_at = moments.get(created)
        if created_at is None:
            created_at = moments[created] = moment(created)
        updated = row[5]
        updated_at = created_at if updated is None else moments.get(updated)
        if updated_at is None:
            updated_at = moments[updated] = moment(updated)
        # StoredRecord's own __init__ does exactly these stores, at ~1,000 instructions more per
        # record (a Python frame for nine arguments); tests/test_backend_fastpaths.py checks that its
        # fields are still these nine and that it has no __post_init__.
        record = _new_record(StoredRecord)
        record.id = id
        record.class_name = class_name
        data = row[2]
        # Model data is a JSON object: '{' is every JSON record; the rest is the rare path.
        if data[0] == "{":
            record.payload = data.encode()
            record.encoding = "json"
        else:
            record.payload, record.encoding = _content(data, row[7], row[8])
        record.schema_version = row[3]
        record.created_at = created_at
        record.updated_at = updated_at
        record.expires_at = row[6]
        record.revision = row[9]
        append(record)
    return records


_new_record = StoredRecord.__new__


def _content(data: str, payload: bytes | None, encoding: str | None) -> tuple[bytes, str]:
    """A row's payload and encoding from its `data` text (jsonb as text) and `payload` column.

    JSON `null` in `data`: the record is in `payload`, in `encoding`. A JSON string: a row written
    before the codec stage, wrapping the JSON text. Anything else is the record's JSON itself,
    whatever `encoding` says (a process of an earlier version may have updated `data` alone).
    """
    if data == "null" and payload is not None and encoding is not None:
        return payload, encoding
    if data.startswith('"'):
        unwrapped: str = json.loads(data)
        return unwrapped.encode(), "json"
    return data.encode(), "json"


def _settings(url: StorageURL) -> _Settings:
    """Validate the URL without connecting; the result feeds asyncpg and every message."""
    options = PostgreSQLOptions.from_url(url)
    secrets = PostgreSQLOptions.secrets_in(url)
    shown = PostgreSQLOptions.shown(url)
    host = url.host or options.host or "localhost"
    port = url.port or options.port or 5432
    database = unquote(url.path.lstrip("/")) or options.dbname or options.database
    if database is None:
        database = url.username or options.user or "(the user's name)"
    if "/" in database:
        raise StorageValidationError(
            f"postgresql URL {shown!r} names database {database!r}; write one database name after "
            "the host, e.g. 'postgresql://user@localhost:5432/mydb'",
            expected="/database",
            actual=database,
        )
    parts = urlsplit(url.raw)
    driver = PostgreSQLOptions.driver_parameters()
    driver_query = urlencode([(k, v) for k, v in url.query if k in driver])
    # Built by hand: urlunsplit drops the '//' of 'postgresql:///db' (no host: the local socket).
    dsn = f"{url.scheme}://{parts.netloc}{parts.path}" + (f"?{driver_query}" if driver_query else "")
    return _Settings(
        dsn=dsn,
        secrets=secrets,
        shown=shown,
        where=mask_secrets(f"{host}:{port}/{database}", *secrets),
        options=options,
    )
