"""Under trio (through anyio) the sync API works and the async API says clearly why it cannot."""

from __future__ import annotations

import anyio
import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    ExternalStorageError,
    UnsupportedEventLoopError,
)

pytestmark = pytest.mark.reliability

pytest.importorskip("trio")


def test_the_sync_api_works_under_trio(storage_url: str) -> None:
    class Note(ExternalBaseModel):
        text: str
        model_config = ExternalConfigDict(storage=storage_url)

    async def main() -> str:
        reference = Note(text="from trio").model_dump()
        # Off trio's thread too, as a trio program should call blocking code.
        await anyio.to_thread.run_sync(lambda: Note(text="in a worker").model_dump())
        [dumped] = pydantic_toast.dump([Note(text="batched")])
        assert Note.model_validate(dumped).text == "batched"
        return Note.model_validate(reference).text

    assert anyio.run(main, backend="trio") == "from trio"
    pydantic_toast.close()


class Left(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="memory://trio-left")


class Right(ExternalBaseModel):
    x: int
    model_config = ExternalConfigDict(storage="memory://trio-right")


def test_the_async_api_under_trio_raises_a_library_error_naming_the_way_out() -> None:
    reference = Left(x=1).model_dump()
    calls = {
        "save": lambda: Left(x=1).save(),
        "load": lambda: Left.load(reference),
        "load_many": lambda: Left.load_many([reference]),
        "save_many across two stores": lambda: Left.save_many([Left(x=1), Right(x=2)]),
        "adump across two stores": lambda: pydantic_toast.adump([Left(x=1), Right(x=2)]),
        "delete": lambda: Left.delete(reference),
        "aclose": pydantic_toast.aclose,
    }

    async def main() -> dict[str, BaseException | None]:
        outcome: dict[str, BaseException | None] = {}
        for name, call in calls.items():
            try:
                await call()
            except BaseException as exc:  # recorded, checked below
                outcome[name] = exc
            else:
                outcome[name] = None
        return outcome

    for name, exc in anyio.run(main, backend="trio").items():
        assert isinstance(exc, UnsupportedEventLoopError), (name, exc)
        assert isinstance(exc, ExternalStorageError)
        assert isinstance(exc, RuntimeError)  # what asyncio itself raises there
        message = str(exc)
        assert "needs a running asyncio event loop" in message
        assert "sync API" in message
    assert Left.model_validate(reference).x == 1


async def test_the_async_api_is_unchanged_under_asyncio() -> None:
    reference = await Left(x=5).save()
    assert (await Left.load(reference)).x == 5
