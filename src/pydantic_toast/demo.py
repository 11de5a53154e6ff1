"""The quickstart story, runnable with no server: `python -m pydantic_toast demo`."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from .base import ExternalBaseModel, ExternalConfigDict
from .runtime import aclose
from .url import mask_secrets

__all__ = ["demo"]


def demo(storage: str | None = None) -> None:
    """The quickstart story: define, dump to a reference, restore, then the async API."""
    with tempfile.TemporaryDirectory(prefix="pydantic-toast-demo-") as directory:
        url = storage or f"sqlite:///{Path(directory) / 'demo.db'}"
        print(f"storage    {mask_secrets(url)}")

        class UserProfile(ExternalBaseModel):
            name: str
            email: str
            age: int
            biography: str

            model_config = ExternalConfigDict(storage=url)

        user = UserProfile(name="Ada Lovelace", email="ada@example.com", age=36, biography="Analyst. " * 500)
        size = len(user.model_dump_json(context={"pydantic_toast": "inline"}))
        print(f"model      {size} bytes of JSON data")

        reference = user.model_dump()
        print(f"dumped     {json.dumps(reference)}  ({len(json.dumps(reference))} bytes)")

        restored = UserProfile.model_validate(reference)
        print(
            f"restored   name={restored.name!r} age={restored.age} biography={len(restored.biography)} chars"
        )
        print(f"equal      {restored == user}")

        async def async_api() -> None:
            user.age = 37
            saved = await user.save()
            loaded = await UserProfile.load(saved)
            print(
                f"async      await user.save() kept the id: {saved.model_dump() == reference}; "
                f"await UserProfile.load(ref).age == {loaded.age}"
            )
            # A store given with --storage may be a real one: leave nothing behind in it.
            print(f"deleted    await user.delete() == {await user.delete()}")
            await aclose()

        asyncio.run(async_api())
