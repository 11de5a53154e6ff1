"""Redis URLs: every option of a redis://, unix:// or redis+cluster:// URL, validated once."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ...exceptions import StorageValidationError
from ...url import StorageURL
from .._options import URLOptions

if TYPE_CHECKING:
    pass

DEFAULT_PREFIX = "pydantic_toast"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_CONNECTIONS = 50
# Redis refuses bulk strings above proto-max-bulk-len, 512 MB unless the server is reconfigured.
DEFAULT_MAX_VALUE_SIZE = 512 * 1024 * 1024

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
