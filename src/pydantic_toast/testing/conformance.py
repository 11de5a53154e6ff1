"""The backend conformance suite: every promise of docs/backends/contract.md, as pytest tests.

Subclass `BackendConformance` in a test module (its name must start with `Test`) and provide a
`backend_url` fixture returning a URL of a store the tests may write to. Register the backend
before the fixture returns, if it is not a built-in:

    import pytest
    from pydantic_toast import register_backend
    from pydantic_toast.testing import BackendConformance

    register_backend("jsondir", FileBackend)


    class TestFileBackend(BackendConformance):
        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"jsondir://{tmp_path}"

Every test writes only records of class names of its own (random), so a store shared with other
data is fine; a fresh store per test (as above) is simplest. Optional capabilities are
discovered with `StorageBackend.supports()`: a test of one the backend does not declare checks
that the operation is refused with `UnsupportedOperationError`, then skips with the reason.

Needs pytest and pytest-asyncio (the `testing` extra). The async tests carry the asyncio mark,
so they run under pytest-asyncio's strict mode as well as its auto mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

try:
    import pytest
    import pytest_asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pydantic_toast.testing needs pytest and pytest-asyncio; install them with: "
        "pip install 'pydantic-toast[testing]'"
    ) from exc

import pydantic_core

import pydantic_toast
from pydantic_toast import (
    ConcurrentUpdateError,
    ExternalBaseModel,
    ExternalConfigDict,
    RecordNotFoundError,
    StorageValidationError,
    UnsupportedOperationError,
    cli,
    codecs,
)
from pydantic_toast.backends.base import Capability, StorageBackend, StoredRecord, format_timestamp
from pydantic_toast.registry import backend_class
from pydantic_toast.url import StorageURL

__all__ = ["BackendConformance"]

_asyncio = pytest.mark.asyncio
# Long enough for a store that expires on its own clock (Redis: PX=1 for an instant in the past).
_EXPIRY_GRACE = 0.05


def _class_name() -> str:
    """A class name no other test (or earlier run against the same store) has used."""
    return f"Conformance{uuid4().hex[:12]}"


def _record(
    class_name: str,
    payload: dict[str, Any],
    *,
    id: UUID | None = None,
    created: datetime | None = None,
    updated: datetime | None = None,
    version: int = 1,
    expires: datetime | None = None,
    encoded: tuple[bytes, str] | None = None,
    revision: int | None = None,
) -> StoredRecord:
    """A record of `payload` as JSON, or of `encoded` (payload bytes, encoding tag) as given."""
    now = datetime.now(UTC)
    data, encoding = encoded or (pydantic_core.to_json(payload), "json")
    return StoredRecord(
        id=id or uuid4(),
        class_name=class_name,
        payload=data,
        schema_version=version,
        created_at=created or now,
        updated_at=updated or created or now,
        expires_at=expires,
        encoding=encoding,
        revision=revision,
    )


def _assert_same(found: StoredRecord | None, expected: StoredRecord) -> None:
    assert found is not None, f"record {expected.key} was not returned"
    assert found.key == expected.key
    assert found.encoding == expected.encoding
    if expected.encoding == "json":
        # Compared as values: a store may normalise JSON (key order, spacing), never its meaning.
        assert pydantic_core.from_json(found.payload) == pydantic_core.from_json(expected.payload)
    else:
        assert found.payload == expected.payload, "an encoded payload must come back byte for byte"
    assert found.schema_version == expected.schema_version
    assert found.created_at == expected.created_at
    assert found.updated_at == expected.updated_at


def _assert_same_envelope(found: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert found is not None
    assert found["data"] == expected["data"]
    assert found["schema_version"] == expected["schema_version"]
    for stamp in ("created_at", "updated_at"):
        assert datetime.fromisoformat(found[stamp]) == datetime.fromisoformat(expected[stamp])


def _skip_without(backend: StorageBackend, capability: Capability) -> None:
    if not backend.supports(capability):
        pytest.skip(f"{type(backend).__name__} does not declare the {capability.value!r} capability")


async def _scan_all(
    backend: StorageBackend, class_name: str, *, limit: int = 100, include_expired: bool = False
) -> list[StoredRecord]:
    records: list[StoredRecord] = []
    cursor: str | None = None
    while True:
        page, cursor = await backend.scan_records(
            cursor=cursor, limit=limit, class_name=class_name, include_expired=include_expired
        )
        assert len(page) <= limit
        records.extend(page)
        if cursor is None:
            return records


class BackendConformance:
    """What every backend promises (docs/backends/contract.md). Needs a `backend_url` fixture."""

    @pytest.fixture
    def backend_type(self, backend_url: str) -> type[StorageBackend]:
        """The registered class (a wrapper, for a backend that subclasses nothing)."""
        return backend_class(StorageURL.parse(backend_url).scheme)

    @pytest_asyncio.fixture
    async def backend(
        self, backend_url: str, backend_type: type[StorageBackend]
    ) -> AsyncIterator[StorageBackend]:
        """A connected instance of its own, as a command-line tool would use it."""
        backend = backend_type(backend_url)
        await backend.connect()
        try:
            yield backend
        finally:
            await backend.disconnect()

    @pytest_asyncio.fixture(autouse=True)
    async def _close_library_connections(self) -> AsyncIterator[None]:
        yield
        await pydantic_toast.aclose()

    def model(
        self,
        backend_url: str,
        *,
        ttl: timedelta | None = None,
        compression: str | None = None,
        optimistic: bool = False,
    ) -> Any:
        """An external model class storing in the store under test, with a class name of its own."""

        class Item(ExternalBaseModel):
            text: str
            number: int = 0
            model_config = ExternalConfigDict(
                storage=backend_url,
                storage_name=_class_name(),
                ttl=ttl,
                compression=compression,
                compression_min_size=100,
                optimistic_concurrency=optimistic,
            )

        return Item

    # ------------------------------------------------------------------ capabilities, lifetime

    def test_capabilities_are_known_before_connecting(self, backend_type: type[StorageBackend]) -> None:
        capabilities = backend_type.capabilities()
        assert isinstance(capabilities, frozenset)
        assert all(isinstance(capability, Capability) for capability in capabilities)
        for capability in Capability:
            assert backend_type.supports(capability) is (capability in capabilities)
            assert backend_type.supports(capability.value) is (capability in capabilities)

    @_asyncio
    async def test_connect_and_disconnect_are_idempotent(
        self, backend_url: str, backend_type: type[StorageBackend]
    ) -> None:
        backend = backend_type(backend_url)
        await backend.disconnect()  # never connected: nothing to release
        await backend.connect()
        await backend.connect()
        record = _record(_class_name(), {"n": 1})
        await backend.save_records([record])
        await backend.disconnect()
        await backend.disconnect()
        await backend.connect()  # a disconnected backend connects again
        try:
            [found] = await backend.load_records([record.key])
            _assert_same(found, record)
        finally:
            await backend.disconnect()

    # ------------------------------------------------------------------ the four contract methods

    @_asyncio
    async def test_contract_save_and_load_return_the_envelope(self, backend: StorageBackend) -> None:
        id, name = uuid4(), _class_name()
        now = format_timestamp(datetime.now(UTC))
        envelope = {
            "data": {"text": "é ☃ \U0001f600", "n": [1, 2.5, None]},
            "schema_version": 3,
            "created_at": now,
            "updated_at": now,
        }
        await backend.save(id, name, envelope)
        _assert_same_envelope(await backend.load(id, name), envelope)
        assert await backend.load(uuid4(), name) is None
        assert await backend.load(id, _class_name()) is None

    @_asyncio
    async def test_records_round_trip_through_both_interfaces(self, backend: StorageBackend) -> None:
        record = _record(_class_name(), {"text": "x" * 10_000, "nested": {"a": [1, {"b": True}]}}, version=2)
        await backend.save_records([record])
        [found] = await backend.load_records([record.key])
        _assert_same(found, record)
        _assert_same_envelope(await backend.load(record.id, record.class_name), record.envelope())

    # ------------------------------------------------------------------ encoded payloads

    @_asyncio
    async def test_encoded_payloads_round_trip_byte_for_byte_with_their_encoding(
        self, backend: StorageBackend
    ) -> None:
        name = _class_name()
        payloads = {
            "NUL and non-UTF-8 bytes": bytes(range(256)) + b'\x00\x00\xff\xfe{"data":',
            "empty": b"",
            "large": os.urandom(3 * 1024 * 1024),
            "zlib": zlib.compress(b'{"text":"' + b"compressible " * 1000 + b'"}'),
        }
        records = [_record(name, {}, encoded=(payload, "json+zlib")) for payload in payloads.values()]
        # Backends store the tag as given, whether or not this process knows the codec.
        records.append(_record(name, {}, encoded=(b"\x00\x01", "json+conformance-test")))
        # JSON text with a NUL escape, which some stores (jsonb) cannot hold as JSON.
        records.append(_record(name, {"text": "a\x00b", "bytes": "\x00"}))
        await backend.save_records(records)
        found = await backend.load_records([r.key for r in records])
        for record, loaded in zip(records, found, strict=True):
            _assert_same(loaded, record)
        for record in records:
            [alone] = await backend.load_records([record.key])
            _assert_same(alone, record)
        if backend.supports(Capability.SCAN):
            listed = {r.id: r for r in await _scan_all(backend, name)}
            for record in records:
                _assert_same(listed.get(record.id), record)

    @_asyncio
    async def test_encoded_payloads_through_the_contract_methods(self, backend: StorageBackend) -> None:
        record = _record(_class_name(), {}, encoded=(b"\x00\xff binary \x80", "json+zlib"), version=2)
        envelope = record.envelope()
        assert "data" not in envelope
        assert envelope["encoding"] == "json+zlib"
        await backend.save(record.id, record.class_name, envelope)
        loaded = await backend.load(record.id, record.class_name)
        assert loaded is not None
        assert loaded["encoding"] == "json+zlib"
        assert loaded["payload"] == envelope["payload"]
        [found] = await backend.load_records([record.key])
        _assert_same(found, record)

    @_asyncio
    async def test_a_save_switches_a_record_between_encodings(self, backend: StorageBackend) -> None:
        name = _class_name()
        plain = _record(name, {"v": 1})
        packed = _record(name, {}, id=plain.id, created=plain.created_at, encoded=(b"\x00\x9c", "json+zlib"))
        again = _record(name, {"v": 3}, id=plain.id, created=plain.created_at)
        for record in (plain, packed, again, packed):
            await backend.save_records([record])
            [found] = await backend.load_records([plain.key])
            _assert_same(found, record)
        # In one batch too, mixed with records of the other encoding.
        other = _record(name, {"v": 4})
        await backend.save_records([other, again])
        found_both = await backend.load_records([other.key, again.key])
        _assert_same(found_both[0], other)
        _assert_same(found_both[1], again)

    # ------------------------------------------------------------------ upsert and created_at

    @_asyncio
    async def test_a_save_replaces_the_record_with_exactly_what_it_is_given(
        self, backend: StorageBackend
    ) -> None:
        name = _class_name()
        first = _record(name, {"v": 1})
        await backend.save_records([first])
        later = first.updated_at + timedelta(seconds=5)
        second = _record(name, {"v": 2}, id=first.id, created=first.created_at, updated=later, version=2)
        await backend.save_records([second])
        [found] = await backend.load_records([first.key])
        _assert_same(found, second)
        # The backend stores created_at as given: keeping it stable is the library's job.
        rewritten = _record(name, {"v": 3}, id=first.id, created=first.created_at - timedelta(days=1))
        await backend.save(rewritten.id, name, rewritten.envelope())
        [found] = await backend.load_records([first.key])
        _assert_same(found, rewritten)

    # ------------------------------------------------------------------ batches

    @_asyncio
    async def test_batch_loads_keep_order_repeats_and_missing(self, backend: StorageBackend) -> None:
        name = _class_name()
        records = [_record(name, {"i": i}) for i in range(5)]
        await backend.save_records(records)
        missing = (uuid4(), name)
        keys = [records[3].key, missing, records[0].key, records[3].key, (records[1].id, _class_name())]
        found = await backend.load_records(keys)
        assert len(found) == len(keys)
        _assert_same(found[0], records[3])
        assert found[1] is None
        _assert_same(found[2], records[0])
        _assert_same(found[3], records[3])
        assert found[4] is None

    @_asyncio
    async def test_a_repeated_id_in_one_batch_keeps_the_last(self, backend: StorageBackend) -> None:
        name = _class_name()
        first = _record(name, {"v": 1})
        last = _record(name, {"v": 2}, id=first.id, created=first.created_at)
        await backend.save_records([first, last])
        [found] = await backend.load_records([first.key])
        _assert_same(found, last)

    @_asyncio
    async def test_empty_batches_do_nothing(self, backend: StorageBackend) -> None:
        await backend.save_records([])
        assert await backend.load_records([]) == []

    # ------------------------------------------------------------------ identity

    @_asyncio
    async def test_a_record_is_never_seen_through_another_class(self, backend: StorageBackend) -> None:
        record = _record(_class_name(), {"owner": True})
        await backend.save_records([record])
        other = (record.id, _class_name())
        assert await backend.load(*other) is None
        assert await backend.load_records([other]) == [None]
        if backend.supports(Capability.DELETE):
            assert await backend.delete(*other) is False
        [found] = await backend.load_records([record.key])
        _assert_same(found, record)

    @_asyncio
    async def test_an_id_of_another_class_is_refused_and_nothing_is_written(
        self, backend: StorageBackend
    ) -> None:
        owner = _record(_class_name(), {"owner": True})
        await backend.save_records([owner])
        intruder = _record(_class_name(), {"owner": False}, id=owner.id)
        if not backend.supports(Capability.UNIQUE_IDS):
            # Without the capability the two records live side by side, neither touching the other.
            await backend.save_records([intruder])
            found = await backend.load_records([owner.key, intruder.key])
            _assert_same(found[0], owner)
            _assert_same(found[1], intruder)
            pytest.skip(
                f"{type(backend).__name__} does not declare 'unique_ids': two classes may share an id"
            )
        with pytest.raises(StorageValidationError) as refused:
            await backend.save_records([intruder])
        assert owner.class_name in str(refused.value)
        assert intruder.class_name in str(refused.value)
        with pytest.raises(StorageValidationError):
            await backend.save(intruder.id, intruder.class_name, intruder.envelope())
        fresh = _record(intruder.class_name, {"fresh": True})
        with pytest.raises(StorageValidationError):
            await backend.save_records([fresh, intruder])
        twins = _record(_class_name(), {"twin": 1})
        with pytest.raises(StorageValidationError):
            await backend.save_records([twins, _record(_class_name(), {"twin": 2}, id=twins.id)])
        found = await backend.load_records([owner.key, intruder.key, fresh.key, twins.key])
        _assert_same(found[0], owner)
        assert found[1:] == [None, None, None], "a refused batch must write nothing"

    # ------------------------------------------------------------------ delete

    @_asyncio
    async def test_delete_says_whether_a_record_existed(self, backend: StorageBackend) -> None:
        record = _record(_class_name(), {"doomed": True})
        if not backend.supports(Capability.DELETE):
            with pytest.raises(UnsupportedOperationError):
                await backend.delete(record.id, record.class_name)
            pytest.skip(f"{type(backend).__name__} does not declare 'delete' (and refuses it)")
        await backend.save_records([record])
        assert await backend.delete(*record.key) is True
        assert await backend.load_records([record.key]) == [None]
        assert await backend.delete(*record.key) is False
        assert await backend.delete(uuid4(), record.class_name) is False

    # ------------------------------------------------------------------ expiry

    @_asyncio
    async def test_expired_records_are_missing_everywhere(self, backend: StorageBackend) -> None:
        name = _class_name()
        now = datetime.now(UTC)
        live = _record(name, {"live": True}, expires=now + timedelta(hours=1))
        gone = _record(name, {"live": False}, expires=now - timedelta(seconds=1))
        if not backend.supports(Capability.TTL):
            with pytest.raises(UnsupportedOperationError):
                await backend.save_records([live])
            assert await backend.load_records([live.key]) == [None]
            pytest.skip(f"{type(backend).__name__} does not declare 'ttl' (and refuses expiring records)")
        await backend.save_records([live, gone])
        await asyncio.sleep(_EXPIRY_GRACE)
        found = await backend.load_records([live.key, gone.key])
        _assert_same(found[0], live)
        assert found[1] is None
        assert await backend.load(*gone.key) is None
        if backend.supports(Capability.SCAN):
            assert [r.id for r in await _scan_all(backend, name)] == [live.id]
            listed = await _scan_all(backend, name, include_expired=True)
            assert live.id in {r.id for r in listed}
            assert all(r.expires_at is not None for r in listed)
        if backend.supports(Capability.DELETE):
            assert await backend.delete(*gone.key) is False
            assert await backend.delete(*live.key) is True

    @_asyncio
    async def test_purge_removes_expired_records(self, backend: StorageBackend) -> None:
        if not backend.supports(Capability.PURGE):
            with pytest.raises(UnsupportedOperationError):
                await backend.purge_expired()
            pytest.skip(f"{type(backend).__name__} does not declare 'purge' (and refuses it)")
        _skip_without(backend, Capability.TTL)
        name = _class_name()
        gone = _record(name, {"old": True}, expires=datetime.now(UTC) - timedelta(seconds=1))
        kept = _record(name, {"old": False})
        await backend.save_records([gone, kept])
        await asyncio.sleep(_EXPIRY_GRACE)
        assert await backend.purge_expired() >= 0
        [found] = await backend.load_records([kept.key])
        _assert_same(found, kept)
        if backend.supports(Capability.SCAN):
            assert [r.id for r in await _scan_all(backend, name, include_expired=True)] == [kept.id]

    # ------------------------------------------------------------------ listing

    @_asyncio
    async def test_scan_pages_through_every_record_and_resumes_from_a_cursor(
        self, backend: StorageBackend, backend_url: str, backend_type: type[StorageBackend]
    ) -> None:
        if not backend.supports(Capability.SCAN):
            with pytest.raises(UnsupportedOperationError):
                await backend.scan_records(cursor=None, limit=10)
            pytest.skip(f"{type(backend).__name__} does not declare 'scan' (and refuses it)")
        name = _class_name()
        records = [_record(name, {"i": i}) for i in range(23)]
        await backend.save_records(records)
        await backend.save_records([_record(_class_name(), {"other": i}) for i in range(3)])

        listed = await _scan_all(backend, name, limit=5)
        assert {r.id for r in listed} == {r.id for r in records}
        assert all(r.class_name == name for r in listed)
        for record in listed:
            _assert_same(record, next(r for r in records if r.id == record.id))

        first, cursor = await backend.scan_records(cursor=None, limit=5, class_name=name)
        assert isinstance(cursor, str)
        # The cursor is plain text that another instance (another process) can resume from.
        other = backend_type(backend_url)
        await other.connect()
        try:
            rest: list[StoredRecord] = []
            while cursor is not None:
                page, cursor = await other.scan_records(cursor=cursor, limit=5, class_name=name)
                rest.extend(page)
        finally:
            await other.disconnect()
        assert {r.id for r in first} | {r.id for r in rest} == {r.id for r in records}

    @_asyncio
    async def test_find_record_finds_an_id_whatever_its_class(self, backend: StorageBackend) -> None:
        finds = type(backend).find_record is not StorageBackend.find_record
        if not (finds or backend.supports(Capability.SCAN)):
            pytest.skip(f"{type(backend).__name__} has neither find_record nor 'scan'")
        record = _record(_class_name(), {"find": "me"})
        await backend.save_records([record])
        _assert_same(await backend.find_record(record.id), record)
        assert await backend.find_record(uuid4()) is None

    # ------------------------------------------------------------------ through the models

    @_asyncio
    async def test_models_dump_validate_save_load_and_delete(
        self, backend_url: str, backend: StorageBackend
    ) -> None:
        item_type = self.model(backend_url)
        name = item_type.__toast_settings__.storage_name
        item = item_type(text="hello", number=1)
        reference = item.model_dump()  # the sync path, through the library's I/O thread
        assert reference == {"class_name": name, "id": reference["id"]}
        assert item_type.model_validate(reference) == item
        assert item_type.model_validate_json(item.model_dump_json()) == item
        [first] = await backend.load_records([(UUID(reference["id"]), name)])
        assert first is not None

        item.number = 2
        saved = await item.save()
        assert str(saved.id) == reference["id"]
        loaded = await item_type.load(saved)
        assert loaded.number == 2
        [second] = await backend.load_records([(saved.id, name)])
        assert second is not None
        assert second.created_at == first.created_at
        assert second.updated_at >= first.updated_at

        if not backend.supports(Capability.DELETE):
            with pytest.raises(UnsupportedOperationError):
                await loaded.delete()
            return
        assert await loaded.delete() is True
        assert await item_type.delete(saved) is False
        with pytest.raises(RecordNotFoundError):
            await item_type.load(saved)

    @_asyncio
    async def test_models_in_batches_keep_order_and_report_every_missing_id(self, backend_url: str) -> None:
        item_type = self.model(backend_url)
        items = [item_type(text=f"item {i}", number=i) for i in range(6)]
        references = await item_type.save_many(items)
        assert [r.id for r in references] == [item.external_reference.id for item in items]
        wanted = [references[4], references[0], references[4], references[2]]
        assert [m.number for m in await item_type.load_many(wanted)] == [4, 0, 4, 2]
        missing = [uuid4(), uuid4()]
        with pytest.raises(RecordNotFoundError) as caught:
            await item_type.load_many([references[1], *missing])
        assert set(caught.value.ids) == set(missing)

    @_asyncio
    async def test_a_tree_of_models_is_stored_and_loaded(self, backend_url: str) -> None:
        leaf_type = self.model(backend_url)

        class Branch(ExternalBaseModel):
            leaves: list[leaf_type]  # type: ignore[valid-type]
            model_config = ExternalConfigDict(storage=backend_url, storage_name=_class_name())

        branch = Branch(leaves=[leaf_type(text=str(i)) for i in range(4)])
        loaded = await Branch.load(await branch.save())
        assert loaded == branch
        assert Branch.model_validate(branch.model_dump()) == branch

    @_asyncio
    async def test_models_with_compression_store_compressed_payloads_and_load_them(
        self, backend_url: str, backend: StorageBackend
    ) -> None:
        item_type = self.model(backend_url, compression="zlib")
        name = item_type.__toast_settings__.storage_name
        big = item_type(text="compress me \x00 é " * 500, number=1)
        small = item_type(text="tiny")
        references = await item_type.save_many([big, small])
        stored = await backend.load_records([(r.id, name) for r in references])
        assert stored[0] is not None
        assert stored[0].encoding == "json+zlib"
        assert len(stored[0].payload) < len(big.text)
        assert pydantic_core.from_json(codecs.decode(stored[0])) == {"text": big.text, "number": 1}
        assert stored[1] is not None
        assert stored[1].encoding == "json", "payloads under compression_min_size stay JSON"
        assert await item_type.load_many(references) == [big, small]
        assert item_type.model_validate(big.model_dump()) == big

        # The tag, not the reader's configuration, says how to decode: a model without
        # compression reads the compressed record, and its next save stores plain JSON.
        class Plain(ExternalBaseModel):
            text: str
            number: int = 0
            model_config = ExternalConfigDict(storage=backend_url, storage_name=_class_name())

        assert stored[0] is not None
        copy = dataclasses.replace(stored[0], class_name=Plain.__toast_settings__.storage_name)
        if backend.supports(Capability.UNIQUE_IDS):
            copy = dataclasses.replace(copy, id=uuid4())
        await backend.save_records([copy])
        loaded = await Plain.load(copy.id)
        assert loaded.text == big.text
        loaded.number = 2
        await loaded.save()
        [rewritten] = await backend.load_records([copy.key])
        assert rewritten is not None
        assert rewritten.encoding == "json"

        tree_leaf = self.model(backend_url, compression="zlib")

        class Tree(ExternalBaseModel):
            leaves: list[tree_leaf]  # type: ignore[valid-type]
            model_config = ExternalConfigDict(
                storage=backend_url, storage_name=_class_name(), compression="zlib"
            )

        tree = Tree(leaves=[tree_leaf(text=f"leaf {i} " * 100) for i in range(3)])
        assert await Tree.load(await tree.save()) == tree

    @_asyncio
    async def test_models_with_ttl_need_the_capability(
        self, backend_url: str, backend_type: type[StorageBackend]
    ) -> None:
        item_type = self.model(backend_url, ttl=timedelta(hours=1))
        if not backend_type.supports(Capability.TTL):
            with pytest.raises(UnsupportedOperationError):
                await item_type(text="expiring").save()
            pytest.skip(f"{backend_type.__name__} does not declare 'ttl' (and refuses models with ttl)")
        reference = await item_type(text="expiring").save()
        assert (await item_type.load(reference)).text == "expiring"

    # ------------------------------------------------------------------ revisions (optimistic concurrency)

    async def _revisions_or_skip(self, backend: StorageBackend) -> None:
        if not backend.supports(Capability.REVISIONS):
            with pytest.raises(UnsupportedOperationError):
                await backend.save_records_checked([_record(_class_name(), {"v": 1}, revision=1)])
            pytest.skip(f"{type(backend).__name__} does not declare 'revisions' (and refuses checked writes)")

    @_asyncio
    async def test_revisions_a_first_save_needs_no_record_and_the_revision_survives_a_load(
        self, backend: StorageBackend
    ) -> None:
        await self._revisions_or_skip(backend)
        record = _record(_class_name(), {"v": 1}, revision=1)
        assert await backend.save_records_checked([record]) == []
        [found] = await backend.load_records([record.key])
        _assert_same(found, record)
        assert found is not None
        assert found.revision == 1
        envelope = await backend.load(*record.key)
        assert envelope is not None
        assert envelope["revision"] == 1
        assert await backend.save_records_checked([]) == []

    @_asyncio
    async def test_revisions_a_conflicting_first_save_writes_nothing(self, backend: StorageBackend) -> None:
        await self._revisions_or_skip(backend)
        first = _record(_class_name(), {"v": 1}, revision=1)
        assert await backend.save_records_checked([first]) == []
        again = _record(first.class_name, {"v": "other"}, id=first.id, revision=1)
        [conflict] = await backend.save_records_checked([again])
        assert (conflict.id, conflict.class_name, conflict.expected, conflict.found) == (
            first.id,
            first.class_name,
            0,
            1,
        )
        [found] = await backend.load_records([first.key])
        _assert_same(found, first)

    @_asyncio
    async def test_revisions_a_matching_revision_writes_and_a_stale_one_does_not(
        self, backend: StorageBackend
    ) -> None:
        await self._revisions_or_skip(backend)
        name = _class_name()
        first = _record(name, {"v": 1}, revision=1)
        assert await backend.save_records_checked([first]) == []
        later = first.updated_at + timedelta(seconds=1)
        second = _record(name, {"v": 2}, id=first.id, created=first.created_at, updated=later, revision=2)
        assert await backend.save_records_checked([second]) == []
        [found] = await backend.load_records([first.key])
        _assert_same(found, second)
        assert found is not None
        assert found.revision == 2
        # Another writer that also started from revision 1:
        stale = _record(name, {"v": "stale"}, id=first.id, created=first.created_at, revision=2)
        [conflict] = await backend.save_records_checked([stale])
        assert (conflict.expected, conflict.found) == (1, 2)
        [found] = await backend.load_records([first.key])
        _assert_same(found, second)
        # A revision for a record that does not exist (deleted, or never written): found None.
        ghost = _record(name, {"v": 0}, revision=4)
        [conflict] = await backend.save_records_checked([ghost])
        assert (conflict.id, conflict.expected, conflict.found) == (ghost.id, 3, None)
        assert await backend.load_records([ghost.key]) == [None]

    @_asyncio
    async def test_revisions_a_batch_with_one_conflict_writes_nothing(self, backend: StorageBackend) -> None:
        await self._revisions_or_skip(backend)
        name = _class_name()
        kept = _record(name, {"v": 1}, revision=1)
        assert await backend.save_records_checked([kept]) == []
        fresh = _record(name, {"fresh": True}, revision=1)
        unchecked = _record(name, {"unchecked": True})
        stale = _record(name, {"v": "stale"}, id=kept.id, created=kept.created_at, revision=3)
        conflicts = await backend.save_records_checked([fresh, unchecked, stale])
        assert [(c.id, c.expected, c.found) for c in conflicts] == [(kept.id, 2, 1)]
        found = await backend.load_records([kept.key, fresh.key, unchecked.key])
        _assert_same(found[0], kept)
        assert found[1:] == [None, None], "a batch with a conflict must write nothing"
        # Without the conflict the same batch is written, the unchecked record as given.
        assert await backend.save_records_checked([fresh, unchecked]) == []
        found = await backend.load_records([fresh.key, unchecked.key])
        _assert_same(found[0], fresh)
        _assert_same(found[1], unchecked)

    @_asyncio
    async def test_revisions_a_record_stored_without_one_counts_as_revision_0(
        self, backend: StorageBackend
    ) -> None:
        await self._revisions_or_skip(backend)
        name = _class_name()
        plain = _record(name, {"v": 1})
        await backend.save_records([plain])
        [found] = await backend.load_records([plain.key])
        assert found is not None
        assert found.revision is None
        upgraded = _record(name, {"v": 2}, id=plain.id, created=plain.created_at, revision=1)
        assert await backend.save_records_checked([upgraded]) == []
        other = _record(
            name, {"v": 3}, id=plain.id, updated=upgraded.updated_at + timedelta(seconds=1), revision=1
        )
        [conflict] = await backend.save_records_checked([other])
        assert (conflict.id, conflict.expected, conflict.found) == (plain.id, 0, 1)

    @_asyncio
    async def test_revisions_a_repeated_write_is_not_its_own_conflict(self, backend: StorageBackend) -> None:
        # A batch sent again after its reply was lost (a retry) finds its own revision stored,
        # with its own updated_at: that is no conflict.
        await self._revisions_or_skip(backend)
        name = _class_name()
        first = _record(name, {"v": 1}, revision=1)
        second = _record(name, {"v": 2}, revision=1)
        assert await backend.save_records_checked([first, second]) == []
        assert await backend.save_records_checked([first, second]) == []
        [found] = await backend.load_records([first.key])
        _assert_same(found, first)

    @_asyncio
    async def test_revisions_a_repeated_id_keeps_the_last_record_and_its_check(
        self, backend: StorageBackend
    ) -> None:
        await self._revisions_or_skip(backend)
        name = _class_name()
        first = _record(name, {"v": 1}, revision=5)  # would conflict: no record has revision 4
        last = _record(name, {"v": 2}, id=first.id, created=first.created_at, revision=1)
        assert await backend.save_records_checked([first, last]) == []
        [found] = await backend.load_records([first.key])
        _assert_same(found, last)

    @_asyncio
    async def test_revisions_an_expired_record_counts_as_missing(self, backend: StorageBackend) -> None:
        await self._revisions_or_skip(backend)
        _skip_without(backend, Capability.TTL)
        name = _class_name()
        gone = _record(name, {"v": 1}, expires=datetime.now(UTC) - timedelta(seconds=1), revision=1)
        assert await backend.save_records_checked([gone]) == []
        await asyncio.sleep(_EXPIRY_GRACE)
        [conflict] = await backend.save_records_checked([_record(name, {"v": 2}, id=gone.id, revision=2)])
        assert (conflict.expected, conflict.found) == (1, None)
        reborn = _record(name, {"v": 3}, id=gone.id, revision=1)
        assert await backend.save_records_checked([reborn]) == []
        [found] = await backend.load_records([gone.key])
        _assert_same(found, reborn)

    @_asyncio
    async def test_revisions_keep_the_identity_rule(self, backend: StorageBackend) -> None:
        await self._revisions_or_skip(backend)
        _skip_without(backend, Capability.UNIQUE_IDS)
        owner = _record(_class_name(), {"owner": True}, revision=1)
        assert await backend.save_records_checked([owner]) == []
        fresh = _record(_class_name(), {"fresh": True}, revision=1)
        intruder = _record(_class_name(), {"owner": False}, id=owner.id, revision=1)
        with pytest.raises(StorageValidationError) as refused:
            await backend.save_records_checked([fresh, intruder])
        assert owner.class_name in str(refused.value)
        found = await backend.load_records([owner.key, fresh.key, intruder.key])
        _assert_same(found[0], owner)
        assert found[1:] == [None, None]

    @_asyncio
    async def test_revisions_check_encoded_records_too(self, backend: StorageBackend) -> None:
        # Stores keep an encoded (compressed) payload in another form than JSON (a BLOB, bytea,
        # Redis's binary form): its revision must be found there too, also when a record
        # changes form from one write to the next.
        await self._revisions_or_skip(backend)
        name = _class_name()
        # Its end looks like a JSON envelope's revision: a store must not take it for one.
        packed = (b'\x00\n\xff binary \x80,"revision":9}', "json+zlib")
        first = _record(name, {}, encoded=packed, revision=1)
        assert await backend.save_records_checked([first]) == []
        [found] = await backend.load_records([first.key])
        _assert_same(found, first)
        assert found is not None
        assert found.revision == 1
        envelope = await backend.load(*first.key)
        assert envelope is not None
        assert (envelope["encoding"], envelope["revision"]) == ("json+zlib", 1)
        assert await backend.save_records_checked([first]) == [], "a repeated write is no conflict"
        step = timedelta(seconds=1)
        rival = _record(name, {}, id=first.id, updated=first.updated_at + step, encoded=packed, revision=1)
        [conflict] = await backend.save_records_checked([rival])
        assert (conflict.expected, conflict.found) == (0, 1)
        [conflict] = await backend.save_records_checked([dataclasses.replace(rival, revision=10)])
        assert (conflict.expected, conflict.found) == (9, 1)
        # Encoded, then JSON, then encoded again: each write based on the one before.
        second = _record(
            name, {"v": 2}, id=first.id, created=first.created_at, updated=first.updated_at + step, revision=2
        )
        assert await backend.save_records_checked([second]) == []
        stale = _record(
            name,
            {},
            id=first.id,
            created=first.created_at,
            updated=first.updated_at,
            encoded=packed,
            revision=2,
        )
        [conflict] = await backend.save_records_checked([stale])
        assert (conflict.expected, conflict.found) == (1, 2)
        third = _record(
            name,
            {},
            id=first.id,
            created=first.created_at,
            updated=second.updated_at + step,
            encoded=(b"x\x9c\x00\n", "json+zlib"),
            revision=3,
        )
        fresh = _record(name, {}, encoded=packed, revision=1)
        assert await backend.save_records_checked([third, fresh]) == []
        [conflict] = await backend.save_records_checked([stale])
        assert (conflict.expected, conflict.found) == (1, 3)
        both = await backend.load_records([first.key, fresh.key])
        _assert_same(both[0], third)
        _assert_same(both[1], fresh)
        assert [record.revision for record in both if record is not None] == [3, 1]

    @_asyncio
    async def test_plain_saves_store_the_revision_as_given(self, backend: StorageBackend) -> None:
        name = _class_name()
        for encoded in (None, (b"\x00\x01", "json+zlib")):
            record = _record(name, {"v": 1}, encoded=encoded, revision=7)
            await backend.save_records([record])
            [found] = await backend.load_records([record.key])
            assert found is not None
            assert found.revision == 7
            unversioned = dataclasses.replace(record, revision=None)
            await backend.save_records([unversioned])
            [found] = await backend.load_records([record.key])
            _assert_same(found, unversioned)
            assert found is not None
            assert found.revision is None

    @_asyncio
    async def test_models_with_optimistic_concurrency_refuse_a_lost_update(
        self, backend_url: str, backend_type: type[StorageBackend]
    ) -> None:
        item_type = self.model(backend_url, optimistic=True)
        if not backend_type.supports(Capability.REVISIONS):
            with pytest.raises(UnsupportedOperationError):
                await item_type(text="checked").save()
            pytest.skip(
                f"{backend_type.__name__} does not declare 'revisions' (and refuses models with "
                "optimistic_concurrency)"
            )
        reference = await item_type(text="first").save()
        mine, theirs = await item_type.load(reference), await item_type.load(reference)
        theirs.text = "theirs"
        await theirs.save()
        mine.text = "mine"
        with pytest.raises(ConcurrentUpdateError) as caught:
            await mine.save()
        assert (caught.value.id, caught.value.expected, caught.value.found) == (reference.id, 1, 2)
        assert "theirs" not in str(caught.value)
        assert "mine" not in str(caught.value)
        again = await item_type.load(reference)
        assert again.text == "theirs"
        again.text = "mine, reapplied"
        await again.save()
        assert (await item_type.load(reference)).text == "mine, reapplied"

    @_asyncio
    async def test_models_with_optimistic_concurrency_and_compression(
        self, backend_url: str, backend: StorageBackend
    ) -> None:
        _skip_without(backend, Capability.REVISIONS)
        item_type = self.model(backend_url, compression="zlib", optimistic=True)
        name = item_type.__toast_settings__.storage_name
        reference = await item_type(text="compress me " * 200).save()
        [stored] = await backend.load_records([(reference.id, name)])
        assert stored is not None
        assert (stored.encoding, stored.revision) == ("json+zlib", 1)
        mine, theirs = await item_type.load(reference), await item_type.load(reference)
        theirs.text = "theirs, compressed " * 200
        await theirs.save()
        mine.text = "mine " * 200
        with pytest.raises(ConcurrentUpdateError) as caught:
            await mine.save()
        assert (caught.value.expected, caught.value.found) == (1, 2)
        # Small enough to stay JSON: the record changes form, and the checks go on.
        theirs.text = "short"
        await theirs.save()
        [stored] = await backend.load_records([(reference.id, name)])
        assert stored is not None
        assert (stored.encoding, stored.revision) == ("json", 3)
        with pytest.raises(ConcurrentUpdateError):
            await mine.save()
        again = await item_type.load(reference)
        again.text = "mine, reapplied " * 200
        await again.save()
        [stored] = await backend.load_records([(reference.id, name)])
        assert stored is not None
        assert (stored.encoding, stored.revision) == ("json+zlib", 4)
        assert (await item_type.load(reference)).text == again.text

    # ------------------------------------------------------------------ the command line

    def test_cli_stats_counts_records_or_refuses_clearly(
        self, backend_url: str, backend_type: type[StorageBackend]
    ) -> None:
        item_type = self.model(backend_url)
        for i in range(3):
            item_type(text="x" * i).model_dump()
        name = item_type.__toast_settings__.storage_name
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = cli.main(["stats", backend_url, "--json"])
        if not backend_type.supports(Capability.SCAN):
            assert status == 1
            assert "scan_records" in err.getvalue()
            pytest.skip(f"{backend_type.__name__} does not declare 'scan': the stats command refuses it")
        assert status == 0, err.getvalue()
        assert json.loads(out.getvalue())[name]["records"] == 3
