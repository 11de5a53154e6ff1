"""`compression="zstd"`: records on every backend, never inflated, readable whatever the current
setting, a clear error without the package, and stored vs raw bytes in stats and the CLI."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    MissingDependencyError,
    StoredDataError,
    codecs,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.cli import main
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL

COMPRESSIBLE = "the assistant called a tool and the tool returned rows of data; " * 60


def note_class(storage: str, **config: Any) -> Any:
    class Note(ExternalBaseModel):
        text: str
        model_config = cast(ExternalConfigDict, {"storage": storage, **config})

    return Note


async def stored(storage: str, class_name: str, record_id: UUID) -> StoredRecord:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        [found] = await backend.load_records([(record_id, class_name)])
    finally:
        await backend.disconnect()
    assert found is not None
    return found


@pytest.fixture
def without_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the [zstd] extra were not installed (and Python older than 3.14)."""
    monkeypatch.setattr(codecs, "_zstd_module", None)
    monkeypatch.setitem(sys.modules, "backports.zstd", None)
    monkeypatch.setitem(sys.modules, "compression.zstd", None)


def test_the_codec_round_trips_and_is_registered() -> None:
    codec = codecs.ZstdCodec()
    data = json.dumps({"text": COMPRESSIBLE}).encode()
    packed = codec.encode(data)
    assert packed[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert codec.decode(packed) == data
    assert "zstd" in codecs.codec_names(compressing=True)


async def test_records_are_compressed_on_every_backend(storage_url: str) -> None:
    note = note_class(storage_url, compression="zstd")
    item = note(text=COMPRESSIBLE)
    reference = item.model_dump()
    found = await stored(storage_url, "Note", UUID(reference["id"]))
    assert found.encoding == "json+zstd"
    assert len(found.payload) < len(COMPRESSIBLE) // 10
    assert note.model_validate(reference) == item
    assert (await note.load(reference)) == item


async def test_small_and_incompressible_payloads_stay_json(storage_url: str) -> None:
    note = note_class(storage_url, compression="zstd")
    small = await note(text="short").save()
    assert (await stored(storage_url, "Note", small.id)).encoding == "json"
    # With no minimum size, a payload that zstd's frame would make longer is stored as it is.
    pipeline = codecs.pipeline_for({"compression": "zstd", "compression_min_size": 0})
    tiny = b'{"text":"a"}'
    assert len(codecs.ZstdCodec().encode(tiny)) > len(tiny)
    assert codecs.encode(pipeline, tiny) == (tiny, "json")


async def test_records_stay_readable_when_the_setting_changes(memory_url: str) -> None:
    zstd_note = note_class(memory_url, compression="zstd")
    written_with_zstd = zstd_note(text=COMPRESSIBLE).model_dump()
    zlib_note = note_class(memory_url, compression="zlib")
    written_with_zlib = zlib_note(text=COMPRESSIBLE + "!").model_dump()
    plain = note_class(memory_url)
    assert plain.model_validate(written_with_zstd).text == COMPRESSIBLE
    assert plain.model_validate(written_with_zlib).text == COMPRESSIBLE + "!"
    loaded = zstd_note.model_validate(written_with_zlib)
    loaded.text += "?"
    loaded.model_dump()  # rewritten in the current form
    found = await stored(memory_url, "Note", UUID(written_with_zlib["id"]))
    assert found.encoding == "json+zstd"


def test_without_the_package_the_class_definition_names_the_extra(
    memory_url: str, without_zstd: None
) -> None:
    with pytest.raises(MissingDependencyError) as caught:
        note_class(memory_url, compression="zstd")
    message = str(caught.value)
    assert "Note" in message
    assert "pip install 'pydantic-toast[zstd]'" in message
    assert caught.value.extra == "zstd"
    assert isinstance(caught.value, ImportError)


async def test_without_the_package_a_zstd_record_names_the_extra(memory_url: str) -> None:
    writer = note_class(memory_url, compression="zstd")
    reference = await writer(text=COMPRESSIBLE).save()
    reader = note_class(memory_url, storage_name="Note")
    codecs._zstd_module = None
    saved = {name: sys.modules.get(name) for name in ("backports.zstd", "compression.zstd")}
    try:
        sys.modules["backports.zstd"] = cast(Any, None)
        sys.modules["compression.zstd"] = cast(Any, None)
        with pytest.raises(MissingDependencyError, match=r"pydantic-toast\[zstd\]"):
            await reader.load(reference)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        codecs._zstd_module = None
    assert (await reader.load(reference)).text == COMPRESSIBLE


async def test_a_damaged_zstd_payload_is_stored_data_error_without_the_bytes(memory_url: str) -> None:
    note = note_class(memory_url)
    now = datetime.now(UTC)
    damaged = StoredRecord(uuid4(), "Note", b"\x28\xb5\x2f\xfdSECRET", 1, now, now, encoding="json+zstd")
    await backend_class("memory")(memory_url).save_records([damaged])
    with pytest.raises(StoredDataError) as caught:
        await note.load(damaged.id)
    assert "zstd" in str(caught.value)
    assert "SECRET" not in str(caught.value)


async def test_stats_count_stored_and_raw_bytes(memory_url: str) -> None:
    note = note_class(memory_url, compression="zstd")
    before = pydantic_toast.stats().get(memory_url, {})
    item = note(text=COMPRESSIBLE)
    await item.save()
    after = pydantic_toast.stats()[memory_url]
    stored_bytes = after["bytes_written"] - before.get("bytes_written", 0)
    raw_bytes = after["raw_bytes_written"] - before.get("raw_bytes_written", 0)
    assert raw_bytes == len(item.model_dump_json(context={"pydantic_toast": "inline"}))
    assert 0 < stored_bytes < raw_bytes // 10


def test_the_cli_shows_stored_and_raw_bytes(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    note = note_class(sqlite_url, compression="zstd")
    reference = note(text=COMPRESSIBLE).model_dump()
    note(text="short").model_dump()
    asyncio.run(pydantic_toast.aclose())

    assert main(["inspect", sqlite_url, reference["id"], "--class", "Note"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["encoding"] == "json+zstd"
    assert shown["raw_bytes"] == len(json.dumps({"text": COMPRESSIBLE}, separators=(",", ":")))
    assert 0 < shown["stored_bytes"] < shown["raw_bytes"] // 10

    assert main(["stats", sqlite_url, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["Note"]
    assert row["encodings"] == {"json": 1, "json+zstd": 1}
    assert row["raw_bytes"] == shown["raw_bytes"] + len('{"text":"short"}')
    assert row["bytes"] == shown["stored_bytes"] + len('{"text":"short"}')

    assert main(["stats", sqlite_url]) == 0
    table = capsys.readouterr().out
    assert "raw bytes" in table
    assert str(row["raw_bytes"]) in table
