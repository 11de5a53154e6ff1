"""The codec stage: encoding tags, zlib compression per model, unknown or damaged payloads, and
what every reader (loads, upgrades, the command line, SQLite migration, copy) makes of them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest

import pydantic_toast
from pydantic_toast import (
    ExternalBaseModel,
    ExternalConfigDict,
    StorageValidationError,
    StoredDataError,
    codecs,
    register_backend,
    upgrade,
)
from pydantic_toast.backends.base import StoredRecord
from pydantic_toast.cli import main
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL

COMPRESSIBLE = "all work and no play makes a dull record " * 40


def record(payload: bytes, encoding: str = "json", class_name: str = "Note") -> StoredRecord:
    now = datetime.now(UTC)
    return StoredRecord(uuid4(), class_name, payload, 1, now, now, encoding=encoding)


def note_model(storage: str, **config: Any) -> Any:
    class Note(ExternalBaseModel):
        text: str
        model_config = cast(ExternalConfigDict, {"storage": storage, **config})

    return Note


async def stored(storage: str, class_name: str, ids: list[UUID]) -> list[StoredRecord]:
    backend = backend_class(StorageURL.parse(storage).scheme)(storage)
    await backend.connect()
    try:
        found = await backend.load_records([(id, class_name) for id in ids])
    finally:
        await backend.disconnect()
    assert all(r is not None for r in found)
    return [r for r in found if r is not None]


# --------------------------------------------------------------------------- the stage itself


def test_plain_json_passes_through_without_a_copy() -> None:
    data = b'{"text":"x"}'
    payload, encoding = codecs.encode(None, data)
    assert payload is data
    assert encoding == "json"
    assert codecs.decode(record(data)) is data


def test_zlib_compresses_from_the_minimum_size_and_only_when_it_shrinks() -> None:
    pipeline = codecs.pipeline_for({"compression": "zlib", "compression_min_size": 100})
    assert pipeline is not None
    big = json.dumps({"text": COMPRESSIBLE}).encode()
    payload, encoding = codecs.encode(pipeline, big)
    assert encoding == "json+zlib"
    assert len(payload) < len(big) // 5
    assert codecs.decode(record(payload, encoding)) == big

    small = b'{"text":"' + b"x" * 80 + b'"}'
    assert codecs.encode(pipeline, small) == (small, "json")
    noise = b'{"text":"' + base64.b85encode(os.urandom(300)) + b'"}'  # barely compressible
    packed = zlib.compress(noise)
    if len(packed) >= len(noise):
        assert codecs.encode(pipeline, noise) == (noise, "json")


def test_compression_is_validated_at_class_definition() -> None:
    with pytest.raises(StorageValidationError) as caught:
        note_model("memory://", compression="lz4")
    message = str(caught.value)
    assert "Note" in message
    assert "'lz4'" in message
    assert "'zlib'" in message
    assert caught.value.expected == ["zlib", "zstd"]
    for bad in (-1, True, "512", 1.5):
        with pytest.raises(StorageValidationError, match="compression_min_size"):
            note_model("memory://", compression="zlib", compression_min_size=bad)
    assert note_model("memory://", compression=None).__toast_settings__.codec is None
    assert note_model("memory://").__toast_settings__.codec is None


@pytest.mark.parametrize(
    ("encoding", "says"),
    [
        ("json+brotli", ["no codec 'brotli'", "upgrade pydantic-toast", "install the extra"]),
        ("json+zlib+aes-gcm", ["no codec 'aes-gcm'"]),
        ("msgpack", ["no codec 'msgpack'"]),
        ("json+json", ["'json' is not a codec name", "repair or delete"]),
        ("json+", ["'' is not a codec name"]),
        ("JSON", ["'JSON' is not a codec name"]),
    ],
)
def test_an_unknown_encoding_names_the_tag_and_the_fix_without_the_bytes(
    encoding: str, says: list[str]
) -> None:
    secret = b"SECRET-PAYLOAD"
    with pytest.raises(StoredDataError) as caught:
        codecs.decode(record(secret, encoding))
    message = str(caught.value)
    assert repr(encoding) in message
    for part in says:
        assert part in message
    assert "SECRET" not in message
    assert caught.value.errors == [{"loc": (), "type": "payload_encoding"}]
    assert not isinstance(caught.value, ValueError)  # stored data at fault: never a client's 422


def test_a_damaged_payload_is_stored_data_error_without_the_bytes() -> None:
    damaged = record(b"SECRET-PAYLOAD-not-zlib", "json+zlib")
    with pytest.raises(StoredDataError) as caught:
        codecs.decode(damaged)
    assert "json+zlib" in str(caught.value)
    assert "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert caught.value.id == damaged.id
    assert caught.value.errors == [{"loc": (), "type": "payload_decoding"}]


class Reversed(codecs.Codec):
    """A toy codec for the registry tests (reversing is its own inverse)."""

    name = "test-reversed"
    compresses = True

    def encode(self, data: bytes) -> bytes:
        return data[::-1][:-1]  # one byte shorter, so that it counts as shrinking

    def decode(self, data: bytes) -> bytes:
        return b"{" + data[::-1]


@pytest.fixture
def reversed_codec() -> Iterator[None]:
    codecs.register_codec(Reversed())
    yield
    codecs._codecs.pop(Reversed.name)


@pytest.mark.usefixtures("reversed_codec")
async def test_a_registered_codec_plugs_into_compression_and_decoding(memory_url: str) -> None:
    codecs.register_codec(Reversed())  # the same codec again: harmless
    assert "test-reversed" in codecs.codec_names(compressing=True)
    note = note_model(memory_url, compression="test-reversed", compression_min_size=0)
    item = note(text="hello")
    reference = await item.save()
    [found] = await stored(memory_url, "Note", [reference.id])
    assert found.encoding == "json+test-reversed"
    assert await note.load(reference) == item

    class Other(Reversed):
        pass

    with pytest.raises(StorageValidationError, match="already registered"):
        codecs.register_codec(Other())
    for name in ("json", "Upper", "a+b", "", "x" * 33):
        Other.name = name
        with pytest.raises(StorageValidationError, match="codec name"):
            codecs.register_codec(Other())


# --------------------------------------------------------------------------- through the models


async def test_compressed_records_load_unchanged_ones_are_not_written_again(memory_url: str) -> None:
    note = note_model(memory_url, compression="zlib")
    item = note(text=COMPRESSIBLE)
    reference = await item.save()
    [found] = await stored(memory_url, "Note", [reference.id])
    assert found.encoding == "json+zlib"

    loaded = await note.load(reference)
    written = pydantic_toast.stats()[memory_url]["records_written"]
    assert note.model_validate(loaded.model_dump()) == item  # a dump of the unchanged model
    assert pydantic_toast.stats()[memory_url]["records_written"] == written
    loaded.text = "changed " + COMPRESSIBLE
    loaded.model_dump()
    assert pydantic_toast.stats()[memory_url]["records_written"] == written + 1


async def test_compressed_records_of_an_older_schema_version_are_upgraded(memory_url: str) -> None:
    # Written by the previous deployment, with compression on.
    pipeline = codecs.pipeline_for({"compression": "zlib", "compression_min_size": 0})
    payload, encoding = codecs.encode(pipeline, json.dumps({"text": COMPRESSIBLE}).encode())
    old = record(payload, encoding)
    old.schema_version = 1
    await backend_class("memory")(memory_url).save_records([old])

    class Note(ExternalBaseModel):
        body: str
        model_config = ExternalConfigDict(
            storage=memory_url,
            schema_version=2,
            compression="zlib",
            compression_min_size=0,
            upgrade_write_back=True,
        )

        @upgrade(from_version=1)
        def _rename(data: dict[str, Any]) -> dict[str, Any]:
            return {"body": data["text"]}

    assert (await Note.load(old.id)).body == COMPRESSIBLE
    [found] = await stored(memory_url, "Note", [old.id])
    assert (found.schema_version, found.encoding) == (2, "json+zlib")
    assert json.loads(codecs.decode(found)) == {"body": COMPRESSIBLE}


async def test_a_model_load_of_an_unknown_encoding_is_refused_clearly(memory_url: str) -> None:
    note = note_model(memory_url)
    damaged = record(b"\x00SECRET", "json+brotli")
    backend = backend_class("memory")(memory_url)
    await backend.save_records([damaged])
    with pytest.raises(StoredDataError, match="no codec 'brotli'") as caught:
        await note.load(damaged.id)
    assert "SECRET" not in str(caught.value)


class EnvelopeBackend:
    """The contract's four methods, keeping the envelopes it is given."""

    stores: ClassVar[dict[str, dict[tuple[UUID, str], dict[str, Any]]]] = {}

    def __init__(self, url: str) -> None:
        self.envelopes = self.stores.setdefault(urlsplit(url).netloc, {})

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def save(self, id: UUID, class_name: str, data: dict[str, Any]) -> None:
        self.envelopes[(id, class_name)] = json.loads(json.dumps(data))

    async def load(self, id: UUID, class_name: str) -> dict[str, Any] | None:
        return self.envelopes.get((id, class_name))


