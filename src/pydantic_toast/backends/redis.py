"""Redis and Redis Cluster through redis-py's asyncio clients (`pip install 'pydantic-toast[redis]'`).

URL forms (see docs/backends/redis.md for every option):

    redis://[[username]:password@]host[:port][/db][?options]
    rediss://…                                              TLS
    unix://[[username]:password@]/path/to/redis.sock[?db=N&options]
    redis+cluster://[[username]:password@]host:port[?node=host2:port2&node=…&options]
    rediss+cluster://…                                      cluster over TLS

Each record is one string key `{prefix}:{class_name}:{uuid}` holding the envelope as compact JSON,
data first: `{"data":…,"schema_version":N,"created_at":"…Z","updated_at":"…Z"}`, then
`,"revision":N` last for a record saved with a revision. Writing splices
the model's already encoded JSON into that text, and reading slices it back out after checking
only the fixed-shape metadata tail, so neither direction re-encodes the model's data.

A record whose encoding is not "json" (compressed) is stored as a NUL byte, a one-line JSON
header `{"encoding":…,"schema_version":N,"created_at":…,"updated_at":…}` (with `"revision":N,`
first when it has one), a newline, then the payload bytes as they are: no base64, and no JSON
value starts with a NUL, so the two never mix. Either way the revision sits at a fixed end of the
value, where a Lua script finds it with one GETRANGE (see _CHECKED_WRITE).

redis-py is imported when a backend connects, never at module import, so the core works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import re
from abc import abstractmethod
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast
from uuid import UUID

import pydantic_core

from ..exceptions import MissingDependencyError, StorageConnectionError, StorageValidationError
from ..url import StorageURL, mask_secrets
from ._options import URLOptions
from .base import (
    Capability,
    RecordKey,
    RecordStorageBackend,
    RevisionConflict,
    StoredRecord,
    check_revision,
    format_timestamp,
    parse_timestamp,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.retry import Retry

__all__ = ["RedisBackend", "RedisClusterBackend"]

_log = logging.getLogger("pydantic_toast.redis")

DEFAULT_PREFIX = "pydantic_toast"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_CONNECTIONS = 50
# Redis refuses bulk strings above proto-max-bulk-len, 512 MB unless the server is reconfigured.
DEFAULT_MAX_VALUE_SIZE = 512 * 1024 * 1024
# The n-th retry waits a random time up to min(1 s, 50 ms * 2**n): a restart or failover is ridden
# out within about a second with the default 3 retries, and a dead server is reported quickly.
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
# The eviction check at connect is best effort: it may delay the first call by at most this.
_POLICY_CHECK_TIMEOUT = 1.0

_INSTALL_HINT = "pip install 'pydantic-toast[redis]'"
_COMMON_OPTIONS = (
    "prefix",
    "socket_timeout",
    "socket_connect_timeout",
    "retries",
    "max_connections",
    "max_value_size",
    "client_name",
)
_TLS_OPTIONS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_CERT_REQS = ("none", "optional", "required")
# Braces would make Redis Cluster hash only part of every key (a hash tag), piling all records
# into one slot; whitespace and control characters make keys painful to use from redis-cli.
_PREFIX = re.compile(r"^[^\s{}\x00-\x1f\x7f]{1,200}$")
_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]@,]+))(?::(?P<port>\d{1,5}))?$")

_ENVELOPE_HEAD = b'{"data":'
_BINARY_HEAD = b"\x00"
_TAIL_MARKER = b',"schema_version":'
# The metadata tail this module writes after the data. Anything else falls back to a full parse.
_TAIL = re.compile(
    rb',"schema_version":(\d{1,18}),"created_at":"([0-9:.TZ+-]{20,40})","updated_at":"([0-9:.TZ+-]{20,40})"'
    rb'(?:,"revision":(\d{1,18}))?}\Z'
)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class _TLSSettings:
    cert_reqs: str
    ca_certs: str | None
    ca_path: str | None
    certfile: str | None
    keyfile: str | None
    check_hostname: bool

    def kwargs(self) -> dict[str, Any]:
        given = {
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_ca_certs": self.ca_certs,
            "ssl_ca_path": self.ca_path,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_check_hostname": self.check_hostname,
        }
        # Only what the URL set: redis-py's cluster client does not take every TLS keyword.
        return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True, slots=True)
class _Settings:
    """Everything a Redis URL says, validated once: `check_url` and the backend share it."""

    kind: Literal["tcp", "unix", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    socket_path: str | None
    db: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    tls: _TLSSettings | None
    prefix: str
    socket_timeout: float
    socket_connect_timeout: float
    retries: int
    max_connections: int
    max_value_size: int
    client_name: str | None
    shown: str

    @property
    def where(self) -> str:
        """The server as error messages name it: host:port (or socket, or seeds) and db."""
        if self.kind == "unix":
            return f"unix socket {self.socket_path} (db {self.db})"
        if self.kind == "cluster":
            return "cluster seeds " + ", ".join(_host_port(host, port) for host, port in self.nodes)
        host, port = self.nodes[0]
        return f"{_host_port(host, port)} (db {self.db})"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _settings(url: StorageURL, *, cluster: bool) -> _Settings:
    backend = "redis cluster" if cluster else "redis"
    options = URLOptions(url, backend=backend)
    tls = url.scheme in ("rediss", "rediss+cluster")
    tls_options = tuple(name for name in _TLS_OPTIONS if not (cluster and name == "ssl_ca_path"))
    known = _COMMON_OPTIONS + (tls_options if tls else ()) + (("node",) if cluster else ("db",))
    stray_tls = sorted(set(options.values) & set(_TLS_OPTIONS)) if not tls else []
    if stray_tls:
        secure = "rediss+cluster" if cluster else "rediss"
        raise StorageValidationError(
            f"TLS option(s) {stray_tls} in {url.masked!r} need a TLS URL; use '{secure}://…'",
            expected=f"{secure}://",
            actual=url.scheme,
        )
    options.reject_unknown(known)

    prefix = options.string("prefix", DEFAULT_PREFIX)
    if not _PREFIX.match(prefix):
        raise StorageValidationError(
            f"redis option prefix={prefix!r} in {url.masked!r} must be 1 to 200 characters without "
            "whitespace, control characters or braces (braces would make Redis Cluster put every key "
            "in one slot)",
            expected="key prefix",
            actual=prefix,
        )
    kind: Literal["tcp", "unix", "cluster"]
    socket_path: str | None = None
    if cluster:
        kind = "cluster"
        nodes = _cluster_nodes(url)
        db = 0
        if url.path not in ("", "/", "/0"):
            raise StorageValidationError(
                f"Redis Cluster has only database 0; remove {url.path!r} from {url.masked!r}",
                expected="db 0",
                actual=url.path,
            )
    elif url.scheme == "unix":
        kind = "unix"
        if url.host or url.port:
            raise StorageValidationError(
                f"a unix:// URL names a socket file, not a host: write 'unix:///path/to/redis.sock', "
                f"not {url.masked!r}",
                expected="unix:///path/to/redis.sock",
                actual=url.masked,
            )
        if not url.path or url.path.endswith("/"):
            raise StorageValidationError(
                f"unix:// URL {url.masked!r} names no socket file; write 'unix:///path/to/redis.sock?db=0'",
                expected="unix:///path/to/redis.sock",
                actual=url.masked,
            )
        socket_path = url.path
        nodes = ()
        db = options.integer("db", 0)
    else:
        kind = "tcp"
        if not url.host:
            raise StorageValidationError(
                f"Redis URL {url.masked!r} names no host; write 'redis://localhost:6379/0'",
                expected="redis://host[:port][/db]",
                actual=url.masked,
            )
        nodes = ((url.host, url.port or 6379),)
        db = _database(url, options)

    tls_settings: _TLSSettings | None = None
    if tls:
        cert_reqs = options.string("ssl_cert_reqs", "required").lower()
        if cert_reqs not in _CERT_REQS:
            raise _bad_option(url, "ssl_cert_reqs", cert_reqs, " or ".join(_CERT_REQS))
        # A certificate that is not verified has no verified hostname either.
        check_hostname = options.boolean("ssl_check_hostname", cert_reqs != "none")
        if check_hostname and cert_reqs == "none":
            raise _bad_option(
                url, "ssl_check_hostname", "true", "false when ssl_cert_reqs=none (nothing is verified)"
            )
        tls_settings = _TLSSettings(
            cert_reqs=cert_reqs,
            ca_certs=options.values.get("ssl_ca_certs"),
            ca_path=options.values.get("ssl_ca_path"),
            certfile=options.values.get("ssl_certfile"),
            keyfile=options.values.get("ssl_keyfile"),
            check_hostname=check_hostname,
        )

    return _Settings(
        kind=kind,
        nodes=nodes,
        socket_path=socket_path,
        db=db,
        # `redis://:password@host` means the default user, not a user named "".
        username=url.username or None,
        password=url.password or None,
        tls=tls_settings,
        prefix=prefix,
        socket_timeout=options.number("socket_timeout", DEFAULT_SOCKET_TIMEOUT, minimum=0.001),
        socket_connect_timeout=options.number(
            "socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=0.001
        ),
        retries=options.integer("retries", DEFAULT_RETRIES),
        max_connections=options.integer("max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1),
        max_value_size=options.integer("max_value_size", DEFAULT_MAX_VALUE_SIZE, minimum=1),
        client_name=options.values.get("client_name") or None,
        shown=url.masked,
    )


def _bad_option(url: StorageURL, name: str, raw: str, wanted: str) -> StorageValidationError:
    return StorageValidationError(
        f"redis option {name}={raw!r} in {url.masked!r} must be {wanted}", expected=wanted, actual=raw
    )


def _database(url: StorageURL, options: URLOptions) -> int:
    path = url.path.strip("/")
    from_path: int | None = None
    if path:
        if not path.isdigit():
            raise StorageValidationError(
                f"the path of Redis URL {url.masked!r} must be a database number such as '/0', "
                f"not {url.path!r}",
                expected="/<db number>",
                actual=url.path,
            )
        from_path = int(path)
    db = options.integer("db", from_path if from_path is not None else 0)
    if from_path is not None and db != from_path:
        raise StorageValidationError(
            f"Redis URL {url.masked!r} names database {from_path} in its path and {db} in ?db=; keep one",
            expected=from_path,
            actual=db,
        )
    return db


def _cluster_nodes(url: StorageURL) -> tuple[tuple[str, int], ...]:
    if not url.host:
        raise StorageValidationError(
            f"Redis Cluster URL {url.masked!r} names no seed node; write "
            "'redis+cluster://host:port?node=host2:port2' (one reachable seed is enough)",
            expected="redis+cluster://host:port",
            actual=url.masked,
        )
    nodes = [(url.host, url.port or 6379)]
    for name, value in url.query:
        if name != "node":
            continue
        for item in value.split(","):
            match = _HOST_PORT.match(item.strip())
            port = int(match["port"]) if match and match["port"] else 6379
            if match is None or not 0 < port < 65536:
                raise StorageValidationError(
                    f"redis cluster option node={item!r} in {url.masked!r} must be 'host:port' "
                    "(IPv6 as '[::1]:7000')",
                    expected="host:port",
                    actual=item,
                )
            nodes.append((match["ipv6"] or match["host"], port))
    return tuple(dict.fromkeys(nodes))


# --------------------------------------------------------------------------- envelope codec


def _encode(record: StoredRecord) -> bytes:
    if record.encoding != "json":
        # The revision comes first here, so that a script reads it with GETRANGE on the value's
        # head (see _CHECKED_WRITE): the payload after the header has no bounded length.
        head = b"\x00{" if record.revision is None else b'\x00{"revision":%d,' % record.revision
        return head + b'"encoding":%b,"schema_version":%d,"created_at":"%b","updated_at":"%b"}\n%b' % (
            pydantic_core.to_json(record.encoding),
            record.schema_version,
            format_timestamp(record.created_at).encode(),
            format_timestamp(record.updated_at).encode(),
            record.payload,
        )
    value = b'{"data":%b,"schema_version":%d,"created_at":"%b","updated_at":"%b"}' % (
        record.payload,
        record.schema_version,
        format_timestamp(record.created_at).encode(),
        format_timestamp(record.updated_at).encode(),
    )
    if record.revision is not None:
        # Last, so that a script reads it with GETRANGE on the value's tail (see _CHECKED_WRITE).
        value = value[:-1] + b',"revision":%d}' % record.revision
    return value


def _decode(id: UUID, class_name: str, value: bytes, key: bytes) -> StoredRecord:
    if value.startswith(_ENVELOPE_HEAD):
        # The data is JSON written before the tail; a "schema_version" key inside the data comes
        # before ours, so the last marker is the tail's.
        cut = value.rfind(_TAIL_MARKER)
        match = _TAIL.match(value, cut) if cut > len(_ENVELOPE_HEAD) else None
        if match is not None and value[cut - 1 : cut] == b"}" and value[len(_ENVELOPE_HEAD)] == 0x7B:
            try:
                return StoredRecord(
                    id=id,
                    class_name=class_name,
                    payload=value[len(_ENVELOPE_HEAD) : cut],
                    schema_version=int(match[1]),
                    created_at=parse_timestamp(match[2].decode()),
                    updated_at=parse_timestamp(match[3].decode()),
                    revision=None if match[4] is None else int(match[4]),
                )
            except ValueError:
                pass  # an impossible date; the full parse below reports it properly
    elif value.startswith(_BINARY_HEAD):
        header, _, payload = value[1:].partition(b"\n")
        try:
            parsed = pydantic_core.from_json(header)
        except ValueError:
            parsed = None
        return _binary_record(id, class_name, parsed, payload, key)
    try:
        envelope = pydantic_core.from_json(value)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        raise StorageValidationError(
            f"Redis key {key.decode(errors='replace')!r} does not hold a JSON envelope "
            "{'data': {...}, 'schema_version': …, 'created_at': …, 'updated_at': …}; was it written "
            "by something other than pydantic-toast?",
            expected="envelope",
            actual=f"{len(value)} bytes of another format",  # never the stored bytes themselves
        )
    return StoredRecord.from_envelope(id, class_name, envelope)


# --------------------------------------------------------------------------- revision checks

# How much of a value a check reads to find its revision and updated_at: a JSON envelope's end,
# a binary record's start (its header, which holds the revision first; every header this module
# writes fits in _HEAD_BYTES).
_TAIL_BYTES = 64
_HEAD_BYTES = 256
_REVISION_TAIL = re.compile(rb',"revision":(\d{1,18})}\Z')
_REVISION_HEAD = re.compile(rb'\x00{"revision":(\d{1,18}),')

# save_records_checked in one script: a script runs alone on the server, so every check happens
# before any write, and a batch with a conflict writes nothing. ARGV holds three values per key:
# the value, the expected revision ('' = unchecked) and the expiry in ms ('' = none). A missing
# key and a value without a revision count as revision 0. A key whose value has the same mark
# as the one to write (see _check_mark: same updated_at and revision) holds this very write: a
# retry after a lost reply. Returns the conflicts as [key index, found revision ('' = no record), ...].
_CHECKED_WRITE = f"""
local conflicts = {{}}
for i, key in ipairs(KEYS) do
  local expected = ARGV[3 * i - 1]
  if expected ~= '' then
    local value = ARGV[3 * i - 2]
    local mark = redis.call('GETRANGE', key, 0, {_HEAD_BYTES - 1})
    local found = ''
    local written = nil
    if string.byte(mark, 1) == 0 then
      found = string.match(mark, '^.{{"revision":(%d+),') or '0'
      written = string.sub(value, 1, {_HEAD_BYTES})
    elseif mark ~= '' then
      mark = redis.call('GETRANGE', key, -{_TAIL_BYTES}, -1)
      found = string.match(mark, ',"revision":(%d+)}}$') or '0'
      written = string.sub(value, -{_TAIL_BYTES})
    end
    if (found == '' and '0' or found) ~= expected and mark ~= written then
      conflicts[#conflicts + 1] = i
      conflicts[#conflicts + 1] = found
    end
  end
end
if #conflicts == 0 then
  for i, key in ipairs(KEYS) do
    local expiry = ARGV[3 * i]
    if expiry == '' then
      redis.call('SET', key, ARGV[3 * i - 2])
    else
      redis.call('SET', key, ARGV[3 * i - 2], 'PX', expiry)
    end
  end
end
return conflicts
"""


def _check_mark(value: bytes) -> bytes:
    """The part of a value that a check reads: it holds the revision and the updated_at."""
    return value[:_HEAD_BYTES] if value.startswith(_BINARY_HEAD) else value[-_TAIL_BYTES:]


def _found_revision(mark: bytes) -> int | None:
    """The revision a value's mark holds, as a check counts it; None for a missing key."""
    if not mark:
        return None
    binary = mark.startswith(_BINARY_HEAD)
    match = _REVISION_HEAD.match(mark) if binary else _REVISION_TAIL.search(mark)
    return 0 if match is None else int(match[1])


def _script_arguments(
    records: Sequence[StoredRecord], writes: Sequence[tuple[bytes, bytes, int | None]]
) -> list[bytes | str]:
    arguments: list[bytes | str] = []
    for record, (_, value, expiry) in zip(records, writes, strict=True):
        arguments.append(value)
        arguments.append("" if record.revision is None else str(record.revision - 1))
        arguments.append("" if expiry is None else str(expiry))
    return arguments


def _conflicts_of(records: Sequence[StoredRecord], reply: Sequence[Any]) -> list[RevisionConflict]:
    conflicts: list[RevisionConflict] = []
    for index, found in zip(reply[::2], reply[1::2], strict=True):
        record = records[int(index) - 1]
        assert record.revision is not None
        conflicts.append(
            RevisionConflict(record.id, record.class_name, record.revision - 1, int(found) if found else None)
        )
    return conflicts


def _binary_record(id: UUID, class_name: str, header: object, payload: bytes, key: bytes) -> StoredRecord:
    if isinstance(header, dict):
        encoding, version = header.get("encoding"), header.get("schema_version")
        created, updated = header.get("created_at"), header.get("updated_at")
        revision = header.get("revision")
        if (
            isinstance(encoding, str)
            and isinstance(version, int)
            and isinstance(created, str)
            and isinstance(updated, str)
            and (revision is None or (isinstance(revision, int) and not isinstance(revision, bool)))
        ):
            with contextlib.suppress(ValueError):  # an impossible date
                return StoredRecord(
                    id,
                    class_name,
                    payload,
                    version,
                    parse_timestamp(created),
                    parse_timestamp(updated),
                    encoding=encoding,
                    revision=revision,
                )
    raise StorageValidationError(
        f"Redis key {key.decode(errors='replace')!r} holds a binary record whose header is not "
        '{"encoding": str, "schema_version": int, "created_at": str, "updated_at": str} with an '
        'optional leading "revision": int; was it written by something other than pydantic-toast?',
        expected="binary record header",
        actual=type(header).__name__,
    )


# --------------------------------------------------------------------------- backends


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


def _retry(retries: int) -> Retry:
    from redis.backoff import ExponentialWithJitterBackoff

    # Connection errors and timeouts (redis-py's default set): every command we send (SET, GET,
    # MGET, DEL, SCAN, PTTL) is safe to send twice.
    return _retry_class()(ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), retries)


@functools.cache
def _retry_class() -> type[Retry]:
    from redis.asyncio.retry import Retry
    from redis.exceptions import AuthenticationError, AuthorizationError

    class _Final(Exception):  # noqa: N818 - a carrier, never seen outside this function
        def __init__(self, error: Exception) -> None:
            self.error = error

    class RetryExceptCredentials(Retry):
        """Retries like redis-py's Retry, except refused credentials: asking again with the same
        password only delays the error and floods the server's ACL log.

        The refusal travels through the retry loop in a carrier it does not catch; wrapping `do`
        works with every redis-py version's `call_with_retry` signature.
        """

        async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
            async def attempt() -> Any:
                try:
                    return await do()
                except (AuthenticationError, AuthorizationError) as exc:
                    raise _Final(exc) from exc

            try:
                return await super().call_with_retry(attempt, fail, *args, **kwargs)
            except _Final as final:
                raise final.error from None

    return RetryExceptCredentials


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
        self._key_head = f"{self._settings.prefix}:".encode()
        self._driver_errors: tuple[type[BaseException], ...] = ()
        self._in_flight = asyncio.Semaphore(self._settings.max_connections)
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
        return self._settings.prefix

    def key(self, id: UUID, class_name: str) -> bytes:
        """The Redis key of a record: `{prefix}:{class_name}:{uuid}`."""
        return b"%b%b:%b" % (self._key_head, class_name.encode(), str(id).encode())

    def _load_driver(self) -> None:
        try:
            import redis.exceptions
        except ImportError:
            raise _import_error(self._scheme) from None
        # OSError covers the socket-level failures redis-py lets through (and asyncio timeouts);
        # the cluster client's own errors (no reachable seed, uncovered slots) are no RedisError.
        self._driver_errors = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)

    def _client_kwargs(self) -> dict[str, Any]:
        settings = self._settings
        kwargs: dict[str, Any] = {
            "username": settings.username,
            "password": settings.password,
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            "retry": _retry(settings.retries),
            "client_name": settings.client_name,
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
            kwargs.update(settings.tls.kwargs())
        return kwargs

    def _writes(self, records: Sequence[StoredRecord]) -> list[tuple[bytes, bytes, int | None]]:
        """(key, value, expiry in ms) per record; refuses the whole batch if any value is too big."""
        limit = self._settings.max_value_size
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
        try:
            # A burst of tasks waits here for a free connection instead of failing with "too many
            # connections"; the model's `timeout` bounds the wait like any other.
            async with self._in_flight:
                return await operation
        except self._driver_errors as exc:
            failure = self._failure(action, exc)
        except BaseException:
            # Cancelled while waiting for a slot: the operation never started and must not be
            # reported as a coroutine that was never awaited.
            close = getattr(operation, "close", None)
            if close is not None:
                close()
            raise
        # Raised outside the except block so neither __cause__ nor __context__ carries the driver
        # exception, whose attributes could hold connection details.
        raise failure

    def _failure(self, action: str, exc: BaseException) -> StorageConnectionError:
        from redis import exceptions as errors

        settings = self._settings
        text = str(exc)
        if isinstance(exc, errors.AuthenticationError | errors.AuthenticationWrongNumberOfArgsError) or (
            "WRONGPASS" in text or "NOAUTH" in text
        ):
            if settings.password is None:
                hint = (
                    "the server requires a password; put it in the storage URL as "
                    "'redis://[username]:password@host:port/db'"
                )
            else:
                user = f"user {settings.username!r}" if settings.username else "the default user"
                hint = f"the server refused the credentials of {user}; check the username and password"
        elif isinstance(exc, errors.NoPermissionError):
            hint = (
                f"the ACL user lacks permission; allow GET, SET, MGET, DEL and SCAN (and EVAL and GETRANGE "
                f"for optimistic_concurrency) on keys "
                f"'{settings.prefix}:*'"
            )
        elif isinstance(exc, errors.TimeoutError | TimeoutError):
            hint = (
                f"no answer within socket_timeout={settings.socket_timeout:g} s "
                f"(connect: {settings.socket_connect_timeout:g} s) after {settings.retries} retries; "
                "the server may be down, overloaded or unreachable"
            )
        elif isinstance(exc, errors.ResponseError):
            hint = "the server refused the command"
        else:
            hint = (
                f"check that the server is running and reachable (gave up after {settings.retries} retries)"
            )
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
        skipped: tuple[type[BaseException], ...] = (*self._driver_errors, TimeoutError)
        try:
            async with asyncio.timeout(min(_POLICY_CHECK_TIMEOUT, self._settings.socket_timeout)):
                configs = await self._memory_configs()
        except skipped as exc:
            _log.debug(
                "could not read the maxmemory-policy of %s (%s); eviction check skipped",
                self._settings.where,
                type(exc).__name__,
            )
            return
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
            await self._guard("save", self._require().set(key, value, px=expiry))
        else:
            pipe = self._pipeline()
            for key, value, expiry in writes:
                pipe.set(key, value, px=expiry)
            await self._guard("save", pipe.execute())
        self.stats.add(written=len(writes))

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
        return f"{_glob_escape(self._settings.prefix)}:{middle}:{tail}".encode()

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


class RedisBackend(_RedisBase):
    """`redis://`, `rediss://` and `unix://`: one server, one connection pool per backend instance."""

    url_options = (*_COMMON_OPTIONS, "db", *_TLS_OPTIONS)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client: Redis | None = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._load_driver()
        from redis.asyncio import Connection, ConnectionPool, Redis, SSLConnection
        from redis.asyncio.connection import UnixDomainSocketConnection

        settings = self._settings
        kwargs = self._client_kwargs()
        kwargs["db"] = settings.db
        if settings.kind == "unix":
            kwargs["path"] = settings.socket_path
            connection_class: type[Connection | UnixDomainSocketConnection] = UnixDomainSocketConnection
        else:
            kwargs["host"], kwargs["port"] = settings.nodes[0]
            connection_class = Connection if settings.tls is None else SSLConnection
        # Bounded by the semaphore in _guard rather than by a BlockingConnectionPool, whose
        # condition variable costs more per command than a whole uncontended semaphore.
        pool = ConnectionPool(connection_class=connection_class, **kwargs)
        # Connections open on first use: the first command reports an unreachable server with
        # the same retries and messages as any later one (the eviction check skips it quietly).
        self._client = Redis.from_pool(pool)
        await self._check_eviction()

    async def _memory_configs(self) -> list[tuple[str, dict[Any, Any]]]:
        return [(self._settings.where, await self._require().config_get("maxmemory*"))]

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # A connection that is already broken needs no goodbye.
            with contextlib.suppress(*self._driver_errors):
                await client.aclose()

    def _require(self) -> Redis:
        return cast("Redis", self._client_or_raise())

    def _pipeline(self) -> Any:
        return self._require().pipeline(transaction=False)

    async def _get_many(self, names: list[bytes]) -> list[bytes | None]:
        values: list[bytes | None] = await self._guard("load", self._require().mget(names))
        return values

    async def _scan_step(self, node: Any, cursor: int, pattern: bytes, count: int) -> tuple[int, list[bytes]]:
        next_cursor, names = await self._guard(
            "scan", self._require().scan(cursor, match=pattern, count=count)
        )
        return int(next_cursor), names


class RedisClusterBackend(_RedisBase):
    """`redis+cluster://` and `rediss+cluster://`: a Redis Cluster through redis-py's cluster client.

    Keys are spread over the slots by their whole name (no hash tag), so records of one class
    are spread over every master. Batches are split per slot and sent as one pipeline per node,
    the nodes in parallel: never a multi-key command across slots.
    """

    _cluster = True
    _label = "Redis Cluster"
    # redis-py's cluster client takes no CA directory, only a CA bundle.
    url_options = (*_COMMON_OPTIONS, "node", *(name for name in _TLS_OPTIONS if name != "ssl_ca_path"))

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._client: RedisCluster | None = None

    async def connect(self) -> None:
        if self._client is not None:
            return
        self._load_driver()
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        kwargs = self._client_kwargs()
        if self._settings.tls is not None:
            kwargs["ssl"] = True
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._settings.nodes],
            max_connections=self._settings.max_connections,
            **kwargs,
        )
        try:
            # Learns the slot map now: a cluster that cannot serve every slot fails here, clearly.
            await self._guard("connect", client.initialize())
        except BaseException:
            await self._close(client)
            raise
        self._client = client
        await self._check_eviction()

    async def _memory_configs(self) -> list[tuple[str, dict[Any, Any]]]:
        client = self._require()
        primaries = sorted(client.get_primaries(), key=lambda node: node.name)
        configs = await asyncio.gather(
            *(client.config_get("maxmemory*", target_nodes=node) for node in primaries)
        )
        return [
            (f"cluster node {node.name}", config) for node, config in zip(primaries, configs, strict=True)
        ]

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close(client)

    async def _close(self, client: RedisCluster) -> None:
        # A node that is already gone needs no goodbye.
        with contextlib.suppress(*self._driver_errors):
            await client.aclose()

    def _require(self) -> RedisCluster:
        return cast("RedisCluster", self._client_or_raise())

    def _pipeline(self) -> Any:
        # Routes each command by its key's slot: one request per node, the nodes concurrently.
        return self._require().pipeline()

    async def _get_many(self, names: list[bytes]) -> list[bytes | None]:
        from redis.crc import key_slot

        # One MGET per slot (a multi-key command must stay inside one slot), all in one
        # cluster pipeline.
        by_slot: dict[int, list[int]] = {}
        for index, name in enumerate(names):
            by_slot.setdefault(key_slot(name), []).append(index)
        pipe = self._pipeline()
        for indexes in by_slot.values():
            pipe.execute_command("MGET", *(names[index] for index in indexes))
        replies: list[list[bytes | None]] = await self._guard("load", pipe.execute())
        values: list[bytes | None] = [None] * len(names)
        for indexes, reply in zip(by_slot.values(), replies, strict=True):
            for index, value in zip(indexes, reply, strict=True):
                values[index] = value
        return values

    async def _write_checked(
        self, records: list[StoredRecord], writes: list[tuple[bytes, bytes, int | None]]
    ) -> list[RevisionConflict]:
        """A script may only touch keys of one slot, so a batch cannot be checked and written in
        one step. First every checked key's revision is read (one pipeline): a conflict found then
        writes nothing. Then one script per slot checks its keys again and writes them: only a
        writer that changes a record between the two steps can leave the other slots' records
        written and this batch's conflict reported."""
        from redis.crc import key_slot

        checked = [index for index, record in enumerate(records) if record.revision is not None]
        pipe = self._pipeline()
        for index in checked:
            # Both ends: which one holds the mark depends on the stored value's form.
            pipe.getrange(writes[index][0], 0, _HEAD_BYTES - 1)
            pipe.getrange(writes[index][0], -_TAIL_BYTES, -1)
        ends: list[bytes] = await self._guard("save", pipe.execute())
        marks = [
            head if head.startswith(_BINARY_HEAD) else tail
            for head, tail in zip(ends[::2], ends[1::2], strict=True)
        ]
        early = [
            conflict
            for index, mark in zip(checked, marks, strict=True)
            if (conflict := check_revision(records[index], _found_revision(mark))) is not None
            and mark != _check_mark(writes[index][1])
        ]
        if early:
            return early
        by_slot: dict[int, list[int]] = {}
        for index, (key, _, _) in enumerate(writes):
            by_slot.setdefault(key_slot(key), []).append(index)
        client = self._require()

        async def run(indexes: list[int]) -> list[RevisionConflict]:
            part = [records[index] for index in indexes]
            part_writes = [writes[index] for index in indexes]
            keys = [key for key, _, _ in part_writes]
            reply = await self._guard(
                "save", client.eval(_CHECKED_WRITE, len(keys), *keys, *_script_arguments(part, part_writes))
            )
            return _conflicts_of(part, reply)

        results = await asyncio.gather(
            *(run(indexes) for indexes in by_slot.values()), return_exceptions=True
        )
        conflicts: list[RevisionConflict] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            conflicts.extend(result)
        return conflicts

    async def _scan_nodes(self) -> list[Any]:
        return sorted(self._require().get_primaries(), key=lambda node: node.name)

    async def _scan_step(self, node: Any, cursor: int, pattern: bytes, count: int) -> tuple[int, list[bytes]]:
        cursors, names = await self._guard(
            "scan", self._require().scan(cursor, match=pattern, count=count, target_nodes=node)
        )
        return int(cursors[node.name]), names
