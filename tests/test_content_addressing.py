"""Content addressing: ids made from the content, shared records, no rewrite, integrity on load.

No `from __future__ import annotations`: the models below are defined in functions, around local URLs.
"""

import asyncio
import json
from dataclasses import replace
from typing import Annotated
from uuid import UUID

import pytest
from pydantic import BaseModel

import pydantic_toast
from fixtures.traffic import edit_record, traffic
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, RecordIntegrityError, Toast
from pydantic_toast._content import content_digest, content_id

TEXT = "the same transcript, pasted twice. " * 50


def models(storage: str) -> tuple[type[BaseModel], type[BaseModel]]:
    class Email(BaseModel):
        body: Annotated[str, Toast(storage=storage)]

    class Chat(BaseModel):
        message: Annotated[str, Toast(storage=storage)]

    return Email, Chat


def test_identical_values_are_stored_once(storage_url: str) -> None:
    email, chat = models(storage_url)
    with traffic(storage_url) as writing:
        first = pydantic_toast.dump([email(body=TEXT), chat(message=TEXT), email(body=TEXT)])
    assert first[0]["body"] == first[1]["message"] == first[2]["body"]
    assert writing.written == 1


def test_redumping_an_unchanged_value_writes_nothing(storage_url: str) -> None:
    email, _ = models(storage_url)
    message = email(body=TEXT)
    reference = message.model_dump()
    with traffic(storage_url) as writing:
        assert message.model_dump() == reference
        assert email(body=TEXT).model_dump() == reference  # another instance, same content
    assert writing.written == 0
    assert writing.round_trips == 0


def test_a_loaded_value_dumped_again_writes_nothing(storage_url: str) -> None:
    email, _ = models(storage_url)
    reference = email(body=TEXT).model_dump()
    pydantic_toast.Toast.forget_stored()  # as in another process
    loaded = email.model_validate(reference)
    with traffic(storage_url) as writing:
        assert loaded.model_dump() == reference
    assert writing.written == 0


def test_a_forgotten_value_is_written_again(storage_url: str) -> None:
    email, _ = models(storage_url)
    email(body=TEXT).model_dump()
    pydantic_toast.Toast.forget_stored()
    with traffic(storage_url) as writing:
        email(body=TEXT).model_dump()
    assert writing.written == 1  # the same record, written again: an idempotent upsert


def test_the_id_is_a_version_8_uuid_of_the_content_and_name(memory_url: str) -> None:
    email, _ = models(memory_url)
    reference = email(body=TEXT).model_dump()["body"]["$toast"]
    data = json.dumps(TEXT).encode()
    digest = content_digest("str", data)
    assert reference["digest"] == digest.hex()
    assert UUID(reference["id"]) == content_id(digest)
    assert UUID(reference["id"]).version == 8
    # The name is hashed in: the same bytes under another name are another record.
    assert content_id(content_digest("Transcript", data)) != content_id(digest)
    # The key hook for encrypted stores: a keyed digest differs from the plain one.
    assert content_digest("str", data, key=b"k" * 32) != digest


def test_compression_does_not_change_the_id(memory_url: str) -> None:
    class Plain(BaseModel):
        text: Annotated[str, Toast(storage=memory_url)]

    class Packed(BaseModel):
        text: Annotated[str, Toast(storage=memory_url, compression="zlib")]

    assert Plain(text=TEXT).model_dump() == Packed(text=TEXT).model_dump()


def stored_at(dumped: dict[str, object], field: str) -> tuple[str, UUID]:
    reference = dumped[field]
    assert isinstance(reference, dict)
    inner = reference["$toast"]
    return inner["class_name"], UUID(inner["id"])


def test_a_tampered_record_is_refused(storage_url: str) -> None:
    email, _ = models(storage_url)
    dumped = email(body=TEXT).model_dump()
    class_name, record_id = stored_at(dumped, "body")
    forged = json.dumps({"value_json": json.dumps("a different text")}).encode()
    asyncio.run(edit_record(storage_url, class_name, record_id, lambda r: replace(r, payload=forged)))
    pydantic_toast.Toast.forget_stored()

    with pytest.raises(RecordIntegrityError) as caught:
        email.model_validate(dumped)
    assert caught.value.id == record_id
    assert "different" not in str(caught.value)
    # A reference without its digest is still checked against the id's bits.
    reference = dict(dumped["body"]["$toast"])
    del reference["digest"]
    with pytest.raises(RecordIntegrityError):
        email.model_validate({"body": {"$toast": reference}})


def test_a_reference_whose_digest_was_changed_is_refused(storage_url: str) -> None:
    email, _ = models(storage_url)
    dumped = email(body=TEXT).model_dump()
    reference = dict(dumped["body"]["$toast"])
    reference["digest"] = "0" * 64
    with pytest.raises(RecordIntegrityError):
        email.model_validate({"body": {"$toast": reference}})


def test_a_damaged_record_in_a_tree_is_refused(storage_url: str) -> None:
    class Note(ExternalBaseModel):
        body: Annotated[str, Toast(storage=storage_url)]
        model_config = ExternalConfigDict(storage=storage_url)

    reference = Note(body=TEXT).model_dump()
    body = Note.model_validate(reference).model_dump(context={"pydantic_toast": "inline"})["body"]
    assert body == TEXT
    data = json.dumps(TEXT).encode()
    record_id = content_id(content_digest("str", data))
    damaged = json.dumps({"value_json": json.dumps(TEXT.upper())}).encode()
    asyncio.run(edit_record(storage_url, "str", record_id, lambda r: replace(r, payload=damaged)))

    async def load() -> None:
        await Note.load(reference)

    with pytest.raises(RecordIntegrityError):
        asyncio.run(load())
