"""FastAPI: Toast fields in request and response bodies, and both shapes in the OpenAPI document.

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
and the models are built per backend inside a function.
"""

from typing import Annotated, Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

import pydantic_toast
from fixtures.traffic import traffic
from pydantic_toast import Toast

TRANSCRIPT = "user: hello\nassistant: hi there\n" * 200


def build_app(storage: str) -> tuple[FastAPI, type[BaseModel]]:
    class Message(BaseModel):
        role: str
        content: Annotated[str, Toast(storage=storage, threshold=256)]

    class Conversation(BaseModel):
        title: str
        messages: list[Message]

    app = FastAPI()

    @app.post("/conversations")
    def create(conversation: Conversation) -> Conversation:
        return conversation

    @app.post("/conversations/batched")
    async def create_batched(conversation: Conversation) -> dict[str, Any]:
        # One write batch per backend for the whole response, on this loop.
        result: dict[str, Any] = await pydantic_toast.adump(conversation, mode="json")
        return result

    @app.post("/lengths")
    async def lengths(conversation: Conversation) -> list[int]:
        return [len(message.content) for message in conversation.messages]

    return app, Conversation


def body() -> dict[str, Any]:
    return {
        "title": "support",
        "messages": [
            {"role": "user", "content": "short"},
            {"role": "assistant", "content": TRANSCRIPT},
            {"role": "user", "content": TRANSCRIPT + "!"},
        ],
    }


async def test_responses_carry_references_and_requests_accept_both_shapes(storage_url: str) -> None:
    app, _ = build_app(storage_url)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        for path in ("/conversations", "/conversations/batched"):
            response = await client.post(path, json=body())
            assert response.status_code == 200, response.text
            messages = response.json()["messages"]
            assert messages[0]["content"] == "short"
            assert list(messages[1]["content"]) == ["$toast"]
            assert list(messages[2]["content"]) == ["$toast"]

        # The references sent back in a request resolve to the values.
        lengths = await client.post("/lengths", json=response.json())
        assert lengths.json() == [5, len(TRANSCRIPT), len(TRANSCRIPT) + 1]


async def test_the_batched_response_is_one_round_trip(storage_url: str) -> None:
    app, _ = build_app(storage_url)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        with traffic(storage_url) as writing:
            response = await client.post("/conversations/batched", json=body())
    assert response.status_code == 200
    assert writing.round_trips == 1
    assert writing.written == 2


async def test_a_bad_reference_in_a_request_is_a_422_without_io(storage_url: str) -> None:
    app, _ = build_app(storage_url)
    bad = body()
    bad["messages"][1]["content"] = {
        "$toast": {"class_name": "str", "id": "00000000-0000-8000-8000-000000000000"}
    }
    wrong_class = body()
    wrong_class["messages"][1]["content"] = {"$toast": {"class_name": "bytes", "id": "not-an-id"}}
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        missing = await client.post("/lengths", json=bad)
        with traffic(storage_url) as reading:
            refused = await client.post("/lengths", json=wrong_class)
    assert missing.status_code == 422
    assert refused.status_code == 422
    assert reading.round_trips == 0


async def test_openapi_shows_the_reference_and_the_value(memory_url: str) -> None:
    app, _ = build_app(memory_url)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        document = (await client.get("/openapi.json")).json()
    # With a threshold, requests and responses both carry either shape: one schema serves both.
    content = document["components"]["schemas"]["Message"]["properties"]["content"]
    reference, value = content["anyOf"]
    assert reference["required"] == ["$toast"]
    assert reference["properties"]["$toast"]["properties"]["class_name"]["const"] == "str"
    assert value == {"type": "string"}


async def test_openapi_of_an_always_stored_field_responds_with_references_only(memory_url: str) -> None:
    class Upload(BaseModel):
        data: Annotated[bytes, Toast(storage=memory_url)]

    app = FastAPI()

    @app.post("/uploads")
    def upload(item: Upload) -> Upload:
        return item

    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        document = (await client.get("/openapi.json")).json()
        response = await client.post("/uploads", json={"data": "abc"})
        again = await client.post("/uploads", json=response.json())
    schemas = document["components"]["schemas"]
    assert len(schemas["Upload-Input"]["properties"]["data"]["anyOf"]) == 2
    assert schemas["Upload-Output"]["properties"]["data"]["required"] == ["$toast"]
    assert list(response.json()["data"]) == ["$toast"]
    assert again.json() == response.json()
