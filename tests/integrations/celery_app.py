"""The Celery app the worker subprocess runs and the tests send to (one module: same classes).

Configured from the environment the test fixture sets: broker, result backend, queue, and the
pydantic-toast storage both processes share.
"""

from __future__ import annotations

import os

from celery import Celery, Task

from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.integrations.celery import install

install()

STORAGE = os.environ.get("TOAST_CELERY_STORAGE", "memory://celery")
QUEUE = os.environ.get("TOAST_CELERY_QUEUE", "pydantic-toast-tests")

app = Celery(
    "toast_celery_tests",
    broker=os.environ.get("TOAST_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("TOAST_CELERY_BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=300,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class Report(ExternalBaseModel):
    title: str
    body: str
    model_config = ExternalConfigDict(storage=STORAGE)


class Summary(ExternalBaseModel):
    title: str
    words: int
    model_config = ExternalConfigDict(storage=STORAGE)


@app.task
def ping() -> str:
    return "pong"


@app.task(pydantic=True)
def summarize(report: Report) -> Summary:
    assert isinstance(report, Report), type(report)
    return Summary(title=report.title, words=len(report.body.split()))


@app.task(bind=True, pydantic=True, max_retries=3, default_retry_delay=0)
def flaky_summarize(self: Task, report: Report) -> Summary:
    if self.request.retries < 2:
        raise self.retry()
    return Summary(title=report.title, words=len(report.body.split()))