register_backend("codec-envelopes", EnvelopeBackend)  # type: ignore[arg-type]


async def test_contract_backends_get_base64_payloads_and_json_envelopes_unchanged() -> None:
    url = f"codec-envelopes://{uuid4().hex}"
    note = note_model(url, compression="zlib")
    packed, plain = note(text=COMPRESSIBLE), note(text="short")
    await note.save_many([packed, plain])
    envelopes = EnvelopeBackend.stores[urlsplit(url).netloc]
    compressed = envelopes[(packed.external_reference.id, "Note")]
    assert set(compressed) == {"encoding", "payload", "schema_version", "created_at", "updated_at"}
    assert compressed["encoding"] == "json+zlib"
    assert json.loads(zlib.decompress(base64.b64decode(compressed["payload"]))) == {"text": COMPRESSIBLE}
    assert envelopes[(plain.external_reference.id, "Note")]["data"] == {"text": "short"}
    assert set(envelopes[(plain.external_reference.id, "Note")]) == {
        "data",
        "schema_version",
        "created_at",
        "updated_at",
    }
    assert await note.load_many([packed.external_reference, plain.external_reference]) == [packed, plain]

    compressed["payload"] = "SECRET not base64!"
    with pytest.raises(StoredDataError, match="not a valid envelope") as caught:
        await note.load(packed.external_reference)
    assert "SECRET" not in str(caught.value)


