"""Toast scenarios: a `Toast(...)` field against storing the value by hand, and an unchanged re-dump.

The hand-written contender does what a user would do without the library: store the text as a
record of its own under a new UUID (the same pooled baseline as the other scenarios), and put the
id in the message; loading reads that record back and validates it.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Annotated, Any
from uuid import UUID, uuid4

from baselines import Baseline
from pydantic import BaseModel
from timing import Contender

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalTypeAdapter, Toast

__all__ = ["toast_dump", "toast_load", "toast_redump_unchanged"]


class ToastBlob(BaseModel):
    """The hand-written contender's record: the text, stored on its own."""

    text: str


class HandMessage(BaseModel):
    role: str
    content_id: UUID


def _storage(model: type[ExternalBaseModel]) -> str:
    return model.__toast_settings__.url.raw


def _message_class(storage: str) -> type[BaseModel]:
    class ToastMessage(BaseModel):
        role: str
        content: Annotated[str, Toast(storage=storage)]

    return ToastMessage


def _texts(size: int) -> Callable[[], str]:
    """A new text of about `size` characters per call: every dump has something new to write."""
    base = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    numbers = count()
    return lambda: f"{next(numbers)} {base}"


def toast_dump(size: int) -> Callable[[Any], Any]:
    async def build(env: Any) -> list[Contender]:
        storage = _storage(env.models.payload)
        message_cls = _message_class(storage)
        baseline: Baseline = env.baseline
        toast_text, hand_text = _texts(size), _texts(size)

        async def toast() -> object:
            return await pydantic_toast.adump(message_cls(role="user", content=toast_text()), mode="json")

        async def hand() -> object:
            record_id = uuid4()
            await baseline.save(record_id, ToastBlob(text=hand_text()))
            return HandMessage(role="user", content_id=record_id).model_dump(mode="json")

        return [Contender("pydantic-toast", "toast", toast), Contender("hand-written", "baseline", hand)]

    return build


def toast_load(size: int) -> Callable[[Any], Any]:
    async def build(env: Any) -> list[Contender]:
        storage = _storage(env.models.payload)
        adapter: ExternalTypeAdapter[str] = ExternalTypeAdapter(str, storage)
        text = _texts(size)()
        reference = await adapter.save_external(text)
        pydantic_toast.Toast.forget_stored()
        if await adapter.load_external(reference) != text:
            raise AssertionError("pydantic-toast loaded a different text than it saved")
        baseline: Baseline = env.baseline
        record_id = uuid4()
        await baseline.save(record_id, ToastBlob(text=text))
        if (await baseline.load(record_id, ToastBlob)).text != text:
            raise AssertionError("hand-written loaded a different text than it saved")

        async def toast() -> object:
            return await adapter.load_external(reference)

        async def hand() -> object:
            return await baseline.load(record_id, ToastBlob)

        return [Contender("pydantic-toast", "toast", toast), Contender("hand-written", "baseline", hand)]

    return build


def toast_redump_unchanged(size: int) -> Callable[[Any], Any]:
    async def build(env: Any) -> list[Contender]:
        storage = _storage(env.models.payload)
        message = _message_class(storage)(role="user", content=_texts(size)())
        first = await pydantic_toast.adump(message, mode="json")
        masked = env.models.payload.__toast_settings__.url.masked
        before = pydantic_toast.stats()[masked]["records_written"]
        if await pydantic_toast.adump(message, mode="json") != first:
            raise AssertionError("re-dumping an unchanged value gave another reference")
        written = pydantic_toast.stats()[masked]["records_written"] - before
        if written != 0:
            raise AssertionError(f"re-dumping an unchanged Toast value wrote {written} record(s), not 0")
        baseline: Baseline = env.baseline
        record_id = uuid4()
        blob = ToastBlob(text=message.content)  # type: ignore[attr-defined]

        async def toast() -> object:
            return await pydantic_toast.adump(message, mode="json")

        async def hand() -> object:
            await baseline.save(record_id, blob)  # by hand, nothing knows it is already stored
            return HandMessage(role="user", content_id=record_id).model_dump(mode="json")

        return [Contender("pydantic-toast", "toast", toast), Contender("hand-written", "baseline", hand)]

    return build
