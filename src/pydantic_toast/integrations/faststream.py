"""FastStream: messages carry external models as references, written on the publisher's loop.

FastStream already encodes a pydantic model with `model_dump_json()`, which for an external
model stores it and returns its reference, and a subscriber annotated with the model validates
the reference back into the full model. What that leaves out, `ToastMiddleware` adds:

- The write happens on the publisher's event loop (`pydantic_toast.adump`): the loop keeps
  serving other work during the I/O instead of waiting for the library's sync bridge, and every
  external model in one message (nested in a plain model, in a list or dict) is written in one
  batch per store. FastStream then encodes the small JSON-ready result: each model's data is
  serialized once, into the store.
- An unchanged model (one the subscriber loaded and publishes on) is not written again.

    broker = RabbitBroker("amqp://…", middlewares=[ToastMiddleware])

    @broker.subscriber("reports")
    async def handle(report: Report) -> None: ...   # the full model, loaded from the store

    await broker.publish(report, "reports")         # the broker carries {"class_name": ..., "id": ...}

On the consuming side the subscriber's argument is validated by FastStream (fast-depends) with
pydantic's sync call, so the record is loaded through the library's bridge thread while the
subscriber's loop waits for it, as any sync pydantic validation would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ._require import require

require("faststream", package="faststream", extra="faststream")

from faststream import BaseMiddleware  # noqa: E402
from faststream.response import PublishCommand  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from .. import adump  # noqa: E402

__all__ = ["ToastMiddleware"]


class ToastMiddleware(BaseMiddleware):
    """Stores the external models of every published message on the running loop, in one batch."""

    async def publish_scope(
        self, call_next: Callable[[PublishCommand], Awaitable[Any]], cmd: PublishCommand
    ) -> Any:
        if _holds_models(cmd.body):
            cmd.body = await adump(cmd.body, mode="json")
        return await call_next(cmd)


def _holds_models(body: Any) -> bool:
    # Bytes, text and None go out untouched, as FastStream sends them; anything pydantic can
    # hold a model is dumped (a plain dict of numbers costs one cheap TypeAdapter pass).
    if isinstance(body, BaseModel):
        return True
    return isinstance(body, list | tuple | dict)
