"""redis-py's Retry with this library's backoff, minus retries of refused credentials."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import redis.retry
    from redis.asyncio.retry import Retry
    from redis.backoff import AbstractBackoff

# The n-th retry waits a random time up to min(1 s, 50 ms * 2**n): a restart or failover is ridden
# out within about a second with the default 3 retries, and a dead server is reported quickly.
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0


def _backoff() -> AbstractBackoff:
    from redis.backoff import ExponentialWithJitterBackoff

    return ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE)


def _retry(retries: int) -> Retry:
    # Connection errors and timeouts (redis-py's default set): every command we send (SET, MSET,
    # GET, MGET, DEL, SCAN, PTTL) is safe to send twice.
    return _retry_class()(_backoff(), retries)


def _sync_retry(retries: int, time_left: Callable[[], float]) -> redis.retry.Retry:
    """The same policy for redis-py's sync client, within the caller's deadline: `time_left()`
    is the seconds left of the running call; no retry starts, and no backoff sleeps, past it."""
    return _sync_retry_class()(cast("AbstractBackoff", _DeadlineBackoff(_backoff(), time_left)), retries)


def _not_credentials(error: Exception) -> bool:
    from redis.exceptions import AuthenticationError, AuthorizationError

    return not isinstance(error, (AuthenticationError, AuthorizationError))


def _retryable(is_retryable: Any) -> Callable[[Exception], bool]:
    if is_retryable is None:
        return _not_credentials
    return lambda error: _not_credentials(error) and is_retryable(error)


def _note_failure(error: Exception, failures: int, retries: int) -> None:
    # Called after each failed attempt, the last one too: a WARNING for those that another
    # attempt follows. Only runs on failures: free otherwise.
    if failures <= retries:
        from ... import observability

        observability.retrying("redis", "command", error, attempt=failures + 1, attempts=retries + 1)


@functools.cache
def _retry_class() -> type[Retry]:
    from redis.asyncio.retry import Retry

    class RetryUnlessCredentials(Retry):
        """Retries like redis-py's Retry, except refused credentials: asking again with the
        same password only delays the error and floods the server's ACL log.

        redis-py asks `is_retryable` before retrying; this fills it in. A plain function
        returning redis-py's own coroutine: no extra coroutine per command (every command
        goes through here).
        """

        def call_with_retry(
            self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
        ) -> Any:
            retries = self._retries

            async def failed(error: Exception, failures: int) -> None:
                _note_failure(error, failures, retries)
                await (fail(error, failures) if with_failure_count else fail(error))

            return Retry.call_with_retry(self, do, failed, _retryable(is_retryable), True)

    return RetryUnlessCredentials


@functools.cache
def _sync_retry_class() -> type[redis.retry.Retry]:
    from redis.retry import Retry

    class SyncRetryUnlessCredentials(Retry):
        """`RetryUnlessCredentials` for the sync client; its backoff knows the call's deadline."""

        def call_with_retry(
            self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
        ) -> Any:
            retries = self._retries
            backoff: Any = self._backoff
            in_time = backoff.in_time
            check = _retryable(is_retryable)

            def failed(error: Exception, failures: int) -> None:
                _note_failure(error, failures, retries)
                fail(error, failures) if with_failure_count else fail(error)

            return Retry.call_with_retry(self, do, failed, lambda error: in_time() and check(error), True)

    return SyncRetryUnlessCredentials


class _DeadlineBackoff:
    """A backoff that never sleeps past the running call's deadline."""

    def __init__(self, backoff: AbstractBackoff, time_left: Callable[[], float]) -> None:
        self._backoff: Any = backoff  # redis-py leaves reset() untyped
        self._time_left = time_left

    def in_time(self) -> bool:
        return self._time_left() > 0

    def reset(self) -> None:
        self._backoff.reset()

    def compute(self, failures: int) -> float:
        wait: float = self._backoff.compute(failures)
        return max(0.0, min(wait, self._time_left()))
