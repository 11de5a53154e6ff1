"""Redis URLs: every option of a redis://, unix:// or redis+cluster:// URL, validated once.

The options are four models, one per kind of URL: single server or cluster, plain or TLS. A TLS
option in a plain URL is refused with a hint to use the TLS scheme; the cluster takes `node` and
no `db` (and no `ssl_ca_path`: redis-py's cluster client has no CA directory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ...exceptions import StorageValidationError
from ...url import StorageURL
from .._options import BackendOptions, Flag

# Braces would make Redis Cluster hash only part of every key (a hash tag), piling all records
# into one slot; whitespace and control characters make keys painful to use from redis-cli.
_PREFIX = re.compile(r"^[^\s{}\x00-\x1f\x7f]{1,200}$")
_HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:/\[\]@,]+))(?::(?P<port>\d{1,5}))?$")


def _prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(
            "must be 1 to 200 characters without whitespace, control characters or braces (braces "
            "would make Redis Cluster put every key in one slot)"
        )
    return prefix


def _lower(raw: object) -> object:
    return raw.lower() if isinstance(raw, str) else raw


def _none_if_empty(raw: object) -> object:
    return raw or None


class _CommonOptions(BackendOptions):
    """What every Redis URL takes."""

    prefix: Annotated[str, AfterValidator(_prefix)] = Field(
        "pydantic_toast", description="first part of every key"
    )
    socket_timeout: float = Field(5.0, ge=0.001, description="seconds to wait for one reply")
    socket_connect_timeout: float = Field(
        2.0, ge=0.001, description="seconds to wait for a connection and handshake"
    )
    retries: int = Field(3, ge=0, description="retries after a connection error or timeout")
    max_connections: int = Field(50, ge=1, description="commands in flight at once per backend instance")
    # Redis refuses bulk strings above proto-max-bulk-len, 512 MB unless the server is reconfigured.
    max_value_size: int = Field(
        512 * 1024 * 1024, ge=1, description="largest encoded envelope, in bytes, a save will send"
    )
    client_name: Annotated[str | None, BeforeValidator(_none_if_empty)] = Field(
        None, description="CLIENT SETNAME for every connection"
    )


class RedisOptions(_CommonOptions):
    """`redis://` and `unix://`."""

    backend = "redis"
    db: int = Field(0, ge=0, description="database number")


class RedisClusterOptions(_CommonOptions):
    """`redis+cluster://`."""

    backend = "redis cluster"
    node: tuple[str, ...] = Field((), description="more seed nodes, host:port, repeatable or comma-separated")


class _TLSOptions(BackendOptions):
    """What a TLS URL takes on top (rediss://, rediss+cluster://)."""

    ssl_cert_reqs: Annotated[Literal["none", "optional", "required"], BeforeValidator(_lower)] = Field(
        "required", description="whether the server's certificate is verified"
    )
    ssl_ca_certs: str | None = Field(None, description="CA bundle file")
    ssl_certfile: str | None = Field(None, description="client certificate file")
    ssl_keyfile: str | None = Field(None, description="client key file")
    # None: true unless ssl_cert_reqs=none (a certificate not verified has no verified host name).
    ssl_check_hostname: Flag | None = Field(None, description="match the certificate against the host name")

    @model_validator(mode="after")
    def _hostname_needs_verification(self) -> Self:
        if self.ssl_check_hostname and self.ssl_cert_reqs == "none":
            raise ValueError(
                "ssl_check_hostname=true needs a verified certificate; set ssl_check_hostname=false "
                "when ssl_cert_reqs=none (nothing is verified)"
            )
        return self

    def tls_kwargs(self) -> dict[str, Any]:
        given = {
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_ca_path": getattr(self, "ssl_ca_path", None),
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_check_hostname": (
                self.ssl_cert_reqs != "none" if self.ssl_check_hostname is None else self.ssl_check_hostname
            ),
        }
        # Only what the URL set: redis-py's cluster client does not take every TLS keyword.
        return {name: value for name, value in given.items() if value is not None}


class RedisTLSOptions(RedisOptions, _TLSOptions):
    """`rediss://`."""

    ssl_ca_path: str | None = Field(None, description="directory of CA certificates")


class RedisClusterTLSOptions(RedisClusterOptions, _TLSOptions):
    """`rediss+cluster://`."""


_Options = RedisOptions | RedisTLSOptions | RedisClusterOptions | RedisClusterTLSOptions


@dataclass(frozen=True, slots=True)
class _Settings:
    """Everything a Redis URL says, validated once: `check_url` and the backend share it."""

    kind: Literal["tcp", "unix", "cluster"]
    nodes: tuple[tuple[str, int], ...]
    socket_path: str | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    options: _Options = field(repr=False)
    shown: str

    @property
    def tls(self) -> _TLSOptions | None:
        return self.options if isinstance(self.options, _TLSOptions) else None

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
    tls = url.scheme in ("rediss", "rediss+cluster")
    plain: type[RedisOptions | RedisClusterOptions] = RedisClusterOptions if cluster else RedisOptions
    model: type[_Options] = (RedisClusterTLSOptions if cluster else RedisTLSOptions) if tls else plain
    if not tls:
        tls_only = set(RedisTLSOptions.option_fields()) - set(RedisOptions.option_fields())
        stray_tls = sorted({name for name, _ in url.query} & tls_only)
        if stray_tls:
            secure = "rediss+cluster" if cluster else "rediss"
            raise StorageValidationError(
                f"TLS option(s) {stray_tls} in {url.masked!r} need a TLS URL; use '{secure}://…'",
                expected=f"{secure}://",
                actual=url.scheme,
            )
    options = model.from_url(url)

    kind: Literal["tcp", "unix", "cluster"]
    socket_path: str | None = None
    if isinstance(options, RedisClusterOptions):
        kind = "cluster"
        nodes = _cluster_nodes(url, options.node)
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
        db = options.db
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

    return _Settings(
        kind=kind,
        nodes=nodes,
        socket_path=socket_path,
        db=db,
        # `redis://:password@host` means the default user, not a user named "".
        username=url.username or None,
        password=url.password or None,
        options=options,
        shown=url.masked,
    )


def _database(url: StorageURL, options: RedisOptions) -> int:
    path = url.path.strip("/")
    if not path:
        return options.db
    if not path.isdigit():
        raise StorageValidationError(
            f"the path of Redis URL {url.masked!r} must be a database number such as '/0', not {url.path!r}",
            expected="/<db number>",
            actual=url.path,
        )
    from_path = int(path)
    if "db" in options.model_fields_set and options.db != from_path:
        raise StorageValidationError(
            f"Redis URL {url.masked!r} names database {from_path} in its path and {options.db} "
            "in ?db=; keep one",
            expected=from_path,
            actual=options.db,
        )
    return from_path


def _cluster_nodes(url: StorageURL, seeds: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    if not url.host:
        raise StorageValidationError(
            f"Redis Cluster URL {url.masked!r} names no seed node; write "
            "'redis+cluster://host:port?node=host2:port2' (one reachable seed is enough)",
            expected="redis+cluster://host:port",
            actual=url.masked,
        )
    nodes = [(url.host, url.port or 6379)]
    for value in seeds:
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
