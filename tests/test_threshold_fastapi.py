"""FastAPI and `offload_threshold`: a response holds small models inline and large ones as
references, a request takes either, and the OpenAPI document shows both shapes.

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

from typing import Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.url import StorageURL


def build_app(storage: str) -> tuple[FastAPI, Any]:
    class Attachment(ExternalBaseModel):
        name: str
        body: str
        model_config = ExternalConfigDict(storage=storage, offload_threshold=256)

    class Message(BaseModel):
        text: str
        attachments: list[Attachment]

    app = FastAPI()

    @app.post("/messages")
    def create(message: Message) -> Message:
        return message

    @app.post("/attachments")
    async def create_attachment(attachment: Attachment) -> Attachment:
        return attachment

    @app.post("/sizes")
    def sizes(message: Message) -> list[int]:
        return [len(a.body) for a in message.attachments]

    return app, Attachment


def written(storage: str) -> int:
    return pydantic_toast.stats().get(StorageURL.parse(storage).masked, {}).get("records_written", 0)


async def test_responses_are_inline_below_the_threshold_and_references_above(storage_url: str) -> None:
    app, _ = build_app(storage_url)
    small = {"name": "note.txt", "body": "hello"}
    large = {"name": "log.txt", "body": "line\n" * 200}
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        before = written(storage_url)
        response = await client.post("/messages", json={"text": "t", "attachments": [small, large]})
        assert response.status_code == 200, response.text
        inline, reference = response.json()["attachments"]
        assert inline == small
        assert set(reference) == {"class_name", "id"}
        assert written(storage_url) - before == 1

        # Requests take both shapes, and a reference is loaded.
        sizes = await client.post("/sizes", json={"text": "t", "attachments": [inline, reference]})
        assert sizes.status_code == 200, sizes.text
        assert sizes.json() == [5, 1000]

        alone = await client.post("/attachments", json=small)
        assert alone.json() == small
        stored = await client.post("/attachments", json=large)
        assert set(stored.json()) == {"class_name", "id"}


def test_openapi_shows_both_shapes_for_requests_and_responses(memory_url: str) -> None:
    app, _ = build_app(memory_url)
    schemas = app.openapi()["components"]["schemas"]
    for mode in ("Input", "Output"):
        message = schemas[f"Message-{mode}"] if f"Message-{mode}" in schemas else schemas["Message"]
        items = message["properties"]["attachments"]["items"]
        attachment = schemas[items["$ref"].rsplit("/", 1)[1]]
        reference, data = attachment["anyOf"]
        assert reference["required"] == ["class_name", "id"]
        assert set(data["properties"]) == {"name", "body"}
    response = app.openapi()["paths"]["/attachments"]["post"]["responses"]["200"]
    ref = response["content"]["application/json"]["schema"]["$ref"]
    assert len(schemas[ref.rsplit("/", 1)[1]]["anyOf"]) == 2
