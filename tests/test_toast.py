"""Toast(...) fields: per-field offload in plain models, dataclasses and TypedDicts, on every backend.

No `from __future__ import annotations`: the models below are defined in functions, around local URLs.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID, uuid4

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import TypedDict

import pydantic_toast
from fixtures.traffic import traffic
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
    StoredDataError,
    Toast,
)
from pydantic_toast.backends.memory import MemoryBackend

BIG = "a transcript line. " * 400  # about 7.6 kB of JSON


def is_reference(value: object) -> bool:
    return (
        isinstance(value, dict)
        and list(value) == ["$toast"]
        and set(value["$toast"]) == {"class_name", "id", "digest"}
    )


def document_model(storage: str, threshold: int | None = 4096) -> Any:
    class Document(BaseModel):
        title: str
        content: Annotated[str, Toast(storage=storage, threshold=threshold)]

    return Document


def test_a_large_value_is_stored_and_comes_back(storage_url: str) -> None:
    document = document_model(storage_url)
    original = document(title="call", content=BIG)

    with traffic(storage_url) as writing:
        dumped = original.model_dump()
    assert dumped["title"] == "call"
    assert is_reference(dumped["content"])
    assert dumped["content"]["$toast"]["class_name"] == "str"
    assert writing.written == 1

    with traffic(storage_url) as reading:
        assert document.model_validate(dumped) == original
    assert reading.read == 1
    assert document.model_validate_json(original.model_dump_json()) == original
    # The full value is accepted too.
    assert document.model_validate({"title": "call", "content": BIG}) == original


def test_at_or_below_the_threshold_the_value_stays_inline(storage_url: str) -> None:
    document = document_model(storage_url, threshold=10)
    with traffic(storage_url) as writing:
        # Bytes of the value's JSON: the quotes count.
        assert document(title="t", content="01234567").model_dump() == {"title": "t", "content": "01234567"}
    assert writing.written == 0
    assert is_reference(document(title="t", content="012345678").model_dump()["content"])


def test_without_a_threshold_every_value_is_stored(storage_url: str) -> None:
    document = document_model(storage_url, threshold=None)
    dumped = document(title="t", content="").model_dump()
    assert is_reference(dumped["content"])
    assert document.model_validate(dumped).content == ""


def test_dataclass_and_typeddict_fields(storage_url: str) -> None:
    @pydantic_dataclass
    class Message:
        role: str
        text: Annotated[str, Toast(storage=storage_url, threshold=100)]

    class Turn(TypedDict):
        role: str
        text: Annotated[str, Toast(storage=storage_url, threshold=100)]

    message_adapter = TypeAdapter(Message)
    dumped = message_adapter.dump_python(Message(role="user", text=BIG), mode="json")
    assert is_reference(dumped["text"])
    assert message_adapter.validate_json(json.dumps(dumped)) == Message(role="user", text=BIG)

    turn_adapter = TypeAdapter(Turn)
    turn = turn_adapter.dump_python({"role": "assistant", "text": BIG})
    assert is_reference(turn["text"])
    assert turn_adapter.validate_python(turn) == {"role": "assistant", "text": BIG}


def test_a_stdlib_dataclass_in_a_model(storage_url: str) -> None:
    @dataclass
    class Attachment:
        name: str
        data: bytes

    class Mail(BaseModel):
        attachment: Annotated[Attachment, Toast(storage=storage_url)]

    mail = Mail(attachment=Attachment(name="x.bin", data=bytes(range(256))))
    dumped = mail.model_dump(mode="json")
    assert is_reference(dumped["attachment"])
    assert Mail.model_validate_json(json.dumps(dumped)) == mail


def test_values_in_lists_and_nested_models(storage_url: str) -> None:
    class Page(BaseModel):
        body: Annotated[str, Toast(storage=storage_url, threshold=16)]

    class Book(BaseModel):
        pages: list[Page]
        notes: list[Annotated[str, Toast(storage=storage_url, threshold=16)]]
        by_name: dict[str, Annotated[str, Toast(storage=storage_url, threshold=16)]]

    book = Book(
        pages=[Page(body=f"page {i} " * 10) for i in range(3)] + [Page(body="short")],
        notes=["n" * 40, "tiny"],
        by_name={"a": "a" * 40},
    )
    with traffic(storage_url) as writing:
        dumped = pydantic_toast.dump(book, mode="json")
    assert [is_reference(page["body"]) for page in dumped["pages"]] == [True, True, True, False]
    assert [is_reference(note) for note in dumped["notes"]] == [True, False]
    assert is_reference(dumped["by_name"]["a"])
    assert writing.round_trips == 1  # five values, one batch
    assert Book.model_validate_json(json.dumps(dumped)) == book


def test_one_dump_writes_toast_values_and_external_models_in_one_round_trip(storage_url: str) -> None:
    class Chunk(ExternalBaseModel):
        text: Annotated[str, Toast(storage=storage_url)]
        model_config = ExternalConfigDict(storage=storage_url)

    class Transcript(ExternalBaseModel):
        summary: Annotated[str, Toast(storage=storage_url)]
        chunks: list[Chunk]
        model_config = ExternalConfigDict(storage=storage_url)

    transcript = Transcript(summary="s" * 100, chunks=[Chunk(text=f"chunk {i}" * 50) for i in range(10)])
    with traffic(storage_url) as writing:
        reference = transcript.model_dump()
    assert writing.round_trips == 1
    assert writing.written == 22  # 11 models, 11 values

    pydantic_toast.Toast.forget_stored()
    with traffic(storage_url) as reading:
        assert Transcript.model_validate(reference) == transcript
    # Level by level: the transcript; its chunks and summary; the chunks' texts.
    assert reading.round_trips == 3
    assert reading.read == 22


def test_plain_parent_dumped_with_the_helper_is_one_round_trip(storage_url: str) -> None:
    class Pair(BaseModel):
        first: Annotated[str, Toast(storage=storage_url)]
        second: Annotated[str, Toast(storage=storage_url)]

    with traffic(storage_url) as writing:
        pydantic_toast.dump(Pair(first="1" * 50, second="2" * 50))
    assert writing.round_trips == 1
    assert writing.written == 2


async def test_async_dump_helper_writes_on_the_loop(storage_url: str) -> None:
    document = document_model(storage_url, threshold=None)
    dumped = await pydantic_toast.adump(document(title="t", content=BIG))
    assert document.model_validate(dumped).content == BIG


def test_a_toast_value_is_written_before_the_model_that_points_at_it(storage_url: str) -> None:
    # Value store and model store differ: the value's batch goes first, so a failed value store
    # leaves no model pointing at a value that is not there.
    models_url = f"memory://models-{uuid4().hex}"

    class Holder(ExternalBaseModel):
        blob: Annotated[str, Toast(storage=storage_url)]
        model_config = ExternalConfigDict(storage=models_url)

    written: list[str] = []
    import pydantic_toast.runtime as runtime

    original_execute = runtime.execute

    async def recording(url: Any, seconds: float, operation: Any) -> Any:
        written.append(url.raw)
        return await original_execute(url, seconds, operation)

    runtime.execute = recording
    try:
        Holder(blob="x" * 100).model_dump()
    finally:
        runtime.execute = original_execute
    MemoryBackend.clear(models_url.removeprefix("memory://"))
    assert written == [storage_url, models_url]


# ---------------------------------------------------------------------------- the reference shape


def test_a_legitimate_value_shaped_like_a_reference_round_trips(storage_url: str) -> None:
    class Settings(BaseModel):
        options: Annotated[dict[str, Any], Toast(storage=storage_url, threshold=1_000_000)]
        anything: Annotated[Any, Toast(storage=storage_url, threshold=1_000_000)]

    lookalike = {"$toast": {"class_name": "Any", "id": str(UUID(int=1))}}
    other = {"$toast": "not a reference"}
    # Data that has the reference's exact shape (from JSON the program read, say): as input it
    # would be read as a reference, so it is set here without validation.
    original = Settings.model_construct(options=dict(other), anything=lookalike)
    dumped = original.model_dump(mode="json")
    # Shaped like a reference: stored whatever the threshold, so the dump is a real reference...
    assert is_reference(dumped["options"])
    assert is_reference(dumped["anything"])
    # ... and the value comes back as itself, never misread.
    assert Settings.model_validate_json(json.dumps(dumped)) == original
    # Ordinary small dicts stay inline, including ones with a "$toast" key among others.
    small = Settings(options={"$toast": 1, "other": 2}, anything=[1, 2])
    assert small.model_dump() == {"options": {"$toast": 1, "other": 2}, "anything": [1, 2]}
    # Input under "$toast" that is not a reference object is data; a reference object is a
    # reference, checked before any I/O.
    assert Settings.model_validate({"options": other, "anything": other}).options == other
    with pytest.raises(ValidationError):
        Settings.model_validate({"options": {}, "anything": {"$toast": {"class_name": "str", "id": "x"}}})


def test_references_are_checked_before_any_io(storage_url: str) -> None:
    document = document_model(storage_url)
    dumped = document(title="t", content=BIG).model_dump()
    reference = dumped["content"]["$toast"]
    bad = [
        {**reference, "class_name": "bytes"},
        {**reference, "id": "not-a-uuid"},
        {**reference, "digest": "zz"},
    ]
    with traffic(storage_url) as reading:
        for inner in bad:
            with pytest.raises(ValidationError) as caught:
                document.model_validate({"title": "t", "content": {"$toast": inner}})
            assert isinstance(caught.value.errors()[0]["ctx"]["error"], StorageValidationError)
    assert reading.round_trips == 0


def test_a_missing_record_is_a_validation_error(storage_url: str) -> None:
    document = document_model(storage_url)
    reference = {"class_name": "str", "id": str(UUID(int=12345))}
    with pytest.raises(ValidationError) as caught:
        document.model_validate({"title": "t", "content": {"$toast": reference}})
    assert isinstance(caught.value.errors()[0]["ctx"]["error"], RecordNotFoundError)


def test_constraints_next_to_toast_apply_to_stored_values(storage_url: str) -> None:
    class Short(BaseModel):
        text: Annotated[str, Field(max_length=5), Toast(storage=storage_url)]

    class Long(BaseModel):
        text: Annotated[str, Toast(storage=storage_url)]

    dumped = Long(text="too long").model_dump()
    with pytest.raises(ValidationError):
        Short.model_validate(dumped)


def test_inline_context_dumps_the_value_and_reference_context_writes_nothing(storage_url: str) -> None:
    document = document_model(storage_url, threshold=None)
    original = document(title="t", content=BIG)
    assert original.model_dump(context={"pydantic_toast": "inline"})["content"] == BIG
    with traffic(storage_url) as writing:
        dumped = original.model_dump(context={"pydantic_toast": "reference"})
    assert writing.written == 0
    assert is_reference(dumped["content"])


def test_json_schema_shows_both_shapes(memory_url: str) -> None:
    class Inline(BaseModel):
        text: Annotated[str, Toast(storage=memory_url, threshold=10)]
        blob: Annotated[list[int], Toast(storage=memory_url, name="Blob")]

    validation = Inline.model_json_schema()["properties"]
    reference, value = validation["text"]["anyOf"]
    assert reference["required"] == ["$toast"]
    assert reference["properties"]["$toast"]["properties"]["class_name"] == {"type": "string", "const": "str"}
    assert value == {"type": "string"}
    assert (
        validation["blob"]["anyOf"][0]["properties"]["$toast"]["properties"]["class_name"]["const"] == "Blob"
    )
    serialization = Inline.model_json_schema(mode="serialization")["properties"]
    assert "anyOf" in serialization["text"]  # inline at or below the threshold
    assert serialization["blob"]["required"] == ["$toast"]  # always a reference


def test_compression_goes_through_the_codec_stage(memory_url: str) -> None:
    class Packed(BaseModel):
        text: Annotated[str, Toast(storage=memory_url, compression="zlib")]

    dumped = Packed(text=BIG).model_dump()
    assert Packed.model_validate(dumped).text == BIG
    import asyncio

    from fixtures.traffic import _backend

    async def encoding() -> tuple[str, int]:
        backend = _backend(memory_url)
        await backend.connect()
        [record] = await backend.load_records([(UUID(dumped["text"]["$toast"]["id"]), "str")])
        assert record is not None
        return record.encoding, len(record.payload)

    tag, size = asyncio.run(encoding())
    assert tag == "json+zlib"
    assert size < len(BIG) // 10


def test_configuration_errors_name_the_cause(memory_url: str) -> None:
    with pytest.raises(StorageValidationError, match="threshold"):
        Toast(storage=memory_url, threshold=-1)
    with pytest.raises(StorageValidationError, match="compression"):
        Toast(storage=memory_url, compression="nope")
    with pytest.raises(StorageValidationError, match="scheme"):
        Toast(storage="nosuch://x")
    with pytest.raises(StorageValidationError, match="name"):
        Toast(storage=memory_url, name="a:b")
    assert "secret" not in repr(Toast(storage="redis://:secret@localhost:6379/0"))


def test_a_value_that_does_not_match_its_type_is_refused_without_its_content(memory_url: str) -> None:
    class Numbers(BaseModel):
        values: Annotated[list[int], Toast(storage=memory_url)]

    numbers = Numbers(values=[1])
    numbers.values = ["secret-value"]  # type: ignore[list-item]
    with pytest.raises(StorageValidationError) as caught:
        pydantic_toast.dump(numbers)
    assert "secret-value" not in str(caught.value)


def test_a_value_holding_external_models_inside_an_external_model(storage_url: str) -> None:
    class Customer(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage=storage_url)

    class Order(ExternalBaseModel):
        number: int
        # Over the threshold: stored, with the customers it refers to written before it.
        customers: Annotated[list[Customer], Toast(storage=storage_url, threshold=10)]
        model_config = ExternalConfigDict(storage=storage_url)

    order = Order(number=1, customers=[Customer(name=f"c{i}") for i in range(4)])
    with traffic(storage_url) as writing:
        reference = order.model_dump()
    assert writing.round_trips == 1
    assert writing.written == 6  # four customers, the list, the order

    pydantic_toast.Toast.forget_stored()
    with traffic(storage_url) as reading:
        loaded = Order.model_validate(reference)
    assert loaded == order
    # The order; the list; the customers the list refers to.
    assert reading.round_trips == 3

    small = Order(number=2, customers=[])
    assert small.model_dump() != {}  # the order itself is a reference; its empty list stayed inline
    assert Order.model_validate(small.model_dump()).customers == []


def test_a_stored_value_that_no_longer_validates_names_no_value(storage_url: str) -> None:
    class Before(BaseModel):
        value: Annotated[list[str], Toast(storage=storage_url, name="Values")]

    class After(BaseModel):
        value: Annotated[list[int], Toast(storage=storage_url, name="Values")]

    class Holder(ExternalBaseModel):
        value: Annotated[list[int], Toast(storage=storage_url, name="Values")]
        model_config = ExternalConfigDict(storage=storage_url)

    dumped = Before(value=["secret-word"]).model_dump()
    with pytest.raises(StoredDataError) as caught:
        After.model_validate(dumped)
    assert "secret-word" not in str(caught.value)
    assert caught.value.errors[0]["loc"] == (0,)

    holder_reference = Holder(value=[1]).model_dump()
    holder = Holder.model_validate(holder_reference)
    holder.value = ["secret-word"]  # type: ignore[list-item]
    with pytest.raises(StorageValidationError):
        pydantic_toast.dump(holder)


def test_inline_values_keep_their_json_meaning(storage_url: str) -> None:
    class Signed(ExternalBaseModel):
        # ExternalBaseModel writes bytes as base64: an inline value must be read back as base64.
        signature: Annotated[bytes, Toast(storage=storage_url, threshold=1000)]
        model_config = ExternalConfigDict(storage=storage_url)

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True, ser_json_bytes="base64", val_json_bytes="base64")
        data: Annotated[bytes, Toast(storage=storage_url, threshold=1000)]
        when: Annotated[datetime, Toast(storage=storage_url, threshold=1000)]
        stored_when: Annotated[datetime, Toast(storage=storage_url)]

    signed = Signed(signature=b"\x00\x01\xfe\xff")
    assert Signed.model_validate(signed.model_dump()) == signed
    now = datetime.now(UTC)
    strict = Strict(data=b"\x00\xff", when=now, stored_when=now)
    dumped = strict.model_dump_json()
    assert '"data":"AP8="' in dumped
    assert Strict.model_validate_json(dumped) == strict
