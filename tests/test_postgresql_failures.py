"""The PostgreSQL backend when things go wrong, and SSL: throwaway clusters a test may break.

Every failure must surface as `StorageConnectionError` naming host, port and database, within a
bounded time, with the password nowhere (message, repr, `url`, chained exceptions, traceback).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pytest

import pydantic_toast
from fixtures.postgresql import PostgresServer, driver_dsn, sql, with_options
from fixtures.servers import free_port
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, StorageConnectionError
from pydantic_toast.backends.postgresql import PostgreSQLBackend

pytestmark = pytest.mark.postgresql
asyncpg = pytest.importorskip("asyncpg")

SENTINEL = "Pw-sentinel-7f3a9c"


def user_model(storage: str) -> Any:
    class User(ExternalBaseModel):
        name: str

        model_config = ExternalConfigDict(storage=storage, storage_name=f"User{uuid4().hex}", timeout=20)

    return User


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def assert_no_secret(exc: BaseException, secret: str) -> None:
    """Not in the message, repr, attributes or traceback of the error or anything chained to it."""
    links = list(chain(exc))
    assert links == [exc]  # the driver's exception is summarized, not chained
    for link in links:
        assert secret not in str(link)
        assert secret not in repr(link)
        assert secret not in repr(vars(link))
    assert secret not in "".join(traceback.format_exception(exc))


async def failing_save(url: str, *, within: float) -> StorageConnectionError:
    model = user_model(url)
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        await model(name="x").save()
    assert time.monotonic() - started < within
    return caught.value


@pytest.fixture
def servers(postgresql_server_factory: Callable[..., PostgresServer]) -> Callable[..., PostgresServer]:
    return postgresql_server_factory


# ---------------------------------------------------------------------- cannot connect


async def test_refused_connection_names_the_server() -> None:
    port = free_port()
    exc = await failing_save(f"postgresql://app:{SENTINEL}@127.0.0.1:{port}/appdb", within=5)
    assert f"127.0.0.1:{port}/appdb" in str(exc)
    assert "refused" in str(exc)
    assert exc.url == f"postgresql://app:***@127.0.0.1:{port}/appdb"
    assert_no_secret(exc, SENTINEL)


async def test_unknown_host_fails_within_the_connect_timeout() -> None:
    url = f"postgresql://app:{SENTINEL}@no-such-host.invalid:5433/appdb?connect_timeout=3"
    exc = await failing_save(url, within=8)
    assert "no-such-host.invalid:5433/appdb" in str(exc)
    assert_no_secret(exc, SENTINEL)


async def test_wrong_password_and_missing_database(servers: Callable[..., PostgresServer]) -> None:
    server = servers(password=SENTINEL)
    right = server.url
    wrong = right.replace(SENTINEL, SENTINEL + "-wrong")

    exc = await failing_save(wrong, within=10)
    assert f"127.0.0.1:{server.port}/postgres" in str(exc)
    assert "password" in str(exc)
    assert_no_secret(exc, SENTINEL)

    exc = await failing_save(right.removesuffix("/postgres") + "/no_such_db", within=10)
    assert f"127.0.0.1:{server.port}/no_such_db" in str(exc)
    assert "does not exist" in str(exc)
    assert_no_secret(exc, SENTINEL)

    model = user_model(right)  # and the right password works
    user = model(name="ok")
    assert await model.load(await user.save()) == user
    assert SENTINEL not in repr(PostgreSQLBackend(right))


async def test_a_password_in_the_query_string_is_masked_too(servers: Callable[..., PostgresServer]) -> None:
    server = servers(password=SENTINEL)
    url = f"postgresql://postgres@127.0.0.1:{server.port}/postgres?password={SENTINEL}-wrong"
    backend = PostgreSQLBackend(url)
    with pytest.raises(StorageConnectionError) as caught:
        await backend.connect()
    assert_no_secret(caught.value, SENTINEL)
    assert SENTINEL not in (caught.value.url or "")
    assert SENTINEL not in repr(backend)


# ---------------------------------------------------------------------- timeouts


async def test_statement_timeouts_are_connection_errors_and_do_not_stick(postgresql_url: str) -> None:
    table = f"t_{uuid4().hex[:16]}"
    url = with_options(postgresql_url, table=table, command_timeout="0.5")
    model = user_model(url)
    await model(name="created").save()
    locker = await asyncpg.connect(driver_dsn(postgresql_url))
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')

        exc = await failing_save(url, within=5)
        assert "command_timeout=0.5" in str(exc)

        # The server's own statement_timeout (libpq 'options') is reported the same way.
        server_side = with_options(postgresql_url, table=table, options="-c statement_timeout=300")
        exc = await failing_save(server_side, within=5)
        assert "QueryCanceledError" in str(exc)
        await transaction.rollback()

        user = model(name="after the lock")
        assert await model.load(await user.save()) == user
    finally:
        await locker.close()
        await pydantic_toast.aclose()
        await sql(postgresql_url, f'DROP TABLE IF EXISTS "{table}"')


# ---------------------------------------------------------------------- restarts


async def test_server_restart_mid_run_is_ridden_out(servers: Callable[..., PostgresServer]) -> None:
    server = servers()
    model = user_model(with_options(server.url, max_size="4"))
    users = [model(name=f"u{i}") for i in range(8)]
    references = await model.save_many(users)
    # Several pooled connections, all of which the restart turns stale.
    await asyncio.gather(*(model.load(reference) for reference in references))

    await asyncio.to_thread(server.restart)

    assert await model.load_many(references) == users
    users[0].name = "after restart"
    await users[0].save()
    assert (await model.load(references[0])).name == "after restart"


async def test_server_down_then_back_without_a_process_restart(
    servers: Callable[..., PostgresServer],
) -> None:
    server = servers()
    url = server.url
    model = user_model(url)
    user = model(name="before")
    reference = await user.save()

    await asyncio.to_thread(server.stop)
    started = time.monotonic()
    with pytest.raises(StorageConnectionError) as caught:
        await model.load(reference)
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{server.port}/postgres" in str(caught.value)
    with pytest.raises(StorageConnectionError):
        model.model_validate(reference.model_dump())  # the sync API fails the same way

    await asyncio.to_thread(server.start)
    assert await model.load(reference) == user
    assert model.model_validate(reference.model_dump()) == user


async def test_connect_fails_cleanly_and_retries_on_next_use(servers: Callable[..., PostgresServer]) -> None:
    server = servers()
    await asyncio.to_thread(server.stop)
    model = user_model(server.url)
    with pytest.raises(StorageConnectionError):
        await model(name="x").save()
    await asyncio.to_thread(server.start)
    user = model(name="y")
    assert await model.load(await user.save()) == user


class StaleMaker:
    """A TCP relay in front of a server that can turn every open connection stale at once.

    After `cut()`, a connection that was open before dies on its next request, the way pooled
    connections do after a failover or a NAT timeout; new connections are relayed normally.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.generation = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> None:
        self.generation += 1

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        generation = self.generation
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        self.writers |= {client_writer, server_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while data := await source.read(65536):
                    if from_client and generation != self.generation:
                        break
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                client_writer.close()
                server_writer.close()

        await asyncio.gather(
            pump(client_reader, server_writer, True), pump(server_reader, client_writer, False)
        )

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_stale_pooled_connections_are_replaced_and_the_call_retried_once(postgresql_url: str) -> None:
    parts = urlsplit(postgresql_url)
    relay = StaleMaker(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    table = f"t_{uuid4().hex[:16]}"
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = with_options(urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{port}")), table=table)
    try:
        model = user_model(url)
        users = [model(name=f"u{i}") for i in range(3)]
        references = await model.save_many(users)
        # Three pooled connections, all open when the relay cuts them.
        await asyncio.gather(*(model.load(reference) for reference in references))

        relay.cut()
        before = pydantic_toast.stats()[url]["round_trips"]
        for reference, user in zip(references, users, strict=True):
            assert await model.load(reference) == user

        # One failed attempt in all: the first failure replaced every stale connection.
        assert pydantic_toast.stats()[url]["round_trips"] - before == 4

        relay.cut()
        users[0].name = "saved through a stale pool"
        await users[0].save()
        assert (await model.load(references[0])).name == users[0].name
    finally:
        await pydantic_toast.aclose()
        await relay.close()
        await sql(postgresql_url, f'DROP TABLE IF EXISTS "{table}"')


# ---------------------------------------------------------------------- SSL


async def test_sslmode_require_encrypts_the_connection(servers: Callable[..., PostgresServer]) -> None:
    server = servers(ssl=True)
    name = f"toast_{uuid4().hex[:8]}"
    url = with_options(server.url, sslmode="require", application_name=name)
    model = user_model(url)
    user = model(name="over TLS")
    assert await model.load(await user.save()) == user

    rows = await sql(
        with_options(server.url, sslmode="disable"),
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = $1",
        name,
    )
    assert rows
    assert all(row["ssl"] for row in rows)
    assert all(row["version"].startswith("TLS") for row in rows)


async def test_verify_full_checks_the_certificate(servers: Callable[..., PostgresServer]) -> None:
    server = servers(ssl=True)

    wrong = with_options(server.url, sslmode="verify-full", sslrootcert=str(server.wrong_ca))
    exc = await failing_save(wrong, within=10)
    assert "certificate" in str(exc)
    assert f"127.0.0.1:{server.port}/postgres" in str(exc)

    right = with_options(server.url, sslmode="verify-full", sslrootcert=str(server.certificate))
    model = user_model(right)
    user = model(name="verified")
    assert await model.load(await user.save()) == user


async def test_sslmode_require_against_a_server_without_ssl_is_refused(
    servers: Callable[..., PostgresServer],
) -> None:
    server = servers()
    exc = await failing_save(with_options(server.url, sslmode="require"), within=10)
    assert f"127.0.0.1:{server.port}/postgres" in str(exc)