# --------------------------------------------------------------------------- SQLite migration

# The table the version before the codec stage created, with a row as it wrote them.
OLD_SQLITE_DDL = (
    'CREATE TABLE "external_models" (id TEXT PRIMARY KEY, class_name TEXT NOT NULL, data TEXT NOT NULL, '
    "schema_version INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
    "expires_at TEXT)"
)


async def test_a_sqlite_table_of_the_previous_version_gains_the_encoding_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_id = uuid4()
    with sqlite3.connect(path) as connection:
        connection.execute(OLD_SQLITE_DDL)
        connection.execute(
            'INSERT INTO "external_models" VALUES (?, ?, ?, 1, ?, ?, NULL)',
            (
                str(old_id),
                "Note",
                '{"text": "old"}',
                "2025-01-01T00:00:00.000000Z",
                "2025-01-01T00:00:00.000000Z",
            ),
        )
    connection.close()
    url = f"sqlite:///{path}"
    note = note_model(url, compression="zlib")

    assert (await note.load(old_id)).text == "old"
    packed = note(text=COMPRESSIBLE)
    reference = await packed.save()
    assert await note.load(reference) == packed
    old = await note.load(old_id)
    old.text = "rewritten " + COMPRESSIBLE
    await old.save()
    await pydantic_toast.aclose()

    with sqlite3.connect(path) as connection:
        columns = {row[1]: row for row in connection.execute('PRAGMA table_info("external_models")')}
        assert columns["encoding"][2:5] == ("TEXT", 1, "'json'")
        rows = dict(
            connection.execute('SELECT id, typeof(data) || " " || encoding FROM "external_models"').fetchall()
        )
        assert rows == {str(old_id): "blob json+zlib", str(reference.id): "blob json+zlib"}
        # A process of the previous version updates a compressed record: it writes TEXT and
        # leaves `encoding` alone. What it wrote is what a reader gets.
        connection.execute(
            'UPDATE "external_models" SET data = ? WHERE id = ?',
            ('{"text": "old writer"}', str(reference.id)),
        )
    connection.close()
    assert (await note.load(reference)).text == "old writer"

    # Connecting again (the column exists now) changes nothing.
    assert (await note.load(old_id)).text == old.text


