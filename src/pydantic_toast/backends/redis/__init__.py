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

The package by job: _config (URL options), _values (the value layout above), _scripts (the Lua
script of checked writes), _retry, _slots (the bound on commands in flight), _timeouts (socket
timeouts with one timer per backend), _base (what both clients share), single and cluster.
"""

from ._config import RedisClusterOptions, RedisClusterTLSOptions, RedisOptions, RedisTLSOptions
from ._config import _settings as _settings
from .cluster import RedisClusterBackend
from .single import RedisBackend

__all__ = [
    "RedisBackend",
    "RedisClusterBackend",
    "RedisClusterOptions",
    "RedisClusterTLSOptions",
    "RedisOptions",
    "RedisTLSOptions",
]
