"""Celery with a real worker process, RabbitMQ as the broker and Redis as the result backend.

The worker is a `celery worker` subprocess started here; the broker side is read with a plain
AMQP `basic_get` on a queue no worker consumes, to see the bytes a message really carries.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pydantic_toast import CONTEXT_KEY

from .conftest import RABBITMQ, REDIS, require_server

pytest.importorskip("celery")

TESTS = Path(__file__).resolve().parent.parent
SRC = TESTS.parent / "src"
BODY = "lorem ipsum dolor sit amet " * 4000  # ~108 KB of text


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    require_server("RabbitMQ", RABBITMQ, "start it with `rabbitmq-server -detached` (.ci/run does)")
    require_server("Redis", REDIS, "start redis-server on port 6379 (.ci/run does)")
    directory = tmp_path_factory.mktemp("celery")
    env = {
        "TOAST_CELERY_STORAGE": f"sqlite:///{directory / 'toast.db'}",
        "TOAST_CELERY_QUEUE": f"pydantic-toast-tests-{uuid.uuid4().hex[:12]}",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    module = importlib.import_module("integrations.celery_app")
    log = (directory / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "integrations.celery_app",
            "worker",
            # Celery's default pool: the task runs in a forked child of the process that
            # imported the app (and pydantic-toast) before forking.
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "--queues",
            env["TOAST_CELERY_QUEUE"],
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ],
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert module.ping.delay().get(timeout=60) == "pong", (directory / "worker.log").read_text()
        yield module
    finally:
        worker.terminate()  # SIGTERM: Celery's warm shutdown
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        with module.app.connection_for_write() as connection:
            connection.default_channel.queue_delete(env["TOAST_CELERY_QUEUE"])
        module.app.pool.force_close_all()  # the producer pool's broker connections
        module.app.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stored_row(app: ModuleType, record_id: Any) -> tuple[str, str]:
    path = app.STORAGE.removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as connection, connection:
        row = connection.execute(
            "SELECT created_at, updated_at FROM external_models WHERE id = ?", (str(record_id),)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_message_on_the_broker_holds_the_reference_not_the_data(celery_app: ModuleType) -> None:
    report = celery_app.Report(title="Q3", body=BODY)
    inspect_queue = f"{celery_app.QUEUE}-inspect"
    with celery_app.app.connection_for_write() as connection:
        try:
            celery_app.summarize.apply_async((report,), queue=inspect_queue)
            # The same data sent the way it would travel without the adapter, for the size figure.
            inline = report.model_dump(context={CONTEXT_KEY: "inline"})
            celery_app.summarize.apply_async((inline,), queue=inspect_queue)
            channel = connection.default_channel
            with_adapter = channel.basic_get(inspect_queue, no_ack=True)
            without = channel.basic_get(inspect_queue, no_ack=True)
        finally:
            connection.default_channel.queue_delete(inspect_queue)
    assert with_adapter is not None
    assert without is not None
    body, plain = (m.body if isinstance(m.body, bytes) else m.body.encode() for m in (with_adapter, without))
    assert str(report.external_reference.id).encode() in body
    assert b"lorem ipsum" not in body
    assert len(body) < 1024 < len(BODY) < len(plain)
    print(f"celery message body: {len(body)} B with the adapter, {len(plain)} B without")


def test_a_real_worker_resolves_arguments_and_returns_a_model(celery_app: ModuleType) -> None:
    import redis

    report = celery_app.Report(title="Q3", body=BODY)
    result = celery_app.summarize.delay(report)
    reference = result.get(timeout=30)
    summary = celery_app.Summary.model_validate(reference)
    assert summary.title == "Q3"
    assert summary.words == len(BODY.split())
    # The result backend holds the reference too.
    raw = redis.Redis.from_url(celery_app.app.conf.result_backend).get(f"celery-task-meta-{result.id}")
    assert raw is not None
    assert str(summary.external_reference.id).encode() in raw
    assert len(raw) < 1024


def test_a_retried_task_does_not_store_its_arguments_again(celery_app: ModuleType) -> None:
    report = celery_app.Report(title="retried", body=BODY)
    report.model_dump()
    before = stored_row(celery_app, report.external_reference.id)
    summary = celery_app.Summary.model_validate(celery_app.flaky_summarize.delay(report).get(timeout=30))
    assert summary.title == "retried"
    # Two retries re-sent the argument the worker had loaded: unchanged, so never written again.
    assert stored_row(celery_app, report.external_reference.id) == before


def test_a_reference_to_a_missing_record_fails_the_task(celery_app: ModuleType) -> None:
    missing = {"class_name": "Report", "id": str(uuid.uuid4())}
    result = celery_app.summarize.delay(missing)
    # Celery's JSON results rebuild only exceptions it can construct from a message: it reports
    # this one as an Exception naming it.
    with pytest.raises(Exception, match=r"RecordNotFoundError.*no stored Report record"):
        result.get(timeout=30)
    assert result.state == "FAILURE"