def test_a_migration_race_between_processes_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.execute(OLD_SQLITE_DDL)
    connection.close()

    async def connect_many() -> None:
        backends = [backend_class("sqlite")(f"sqlite:///{path}") for _ in range(4)]
        await asyncio.gather(*(backend.connect() for backend in backends))
        for backend in backends:
            await backend.disconnect()

    asyncio.run(connect_many())
    with sqlite3.connect(path) as connection:
        names = [row[1] for row in connection.execute('PRAGMA table_info("external_models")')]
    connection.close()
    assert names.count("encoding") == 1


# --------------------------------------------------------------------------- the command line


def test_inspect_decodes_and_stats_counts_stored_bytes(
    storage_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    note = note_model(storage_url, compression="zlib")
    reference = note(text=COMPRESSIBLE).model_dump()
    note(text="small").model_dump()

    assert main(["inspect", storage_url, reference["id"], "--class", "Note"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"] == {"text": COMPRESSIBLE}
    assert shown["encoding"] == "json+zlib"
    assert 0 < shown["stored_bytes"] < len(COMPRESSIBLE) // 5

    assert main(["stats", storage_url, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["Note"]
    assert row["encodings"] == {"json": 1, "json+zlib": 1}
    assert row["bytes"] < len(COMPRESSIBLE) // 5 + 100


def test_inspect_of_an_unknown_encoding_is_an_error_naming_it(
    memory_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = record(b"SECRET", "json+brotli")
    asyncio.run(backend_class("memory")(memory_url).save_records([damaged]))
    assert main(["inspect", memory_url, str(damaged.id), "--class", "Note"]) == 1
    err = capsys.readouterr().err
    assert "json+brotli" in err
    assert "SECRET" not in err


@pytest.mark.postgresql
def test_copy_moves_compressed_records_as_stored_from_sqlite_to_postgresql(
    sqlite_url: str, postgresql_table_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = note_model(sqlite_url, compression="zlib")
    items = [source(text=f"{i} {COMPRESSIBLE}") for i in range(5)] + [source(text="short")]
    references = [item.model_dump() for item in items]
    ids = [UUID(r["id"]) for r in references]

    state = tmp_path / "copy.json"
    assert main(["copy", sqlite_url, postgresql_table_url, "--state-file", str(state)]) == 0
    assert "missing in destination: 0" in capsys.readouterr().out

    before = asyncio.run(stored(sqlite_url, "Note", ids))
    after = asyncio.run(stored(postgresql_table_url, "Note", ids))
    assert [(r.encoding, r.payload) for r in after[:5]] == [(r.encoding, r.payload) for r in before[:5]]
    assert {r.encoding for r in after} == {"json+zlib", "json"}
    destination = note_model(postgresql_table_url)  # no compression: reads them all the same
    assert [destination.model_validate(r).text for r in references] == [item.text for item in items]
