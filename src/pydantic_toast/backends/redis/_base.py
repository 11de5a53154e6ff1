"""What the single-server and the cluster backend share: keys, batches, listing, errors, eviction."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
from abc import abstractmethod
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from ...exceptions import MissingDependencyError, StorageConnectionError, StorageValidationError
from ...url import StorageURL, mask_secrets
from .._errors import ErrorRow, ErrorTable, raise_unchained
from ..base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
)
from ._config import _settings
from ._retry import _retry
from ._scripts import _CHECKED_WRITE, _conflicts_of, _script_arguments
from ._slots import Slots
from ._values import _decode, _encode

if TYPE_CHECKING:
    pass

_log = logging.getLogger("pydantic_toast.redis")

# The eviction check at connect is best effort: it may delay the first call by at most this.
_POLICY_CHECK_TIMEOUT = 1.0

_INSTALL_HINT = "pip install 'pydantic-toast[redis]'"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _parse_cursor(cursor: str | None) -> tuple[int, int, list[str]]:
    if not cursor:
        return 0, 0, []
    try:
        node_index, scan, pending = json.loads(cursor)
        if not (isinstance(node_index, int) and isinstance(scan, int) and isinstance(pending, list)):
            raise TypeError("not a Redis listing cursor")
        return node_index, scan, [str(name) for name in pending]
    except (ValueError, TypeError):
        raise StorageValidationError(
            f"{cursor[:60]!r} is not a cursor of the Redis backend; start the listing again without one",
            expected="a cursor returned by scan_records",
            actual=cursor[:60],
        ) from None


def _import_error(scheme: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"the {scheme}:// backend needs redis-py, which is not installed; install it with: {_INSTALL_HINT}",
        package="redis",
        extra="redis",
    )


class _RedisBase(RecordStorageBackend):
    """What both clients share: settings, the key layout, error translation, the codec.

    No UNIQUE_IDS: the key holds the class name, so seeing whether an id is stored under
    another class would take a SCAN of the whole keyspace per save (docs/backends/contract.md).
    """

    _cluster: ClassVar[bool] = False
    declared_capabilities = frozenset({Capability.TTL})

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = StorageURL.parse(url)
        self._scheme = parsed.scheme
        self._settings = _settings(parsed, cluster=self._cluster)
        self._key_head = f"{self._settings.options.prefix}:".encode()
        self._class_heads: dict[str, bytes] = {}
        self._driver_errors: tuple[type[BaseException], ...] = ()
        self._unreachable: tuple[type[BaseException], ...] = ()
        self._errors = ErrorTable((), default=lambda exc: "")
        self._in_flight = Slots(self._settings.options.max_connections)
        # Set at connect when the server evicts keys that have a time to live; the first save
        # of such a key logs the warning (records without ttl are not at risk then).
        self._volatile_eviction: str | None = None

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        _settings(url, cluster=cls._cluster)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings.shown!r})"

    @property
    def prefix(self) -> str:
        return self._settings.options.prefix

    def key(self, id: UUID, class_name: str) -> bytes:
        """The Redis key of a record: `{prefix}:{class_name}:{uuid}`."""
        head = self._class_heads.get(class_name)
        if head is None:
            # `{prefix}:{class_name}:` once per class: batches build a key per record.
            head = self._class_heads[class_name] = b"%b%b:" % (self._key_head, class_name.encode())
        return head + str(id).encode()

    def _load_driver(self) -> None:
        try:
            import redis.exceptions
        except ImportError:
            raise _import_error(self._scheme) from None
        # OSError covers the socket-level failures redis-py lets through (and asyncio timeouts);
        # the cluster client's own errors (no reachable seed, uncovered slots) are no RedisError.
        self._driver_errors = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
        # What "the server cannot be reached or refused us" looks like (AuthenticationError is a
        # ConnectionError), as opposed to a server that merely refuses one command.
        self._unreachable = (redis.exceptions.ConnectionError, OSError)
        self._errors = self._error_table(redis.exceptions)

    def _client_kwargs(self) -> dict[str, Any]:
        settings = self._settings
        kwargs: dict[str, Any] = {
            "username": settings.username,
            "password": settings.password,
            "socket_timeout": settings.options.socket_timeout,
            "socket_connect_timeout": settings.options.socket_connect_timeout,
            "retry": _retry(settings.options.retries),
            "client_name": settings.options.client_name,
            "decode_responses": False,
            # RESP2, on purpose. redis-py 8 defaults to RESP3, which turns on "maintenance
            # notifications", and with them on its pool stops checking a pooled connection
            # before handing it out: a connection the server closed while idle (its `timeout`,
            # CLIENT KILL, a proxy) then fails the next command instead of being replaced, which
            # only the retry budget hides (retries=0 does not). Every command here gets the
            # same reply in either protocol.
            "protocol": 2,
        }
        if settings.tls is not None:
            kwargs.update(settings.tls.tls_kwargs())
        return kwargs

    def _writes(self, records: Sequence[StoredRecord]) -> list[tuple[bytes, bytes, int | None]]:
        """(key, value, expiry in ms) per record; refuses the whole batch if any value is too big."""
        limit = self._settings.options.max_value_size
        now: datetime | None = None
        writes: list[tuple[bytes, bytes, int | None]] = []
        for record in records:
            value = _encode(record)
            if len(value) > limit:
                raise StorageValidationError(
                    f"the {record.class_name} record {record.id} is {len(value)} bytes once encoded, "
                    f"more than max_value_size={limit} bytes for {self._settings.shown!r}; nothing in "
                    "this batch was saved. Store less data per model, or raise max_value_size (Redis "
                    "itself refuses values above its proto-max-bulk-len, 512 MB by default)",
                    expected=limit,
                    actual=len(value),
                )
            expiry: int | None = None
            if record.expires_at is not None:
                if self._volatile_eviction is not None:
                    _log.warning("%s", self._volatile_eviction)
                    self._volatile_eviction = None
                now = now or datetime.now(UTC)
                # A relative expiry (PX) is immune to clock differences between client and server.
                expiry = max(1, math.ceil((record.expires_at - now).total_seconds() * 1000))
            writes.append((self.key(record.id, record.class_name), value, expiry))
        return writes

    async def _guard(self, action: str, operation: Awaitable[Any]) -> Any:
        """Await a driver call, turning driver failures into the library's exceptions.

        Typed Any: redis-py types replies as `bytes | str` (decode_responses is a runtime flag),
        and with decode_responses=False they are always bytes.
        """
        slots = self._in_flight
        # A burst of tasks waits here for a free connection instead of failing with "too many
        # connections"; the model's `timeout` bounds the wait like any other.
        if not slots.take_now():
            try:
                await slots.take()
            except BaseException:
                # Cancelled while waiting for a slot: the operation never started and must not
                # be reported as a coroutine that was never awaited.
                close = getattr(operation, "close", None)
                if close is not None:
                    close()
                raise
        try:
            return await operation
        except self._driver_errors as exc:
            # A plain handler, not map_driver_errors: every command passes here, and a context
            # manager costs three Python calls and a closure each time.
            raise_unchained(self._failure(action, exc))
        finally:
            slots.give()

    def _error_table(self, errors: ModuleType) -> ErrorTable:
        """redis-py's failures, most specific first, with the cause and fix to name."""
        settings = self._settings
        options = settings.options

        def credentials(exc: BaseException) -> str:
            if settings.password is None:
                return (
                    "the server requires a password; put it in the storage URL as "
                    "'redis://[username]:password@host:port/db'"
                )
            user = f"user {settings.username!r}" if settings.username else "the default user"
            return f"the server refused the credentials of {user}; check the username and password"

        permission = (
            f"the ACL user lacks permission; allow GET, SET, MGET, MSET, DEL and SCAN (and EVAL and GETRANGE "
            f"for optimistic_concurrency) on keys '{options.prefix}:*'"
        )
        timeout = (
            f"no answer within socket_timeout={options.socket_timeout:g} s "
            f"(connect: {options.socket_connect_timeout:g} s) after {options.retries} retries; "
            "the server may be down, overloaded or unreachable"
        )
        unreachable = (
            f"check that the server is running and reachable (gave up after {options.retries} retries)"
        )
        return ErrorTable(
            [
                # A refused password also arrives as a plain error that only its text names.
                ErrorRow(
                    (errors.AuthenticationError, errors.AuthenticationWrongNumberOfArgsError),
                    credentials,
                    words=("WRONGPASS", "NOAUTH"),
                ),
                ErrorRow((errors.NoPermissionError,), lambda exc: permission),
                ErrorRow((errors.TimeoutError, TimeoutError), lambda exc: timeout),
                ErrorRow((errors.ResponseError,), lambda exc: "the server refused the command"),
            ],
            default=lambda exc: unreachable,
        )

    def _failure(self, action: str, exc: BaseException) -> StorageConnectionError:
        settings = self._settings
        text = str(exc)
        hint = self._errors.hint(exc)
        detail = mask_secrets(
            f"{type(exc).__name__}: {text}" if text else type(exc).__name__, settings.password
        )
        return StorageConnectionError(
            f"Redis {action} failed at {settings.where} for {settings.shown!r}: {detail}; {hint}",
            url=settings.shown,
        )

    _label: ClassVar[str] = "Redis"

    async def _check_eviction(self) -> None:
        """Warn when the server may evict records: Redis acknowledges a SET, then drops the key
        under memory pressure if its `maxmemory-policy` allows, and nothing reports it.

        Best effort: a server that does not let us read its configuration (managed services
        disable CONFIG, ACLs may deny it) or does not answer quickly is skipped, at DEBUG.
        """
        failures: tuple[type[BaseException], ...] = (*self._driver_errors, TimeoutError)
        try:
            async with asyncio.timeout(self._eviction_check_seconds()):
                configs = await self._memory_configs()
        except failures as exc:
            failure = self._eviction_check_failed(exc)
            if failure is None:
                return
            await self.disconnect()
            raise failure from None
        self._note_memory_configs(configs)

    def _eviction_check_seconds(self) -> float:
        return min(_POLICY_CHECK_TIMEOUT, self._settings.options.socket_timeout)

    def _eviction_check_failed(self, exc: BaseException) -> StorageConnectionError | None:
        """The connect's failure when the eviction check could not reach the server, else None
        (the check is skipped: the server would not tell, or not in time)."""
        if isinstance(exc, self._unreachable):
            # The client already spent its retries (or the server refused the credentials): this
            # is the connect's failure, said once, rather than skipped and retried all over again
            # by the first command.
            return self._failure("connect", exc)
        _log.debug(
            "could not read the maxmemory-policy of %s (%s); eviction check skipped",
            self._settings.where,
            type(exc).__name__,
        )
        return None

    def _note_memory_configs(self, configs: list[tuple[str, dict[Any, Any]]]) -> None:
        """Warn now, or at the first save of a record with a ttl, as the servers' policies say."""
        for where, config in configs:
            values = {
                (k.decode() if isinstance(k, bytes) else str(k)): (
                    v.decode() if isinstance(v, bytes) else str(v)
                )
                for k, v in config.items()
            }
            policy = values.get("maxmemory-policy", "noeviction")
            maxmemory = values.get("maxmemory", "0")
            # Without a memory limit (64-bit servers) nothing is ever evicted, whatever the policy.
            if policy == "noeviction" or maxmemory == "0":
                continue
            fix = (
                "set maxmemory-policy noeviction (a full server then refuses writes with an OOM error "
                "instead of dropping data), or keep pydantic-toast's records on a Redis that is not a cache"
            )
            if policy.startswith("volatile-"):
                # Keep looking: another node may evict every key, which is worth saying now.
                self._volatile_eviction = (
                    f"Redis at {where} has maxmemory-policy {policy} (maxmemory {maxmemory}): keys with a "
                    f"time to live, such as the records of models with `ttl` saved through "
                    f"{self._settings.shown!r}, can be evicted before their ttl ends, without an error; {fix}"
                )
            else:
                _log.warning(
                    "Redis at %s has maxmemory-policy %s (maxmemory %s): records saved through %r can be "
                    "evicted when the server is full, without an error; %s",
                    where,
                    policy,
                    maxmemory,
                    self._settings.shown,
                    fix,
                )
                self._volatile_eviction = None
                return

    @abstractmethod
    async def _memory_configs(self) -> list[tuple[str, dict[Any, Any]]]:
        """`CONFIG GET maxmemory*` of every server holding records, with the server's name."""

    def _client_or_raise(self) -> Any:
        client = getattr(self, "_client", None)
        if client is None:
            raise StorageConnectionError(
                f"the {self._label} backend for {self._settings.shown!r} is closed", url=self._settings.shown
            )
        return client

    @abstractmethod
    def _require(self) -> Any:
        """The connected client, or StorageConnectionError once closed."""

    @abstractmethod
    def _pipeline(self) -> Any:
        """A non-transactional pipeline of this client."""

    @abstractmethod
    async def _get_many(self, names: list[bytes]) -> list[bytes | None]:
        """The values of several keys, in order (one round trip)."""

    async def save_records(self, records: Sequence[StoredRecord]) -> None:
        if not records:
            return
        writes = self._writes(records)
        if len(writes) == 1:
            # A pipeline costs more client-side work than it saves for one command.
            [(key, value, expiry)] = writes
            # execute_command: the same command and reply as `set()`, without its argument checks.
            if expiry is None:
                command = self._require().execute_command("SET", key, value)
            else:
                command = self._require().execute_command("SET", key, value, "PX", expiry)
            await self._guard("save", command)
        else:
            await self._guard("save", self._set_many(writes))
        self.stats.add(written=len(writes))

    async def _set_many(self, writes: list[tuple[bytes, bytes, int | None]]) -> None:
        """Several SETs in one round trip: one pipeline (the cluster routes it per slot)."""
        pipe = self._pipeline()
        for key, value, expiry in writes:
            pipe.set(key, value, px=expiry)
        await pipe.execute()

    async def save_records_checked(self, records: Sequence[StoredRecord]) -> list[RevisionConflict]:
        if not records:
            return []
        # The last record per key: the key holds the class name, so one id may serve two classes.
        latest = list({record.key: record for record in records}.values())
        writes = self._writes(latest)
        conflicts = await self._write_checked(latest, writes)
        if not conflicts:
            self.stats.add(written=len(latest))
        return conflicts

    async def _write_checked(
        self, records: list[StoredRecord], writes: list[tuple[bytes, bytes, int | None]]
    ) -> list[RevisionConflict]:
        """One server: one script, all or nothing."""
        keys = [key for key, _, _ in writes]
        reply = await self._guard(
            "save",
            self._require().eval(_CHECKED_WRITE, len(keys), *keys, *_script_arguments(records, writes)),
        )
        return _conflicts_of(records, reply)

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        if not keys:
            return []
        names = [self.key(id, class_name) for id, class_name in keys]
        if len(names) == 1:
            values: list[bytes | None] = [await self._guard("load", self._require().get(names[0]))]
        else:
            values = await self._get_many(names)
        self.stats.add(read=sum(value is not None for value in values))
        return [
            None if value is None else _decode(id, class_name, value, name)
            for (id, class_name), name, value in zip(keys, names, values, strict=True)
        ]

    async def delete(self, id: UUID, class_name: str) -> bool:
        removed = await self._guard("delete", self._require().delete(self.key(id, class_name)))
        self.stats.add()
        return bool(removed)

    async def purge_expired(self) -> int:
        return 0  # Redis deletes expired keys itself

    # Listing, for the operator commands. SCAN pages have no fixed size, so the keys a SCAN step
    # returned beyond `limit` travel in the cursor: pages are exact and a resumed listing neither
    # repeats nor skips them. Expired keys are gone from Redis, so include_expired changes nothing.

    async def _scan_nodes(self) -> list[Any]:
        """What to SCAN, in an order every process agrees on: [None] for one server."""
        return [None]

    async def _scan_step(self, node: Any, cursor: int, pattern: bytes, count: int) -> tuple[int, list[bytes]]:
        raise NotImplementedError

    async def _fetch(self, names: Sequence[bytes]) -> list[tuple[bytes | None, int]]:
        """(value, PTTL in ms) per key, in one request (per node)."""
        pipe = self._pipeline()
        for name in names:
            pipe.get(name)
            pipe.pttl(name)
        replies = await self._guard("scan", pipe.execute())
        return list(zip(replies[::2], replies[1::2], strict=True))

    def _pattern(self, class_name: str | None, id: UUID | None = None) -> bytes:
        middle = _glob_escape(class_name) if class_name is not None else "*"
        tail = str(id) if id is not None else "*"
        return f"{_glob_escape(self._settings.options.prefix)}:{middle}:{tail}".encode()

    async def scan_records(
        self, *, cursor: str | None, limit: int, class_name: str | None = None, include_expired: bool = False
    ) -> tuple[list[StoredRecord], str | None]:
        node_index, scan, pending = _parse_cursor(cursor)
        nodes = await self._scan_nodes()
        pattern = self._pattern(class_name)
        names = [name.encode() for name in pending]
        while len(names) < limit and node_index < len(nodes):
            scan, batch = await self._scan_step(nodes[node_index], scan, pattern, max(limit, 10))
            names.extend(name for name in batch if self._parse_key(name) is not None)
            if scan == 0:
                node_index += 1
        taken, rest = names[:limit], names[limit:]
        records = await self._records(taken)
        if node_index >= len(nodes) and not rest:
            return records, None
        return records, json.dumps([node_index, scan, [name.decode() for name in rest]])

    async def find_record(self, id: UUID) -> StoredRecord | None:
        pattern = self._pattern(None, id)
        for node in await self._scan_nodes():
            scan = 0
            while True:
                scan, batch = await self._scan_step(node, scan, pattern, 1000)
                names = [name for name in batch if self._parse_key(name) is not None]
                found = await self._records(names[:1])
                if found:
                    return found[0]
                if scan == 0:
                    break
        return None

    async def _records(self, names: Sequence[bytes]) -> list[StoredRecord]:
        if not names:
            return []
        fetched = await self._fetch(names)
        now = datetime.now(UTC)
        records: list[StoredRecord] = []
        for name, (value, ttl) in zip(names, fetched, strict=True):
            parsed = self._parse_key(name)
            if value is None or parsed is None:
                continue  # expired or deleted since SCAN saw it
            record = _decode(parsed[0], parsed[1], value, name)
            if ttl > 0:
                record = dataclasses.replace(record, expires_at=now + timedelta(milliseconds=ttl))
            records.append(record)
        self.stats.add(read=len(records))
        return records

    def _parse_key(self, name: bytes) -> tuple[UUID, str] | None:
        """(id, class_name) of one of our keys; None for anything else under the prefix."""
        if not name.startswith(self._key_head) or len(name) < len(self._key_head) + 38:
            return None
        middle, _, tail = name[len(self._key_head) :].rpartition(b":")
        try:
            return UUID(tail.decode()), middle.decode()
        except ValueError:
            return None
