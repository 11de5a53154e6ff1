"""redis-py's Retry with this library's backoff, minus retries of refused credentials."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio.retry import Retry

# The n-th retry waits a random time up to min(1 s, 50 ms * 2**n): a restart or failover is ridden
# out within about a second with the default 3 retries, and a dead server is reported quickly.
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0


def _retry(retries: int) -> Retry:
    from redis.backoff import ExponentialWithJitterBackoff

    # Connection errors and timeouts (redis-py's default set): every command we send (SET, MSET,
    # GET, MGET, DEL, SCAN, PTTL) is safe to send twice.
    return _retry_class()(ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), retries)


@functools.cache
def _retry_class() -> type[Retry]:
    from redis.asyncio.retry import Retry
    from redis.exceptions import AuthenticationError, AuthorizationError

    credentials = (AuthenticationError, AuthorizationError)

    def not_credentials(error: Exception) -> bool:
        return not isinstance(error, credentials)

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
            check = not_credentials
            if is_retryable is not None:
                check = lambda error: not_credentials(error) and is_retryable(error)  # noqa: E731
            retries = self._retries

            async def failed(error: Exception, failures: int) -> None:
                # Called after each failed attempt, the last one too: a WARNING for those
                # that another attempt follows. Only runs on failures: free otherwise.
                if failures <= retries:
                    from ... import observability

                    observability.retrying(
                        "redis", "command", error, attempt=failures + 1, attempts=retries + 1
                    )
                await (fail(error, failures) if with_failure_count else fail(error))

            return Retry.call_with_retry(self, do, failed, check, True)

    return RetryUnlessCredentials
