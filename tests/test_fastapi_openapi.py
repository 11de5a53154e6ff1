"""FastAPI: what the OpenAPI document shows is what travels, and a GET never writes.

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import asyncio
from typing import Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel, Field

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict
from pydantic_toast.url import StorageURL


def reference_schema(class_name: dict[str, Any], title: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "class_name": {"type": "string", **class_name},
            "id": {"type": "string", "format": "uuid"},
        },
        "required": ["class_name", "id"],
        "additionalProperties": False,
        "title": title,
    }


def test_json_schemas_describe_the_reference_and_the_full_data(memory_url: str) -> None:
    class Profile(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=memory_url)

    class Admin(Profile):
        model_config = ExternalConfigDict(storage=memory_url)

    full = {
        "type": "object",
        "properties": {"name": {"type": "string", "title": "Name"}},
        "required": ["name"],
        "title": "Profile",
    }
    assert Profile.model_json_schema(mode="serialization") == reference_schema(
        {"enum": ["Profile", "Admin"]}, "Profile"
    )
    assert Admin.model_json_schema(mode="serialization") == reference_schema({"const": "Admin"}, "Admin")
    assert Profile.model_json_schema() == {
        "anyOf": [reference_schema({"enum": ["Profile", "Admin"]}, "ProfileReference"), full],
        "title": "Profile",
    }


def test_a_model_with_its_own_class_name_field_takes_a_reference_or_data(memory_url: str) -> None:
    class Labelled(ExternalBaseModel):
        class_name: str
        model_config = ExternalConfigDict(storage=memory_url)

    reference, full = Labelled.model_json_schema()["anyOf"]
    assert reference == reference_schema({"const": "Labelled"}, "LabelledReference")
    assert full["properties"] == {"class_name": {"type": "string", "title": "Class Name"}}
    assert Labelled.model_json_schema(mode="serialization") == reference_schema(
        {"const": "Labelled"}, "Labelled"
    )


def test_an_abstract_base_takes_only_data_in_its_schema(memory_url: str) -> None:
    class Shared(ExternalBaseModel):
        title: str

    class Concrete(Shared):
        model_config = ExternalConfigDict(storage=memory_url)

    assert Shared.model_json_schema()["properties"] == {"title": {"type": "string", "title": "Title"}}
    assert "anyOf" in Concrete.model_json_schema()


def test_openapi_shows_references_out_and_references_or_data_in(memory_url: str) -> None:
    class Profile(ExternalBaseModel):
        name: str
        friends: list["Profile"] = Field(default_factory=list)
        model_config = ExternalConfigDict(storage=memory_url)

    class Envelope(BaseModel):
        profile: Profile

    app = FastAPI()

    @app.post("/profiles")
    def create(profile: Profile) -> Envelope:
        return Envelope(profile=profile)

    document = app.openapi()
    schemas = document["components"]["schemas"]
    operation = document["paths"]["/profiles"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Profile-Input"
    }
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Envelope"
    }
    assert schemas["Profile-Output"] == reference_schema({"const": "Profile"}, "Profile")
    assert schemas["Envelope"]["properties"]["profile"] == {"$ref": "#/components/schemas/Profile-Output"}
    reference, data = schemas["Profile-Input"]["anyOf"]
    assert reference == reference_schema({"const": "Profile"}, "ProfileReference")
    assert data["properties"]["friends"]["items"] == {"$ref": "#/components/schemas/Profile-Input"}
    assert data["required"] == ["name"]


async def test_a_get_after_a_put_does_not_revert_it(storage_url: str) -> None:
    class Item(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    app = FastAPI()
    loaded, release = asyncio.Event(), asyncio.Event()

    @app.get("/items/{item_id}")
    async def read(item_id: str) -> Item:
        item = await Item.load(item_id)
        loaded.set()
        await release.wait()  # a PUT lands between this load and the response's serialization
        return item

    @app.put("/items/{item_id}")
    async def update(item_id: str, name: str) -> Item:
        item = await Item.load(item_id)
        item.name = name
        await item.save()
        return item

    reference = await Item(name="old").save()
    masked = StorageURL.parse(storage_url).masked
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        reading = asyncio.create_task(client.get(f"/items/{reference.id}"))
        await loaded.wait()
        updated = await client.put(f"/items/{reference.id}", params={"name": "new"})
        assert updated.status_code == 200, updated.text
        before = pydantic_toast.stats()[masked]["records_written"]
        release.set()
        response = await reading
        assert response.status_code == 200, response.text
        assert response.json() == reference.model_dump(mode="json")
        assert pydantic_toast.stats()[masked]["records_written"] == before  # a GET writes nothing
    assert (await Item.load(reference)).name == "new"
