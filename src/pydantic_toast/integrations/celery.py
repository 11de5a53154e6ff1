"""Celery (and kombu): external models in task arguments and results travel as references.

Two pieces, both the frameworks' own hooks:

- `install()` teaches kombu's JSON serializer (the one Celery uses for task messages and
  results) to encode an `ExternalBaseModel` as its reference: the model is stored by that dump
  (written only if its data changed) and the broker carries `{"class_name": ..., "id": ...}`.
- Celery's `pydantic=True` task option (Celery >= 5.5) validates each argument annotated with a
  model from what arrived — our reference, so the worker loads the record — and dumps a returned
  model with `model_dump()`, which stores it and returns its reference.

    from pydantic_toast.integrations.celery import install
    install()

    @app.task(pydantic=True)
    def summarize(report: Report) -> Summary: ...

    reference = summarize.delay(report).get()       # the broker carried a reference
    summary = Summary.model_validate(reference)

Why loading happens in the task, not in the message decoder: a record that cannot be loaded
then fails the task, reported to the caller like any task error (a decoder failure makes the
worker drop the message and the caller wait forever), and the class a reference loads as comes
from the task's annotation, never from a name in the message.

A retried task re-sends the models it received: they were loaded from the store and are
unchanged, so the retry writes nothing.
"""

from __future__ import annotations

from typing import Any

from ._require import require

require("celery", package="celery", extra="celery")

from kombu.utils.json import register_type  # noqa: E402

from ..base import ExternalBaseModel  # noqa: E402

__all__ = ["install"]


def install() -> None:
    """Encode external models as their references in kombu's JSON (idempotent, process-wide).

    Call it in every process that sends tasks or returns results holding models (the module
    that defines the Celery app is the natural place).
    """
    # No type marker: the body holds the plain reference, which any consumer can validate
    # with the model (Celery's `pydantic=True`, or `Model.model_validate(reference)`).
    register_type(ExternalBaseModel, None, _encode)


def _encode(model: ExternalBaseModel) -> dict[str, Any]:
    # model_dump() stores the data (if it changed since this instance last wrote or loaded it)
    # and returns the reference: the model is serialized once, into the store, never into the body.
    return model.model_dump(mode="json")
